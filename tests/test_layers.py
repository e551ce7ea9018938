"""pocketnas's packages depend one way (timm-like: layers at the bottom, the command line at the top).

Every import in every module, top-level and lazy (inside functions), is read from the source; a package may import
only from packages below it, so no cycle can form. A new package must be given its place here.
"""
import ast
import os

import pocketnas

# bottom to top; a unit may import only units of a lower rank (and itself)
RANKS = {
    "version": 0, "errors": 0, "atomic": 0,
    "config": 1, "registry": 1, "image_size": 1, "onnx_runtime": 1, "outputs": 1, "jsonfile": 1,
    "data": 2, "layers": 2, "metrics": 2,
    "genotype": 3, "losses": 3, "detection": 3,
    "models": 4,
    "nas": 5,
    "engine": 6,
    "evaluation": 7,
    "compress": 8,
    "demo": 9,
    "cli": 10,
    "__main__": 11, "__init__": 11,
}
ROOT = os.path.dirname(pocketnas.__file__)


def _modules():
    for folder, _, files in os.walk(ROOT):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                rel = os.path.relpath(path, ROOT)[:-3].split(os.sep)
                yield path, rel


def _unit(parts):
    return parts[0] if parts else "__init__"


def _imports(path, rel):
    """(line, imported pocketnas unit) for every import in the file."""
    is_package = rel[-1] == "__init__"
    here = rel[:-1] if is_package else rel[:-1]  # the package the module is in, relative to pocketnas/
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                name = alias.name.split(".")
                if name[0] == "pocketnas":
                    yield node.lineno, _unit(name[1:])
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                name = (node.module or "").split(".")
                if name[0] != "pocketnas":
                    continue
                target = name[1:]
            else:
                base = here[:len(here) - (node.level - 1)] if node.level > 1 else list(here)
                assert node.level - 1 <= len(here), f"{path}:{node.lineno}: relative import beyond pocketnas"
                target = base + (node.module.split(".") if node.module else [])
            if target:
                yield node.lineno, _unit(target)
            else:  # "from . import x" in a top-level module: x is a unit of its own
                for alias in node.names:
                    yield node.lineno, _unit([alias.name])


def test_every_unit_has_a_rank():
    units = {_unit(rel) for _, rel in _modules()}
    assert units - set(RANKS) == set(), "give new packages a place in RANKS"


def test_packages_import_only_from_lower_layers():
    wrong = []
    for path, rel in _modules():
        me = _unit(rel)
        for line, other in _imports(path, rel):
            if other != me and RANKS.get(other, 99) >= RANKS[me]:
                wrong.append(f"{os.path.relpath(path, ROOT)}:{line}: {me} (rank {RANKS[me]}) imports {other} "
                             f"(rank {RANKS.get(other)})")
    assert not wrong, "\n".join(wrong)


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("from ...engine.trainer import x\n\ndef f():\n    from ...cli import main\n"
                      "    import pocketnas.demo\n    from . import budget\n")
    found = [u for _, u in _imports(str(source), ["nas", "sub", "m"])]
    assert found == ["engine", "cli", "demo", "nas"]
