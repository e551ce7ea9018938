import json
import os

import pytest

from pocketnas import Genotype, GenotypeError, get_genotype
from pocketnas.genotype import PUBLISHED

CASIA_LEGACY = ("Genotype(normal=[[('dw_conv_3x3', 0), ('dw_conv_1x1', 1)], [('dw_conv_3x3', 2), "
                "('dw_conv_5x5', 0)], [('dw_conv_3x3', 3), ('dw_conv_3x3', 0)], [('dw_conv_3x3', 4), "
                "('skip_connect', 0)]], normal_concat=range(2, 6), reduce=[[('dw_conv_3x3', 1), ('dw_conv_7x7', 0)], "
                "[('skip_connect', 2), ('dw_conv_5x5', 1)], [('max_pool_3x3', 0), ('skip_connect', 2)], "
                "[('max_pool_3x3', 0), ('max_pool_3x3', 1)]], reduce_concat=range(2, 6))")


def test_legacy_string_parses_to_published_genotype():
    assert Genotype.from_legacy(CASIA_LEGACY) == PUBLISHED["pocketnet_casia"]
    assert get_genotype(CASIA_LEGACY) == PUBLISHED["pocketnet_casia"]


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_round_trips(name):
    g = PUBLISHED[name]
    assert Genotype.from_legacy(g.to_legacy()) == g
    assert Genotype.from_json(g.to_json()) == g
    assert json.loads(g.to_json())["normal_concat"] == [2, 3, 4, 5]
    assert hash(g) == hash(Genotype.from_json(g.to_json()))  # immutable, usable as a key


def test_flat_darts_form_and_positional_arguments():
    text = ("Genotype([('dw_conv_3x3', 0), ('dw_conv_1x1', 1), ('dw_conv_3x3', 2), ('dw_conv_5x5', 0)], [2, 3], "
            "reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1)], "
            "reduce_concat=range(2, 4))")
    g = Genotype.from_legacy(text).validate()
    assert g.normal[1] == (("dw_conv_3x3", 2), ("dw_conv_5x5", 0))
    assert g.reduce_concat == (2, 3)


def test_frozen():
    g = PUBLISHED["pocketnet_casia"]
    with pytest.raises(Exception):
        g.normal = ()


MALICIOUS = [
    "Genotype(normal=__import__('os').system('touch {marker}'), normal_concat=range(2, 6), reduce=[], "
    "reduce_concat=range(2, 6))",
    "Genotype(normal=[[('dw_conv_3x3', 0), ('dw_conv_1x1', __import__('os').system('touch {marker}'))]], "
    "normal_concat=range(2, 3), reduce=[], reduce_concat=[2])",
    "__import__('os').system('touch {marker}')",
    "Genotype(normal=[[(open('{marker}', 'w').write('x'), 0)]], normal_concat=[2], reduce=[], reduce_concat=[2])",
    "Genotype(normal=[(lambda: __import__('os').system('touch {marker}'))()], normal_concat=[2], reduce=[], "
    "reduce_concat=[2])",
    "Genotype(normal=[[('dw_conv_3x3', 0)]], normal_concat=range(2, (().__class__.__bases__[0]."
    "__subclasses__())), reduce=[], reduce_concat=[2])",
    "Genotype(normal=[[('dw_conv_3x3', 0), ('dw_conv_3x3', 1)]], normal_concat=range(2, 10**10), reduce=[], "
    "reduce_concat=[2])",
    "Genotype(**{{'normal': __import__('os').system('touch {marker}')}})",
]


@pytest.mark.parametrize("template", MALICIOUS)
def test_malicious_strings_are_refused_and_run_nothing(tmp_path, template):
    marker = tmp_path / "pwned"
    with pytest.raises(GenotypeError, match="refused|must be|not valid|takes|has no field"):
        get_genotype(template.format(marker=marker))
    assert not os.path.exists(marker)


