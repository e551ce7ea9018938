import os
import re

from conftest import REPO


def _readme_commands():
    text = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    return re.findall(r"```bash\n(.+?)\n```", text)


def test_ci_runs_the_readme_test_command():
    commands = _readme_commands()
    assert len(commands) >= 2
    demo, tests = commands[0], commands[1]
    assert "pocketnas demo" in demo and "pytest" in tests
    ci = open(os.path.join(REPO, ".ci", "run"), encoding="utf-8").read()
    assert tests in ci.splitlines()


def test_both_commands_start_from_nothing():
    for cmd in _readme_commands()[:2]:
        assert cmd.startswith("python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 -e ")


def test_no_eval_or_unrestricted_loads_in_the_library():
    bad = re.compile(r"(?<![\w.])eval\(|pickle\.loads?\(|yaml\.load\(|weights_only\s*=\s*False")
    for folder, _, files in os.walk(os.path.join(REPO, "pocketnas")):
        for f in files:
            if f.endswith(".py"):
                text = open(os.path.join(folder, f), encoding="utf-8").read()
                hits = [m.group(0) for m in bad.finditer(text)]
                assert not hits, f"{f}: {hits}"


def test_subpackages_are_attributes_imported_on_first_use():
    """``import pocketnas`` then ``pocketnas.data.normalize(...)``, as the README's "In code" writes it, works in a
    fresh interpreter without importing the data pipeline up front; an unknown name is still an AttributeError."""
    import subprocess
    import sys

    code = ("import sys, pocketnas\n"
            "assert 'pocketnas.data' not in sys.modules and 'pocketnas.engine' not in sys.modules\n"
            "import torch\n"
            "x = pocketnas.data.normalize(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8))\n"
            "assert float(x.max()) == 1.0, x\n"
            "assert pocketnas.evaluation.__name__ == 'pocketnas.evaluation'\n"
            "try:\n    pocketnas.no_such_thing\nexcept AttributeError as e:\n    print('refused:', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "refused: module 'pocketnas' has no attribute 'no_such_thing'" in out.stdout
