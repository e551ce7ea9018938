import re

import pytest
import torch

import pocketnas
from pocketnas.evaluation.cost import count_flops, count_parameters
from pocketnas.nas.ops import FactorizedReduce

POCKETNETS = {
    "pocketnet_s_128": (925_632, 587.11),
    "pocketnet_s_256": (991_424, 587.24),
    "pocketnet_m_128": (1_686_656, 1099.02),
    "pocketnet_m_256": (1_752_448, 1099.16),
}


@pytest.mark.parametrize("name", sorted(POCKETNETS))
def test_pocketnet_params_and_flops_match_paper(name):
    params, mflops = POCKETNETS[name]
    model = pocketnas.create_model(name)
    assert count_parameters(model) == params
    assert round(count_flops(model).mflops, 2) == mflops
    cfg = pocketnas.model_cfg(name)
    assert (cfg.reference_params, cfg.reference_mflops) == (params, mflops)


def _reference_keys(path):
    ref = {}
    for line in open(path, encoding="utf-8"):
        if line.startswith("#") or not line.strip():
            continue
        key, shape = line.rstrip("\n").split("\t")
        ref[key] = tuple(int(v) for v in re.findall(r"\d+", shape))
    return ref


@pytest.mark.parametrize("name,notes", [("pocketnet_s_128", "pocketnet_s_128_state_dict.txt"),
                                        ("pocketnet_m_256", "pocketnet_m_256_state_dict.txt")])
def test_state_dict_layout_is_the_release_layout(shared, name, notes):
    ref = _reference_keys(f"{shared}/notes/{notes}")
    with torch.device("meta"):
        own = {k: tuple(v.shape) for k, v in pocketnas.create_model(name).state_dict().items()}
    assert list(own) == list(ref)
    assert own == ref


def test_iresnet100_teacher_size():
    with torch.device("meta"):
        model = pocketnas.create_model("iresnet100")
    assert abs(count_parameters(model) - 65.2e6) < 0.1e6
    with torch.device("meta"):
        small = pocketnas.create_model("iresnet100", embedding_size=128)
    assert count_parameters(small) < count_parameters(model)


def test_mobilefacenet_is_about_one_million_params():
    n = count_parameters(pocketnas.create_model("mobilefacenet"))
    assert 0.98e6 < n < 1.02e6


@pytest.mark.parametrize("name", pocketnas.list_models())
def test_every_registered_model_embeds_faces(name, orl_faces):
    from pocketnas.models.calibrate import calibrate_batchnorm

    images, _ = orl_faces
    model = pocketnas.create_model(name)
    calibrate_batchnorm(model, [images[::50]])  # 8 people: fresh BN statistics would blow up deep nets
    with torch.no_grad():
        out = model.eval()(images[1:3])
    assert out.shape == (2, pocketnas.model_cfg(name).embedding_size)
    assert torch.isfinite(out).all()
    assert not torch.allclose(out[0], out[1])


def test_list_models_filters():
    assert pocketnas.list_models("pocketnet_s*") == ["pocketnet_s_128", "pocketnet_s_256"]
    assert {"iresnet18", "iresnet34", "iresnet50", "iresnet100", "mobilefacenet"} <= set(pocketnas.list_models())


def test_unknown_model_suggests_names():
    with pytest.raises(KeyError, match="pocketnet_s_128"):
        pocketnas.create_model("pocketnet_s128")


def test_overrides_embedding_and_genotype():
    model = pocketnas.create_model("pocketnet_s_128", embedding_size=512, genotype="pocketnet_cifar10")
    assert model.tail_width == 1024
    assert model.genotype == pocketnas.get_genotype("pocketnet_cifar10")
    assert model.pocketnas_kwargs["genotype"] == model.genotype.to_dict()
    with torch.no_grad():
        assert model.eval()(torch.zeros(1, 3, 112, 112)).shape == (1, 512)


def test_wrong_input_size_is_an_error_not_a_wrong_answer():
    model = pocketnas.create_model("pocketnet_s_128").eval()
    for size in (120, 128, 96):
        with pytest.raises(ValueError, match="expects N x 3 x 112 x 112"):
            model(torch.zeros(1, 3, size, size))


def test_smaller_crops_build_with_matching_tail():
    model = pocketnas.create_model("pocketnet_s_128", input_size=56).eval()
    assert model.final_size == 4 and model.tail[4].kernel_size == (4, 4)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 56, 56)).shape == (2, 128)


def test_factorized_reduce_matches_original_on_even_maps_and_handles_odd():
    fr = FactorizedReduce(8, 8).eval()
    x = torch.randn(2, 8, 14, 14)
    with torch.no_grad():
        y = fr.relu(x)
        expected = fr.bn(torch.cat([fr.conv12(fr.conv11(y)), fr.conv22(fr.conv21(y[:, :, 1:, 1:]))], 1))
        assert torch.equal(fr(x), expected)
        assert fr(torch.randn(2, 8, 7, 7)).shape == (2, 8, 4, 4)


def test_darts_operations_build_a_network():
    from pocketnas.nas.genotype import Genotype

    g = Genotype(normal=[[("sep_conv_3x3", 0), ("dil_conv_5x5", 1)], [("skip_connect", 0), ("avg_pool_3x3", 2)]],
                 normal_concat=[2, 3],
                 reduce=[[("sep_conv_5x5", 0), ("skip_connect", 1)], [("dil_conv_3x3", 2), ("max_pool_3x3", 1)]],
                 reduce_concat=[2, 3])
    model = pocketnas.create_model("pocketnet", genotype=g, channels=8, layers=3, act="relu").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 112, 112)).shape == (1, 128)