def test_refusal_message_names_the_offending_call(tmp_path):
    with pytest.raises(GenotypeError) as err:
        Genotype.from_legacy(MALICIOUS[1].format(marker=tmp_path / "x"))
    assert "__import__('os').system" in str(err.value) and "nothing was executed" in str(err.value)


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d["normal"][0].__setitem__(0, ["conv_9x9", 0]), "unknown operation 'conv_9x9'"),
    (lambda d: d["normal"][1].__setitem__(0, ["dw_conv_3x3", 3]), "input index 3 out of range 0..2"),
    (lambda d: d["reduce"][2].append(["dw_conv_3x3", 0]), "expected 2 inputs per node, got 3"),
    (lambda d: d["normal"][0].__setitem__(1, ["none", 1]), "'none' cannot be a kept edge"),
    (lambda d: d.__setitem__("normal_concat", [2, 9]), "normal_concat index 9 out of range"),
])
def test_validation_messages(mutate, message):
    d = PUBLISHED["pocketnet_casia"].to_dict()
    mutate(d)
    with pytest.raises(GenotypeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Genotype.from_dict(d).validate()


def test_validation_against_a_search_space_op_list():
    with pytest.raises(GenotypeError, match="unknown operation 'dw_conv_3x3'"):
        PUBLISHED["pocketnet_casia"].validate(ops=["sep_conv_3x3", "skip_connect", "max_pool_3x3"])


def test_files(tmp_path):
    g = PUBLISHED["pocketnet_cifar10"]
    (tmp_path / "g.json").write_text(json.dumps({"genotype": g.to_dict(), "epoch": 3}))
    (tmp_path / "g.txt").write_text(g.to_legacy() + "\n")
    (tmp_path / "bad.json").write_text("{not json")
    assert get_genotype(str(tmp_path / "g.json")) == g
    assert Genotype.from_json(str(tmp_path / "g.json")) == g
    assert get_genotype(str(tmp_path / "g.txt")) == g
    with pytest.raises(GenotypeError, match="bad.json"):
        get_genotype(str(tmp_path / "bad.json"))
    with pytest.raises(GenotypeError, match="neither a published genotype"):
        get_genotype("no_such_genotype")


def test_cell_diagram_png(tmp_path):
    import numpy as np
    from PIL import Image

    from pocketnas.nas.cell_diagram import draw_genotype

    paths = draw_genotype(PUBLISHED["pocketnet_casia"], str(tmp_path), "x_")
    assert [os.path.basename(p) for p in paths] == ["x_normal.png", "x_reduce.png"]
    for p in paths:
        img = np.asarray(Image.open(p).convert("RGB"))
        assert img.shape[0] > 300 and img.shape[1] > 600
        assert (img < 128).any() and (img == 255).any()  # something drawn on a white page


def test_agreement_of_two_genotypes_by_hand():
    """Identical genotypes agree fully; a hand-made variant of pocketnet_casia agrees by the counts worked out
    here, per cell; the CLI prints and writes the same figures."""
    import subprocess
    import sys

    from pocketnas.genotype import genotype_agreement

    casia = PUBLISHED["pocketnet_casia"]
    assert all(v == 1.0 for r in genotype_agreement(casia, casia).values() for v in r.values())
    normal = [list(node) for node in casia.normal]
    # node 0 ('dw_conv_3x3', 0), ('dw_conv_1x1', 1): the first edge's operation changes (its input stays);
    # node 3 ('dw_conv_3x3', 4), ('skip_connect', 0): the second edge's input changes (its operation stays)
    assert normal[0][0] == ("dw_conv_3x3", 0) and normal[3][1] == ("skip_connect", 0)
    normal[0][0] = ("dw_conv_5x5", 0)
    normal[3][1] = ("skip_connect", 1)
    other = Genotype(normal=normal, normal_concat=casia.normal_concat, reduce=casia.reduce,
                     reduce_concat=casia.reduce_concat).validate()
    got = genotype_agreement(casia, other)
    # 8 normal edges: 6 identical, 7 with the same input; ops as a multiset: one 3x3 fewer, a second 5x5 -> 7/8
    assert got["normal"] == {"edges": 6 / 8, "inputs": 7 / 8, "ops": 7 / 8}
    assert got["reduce"] == {"edges": 1.0, "inputs": 1.0, "ops": 1.0}
    assert got["both"]["edges"] == (6 / 8 + 1) / 2
    out = subprocess.run([sys.executable, "-m", "pocketnas", "genotype", "pocketnet_casia", "--compare",
                          other.to_json(indent=None)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert [line.split()[1:] for line in out.stdout.splitlines()[1:]] == [
        ["75%", "88%", "88%"], ["100%", "100%", "100%"], ["88%", "94%", "94%"]]
