import os

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the real faces and weights beside the checkout; POCKETNAS_SHARED points elsewhere (a clone in another place)
SHARED = os.environ.get("POCKETNAS_SHARED") or os.path.join(os.path.dirname(REPO), "shared")


MARKERS = {
    "slow": "takes more than a few seconds (skipped unless --run-slow; CI runs them)",
    "onnx": "needs onnx and onnxruntime (the [onnx] extra)",
    "distributed": "starts several processes (torch.distributed, gloo)",
    "shared_data": "reads the real faces and weights in ../shared (skipped with a reason where it is absent)",
    "release": "re-measures shipped weights on whole test sets, minutes each (skipped unless --run-release)",
}


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="run the tests marked slow too (CI does)")
    parser.addoption("--run-release", action="store_true",
                     help="run the tests marked release too: when shipped weights change (pocketnas release)")


def _worker_threads() -> int:
    """Threads for one pytest-xdist worker: the cores shared out among the workers (at least one each), so that
    ``-n auto`` runs the workers side by side instead of oversubscribing the cores with their thread pools."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def pytest_configure(config):
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    if os.environ.get("PYTEST_XDIST_WORKER"):  # inside a worker of `pytest -n N`
        threads = _worker_threads()
        os.environ["OMP_NUM_THREADS"] = str(threads)  # for the subprocesses the tests start
        _cap_torch_threads(threads)


def _cap_torch_threads(cap: int) -> None:
    """In a worker, the ``--threads 2`` / ``threads: 2`` that the tests give the command lines would put more
    OpenMP threads than cores on the machine (two workers x two threads on two cores), and OpenMP's spinning
    barriers then run several times slower (measured: the trained-tiny fixture 31 s in a serial run, 151 s beside
    another worker). ``torch.set_num_threads`` is capped at the worker's share; no test asserts a thread count
    above one."""
    original = torch.set_num_threads

    def capped(n: int) -> None:
        original(max(1, min(int(n), cap)))

    original(cap)
    torch.set_num_threads = capped


def _mentions_onnx(item) -> bool:
    """Tests that export to, load or run ONNX files (their source names onnx) carry the onnx marker."""
    import inspect

    fn = getattr(item, "function", None)
    try:
        return fn is not None and "onnx" in inspect.getsource(fn).lower()
    except (OSError, TypeError):
        return False


def pytest_collection_modifyitems(config, items):
    skip_slow = pytest.mark.skip(reason="slow: run with --run-slow (the README's test command and CI do)")
    skip_release = pytest.mark.skip(reason="release check (whole LFW, minutes): run with --run-release")
    for item in items:
        if "shared" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.shared_data)
        if "onnx" not in item.keywords and _mentions_onnx(item):
            item.add_marker(pytest.mark.onnx)
        if "slow" in item.keywords and not config.getoption("--run-slow"):
            item.add_marker(skip_slow)
        if item.get_closest_marker("release") and not config.getoption("--run-release"):
            item.add_marker(skip_release)


def pytest_terminal_summary(terminalreporter):
    """Skips counted by reason at the end of every run: a test skipped for want of ../shared, --run-slow or a
    package must never pass unnoticed as green."""
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        return
    reasons = {}
    for report in skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.replace("Skipped: ", "")
        reasons[reason] = reasons.get(reason, 0) + 1
    terminalreporter.write_sep("-", f"{len(skipped)} skipped, by reason")
    for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1]):
        terminalreporter.write_line(f"{n:5d}  {reason}")


@pytest.fixture(scope="session")
def shared() -> str:
    """The real data and notes given beside the project (tests may read them; the product never does). Where the
    folder is absent its tests are skipped, unless POCKETNAS_REQUIRE_SHARED=1 (CI sets it: a missing folder must not
    pass as a green run)."""
    if not os.path.isdir(SHARED):
        if os.environ.get("POCKETNAS_REQUIRE_SHARED") == "1":
            pytest.fail(f"the shared folder is missing: {SHARED} (POCKETNAS_REQUIRE_SHARED=1)")
        pytest.skip(f"needs the shared data folder {SHARED} (set POCKETNAS_SHARED to where it is)")
    return SHARED


@pytest.fixture(scope="session")
def orl_bin(tmp_path_factory) -> str:
    """ORL's verification pairs as a ``.bin``: the one given in ../shared (insightface's pickle, as users have it)
    when it is there, else built from the ORL faces bundled with the package (600 pairs in 10 person-disjoint folds,
    seed 0), so that the tests needing some pairs of real faces run without ../shared."""
    path = os.path.join(SHARED, "data", "orl", "orl.bin")
    if os.path.isfile(path):
        return path
    from pocketnas.data import orl_root
    from pocketnas.data.pack import pairs_from_folder

    out = str(tmp_path_factory.mktemp("orl") / "orl.bin")
    pairs_from_folder(orl_root(), out, 600, folds=10, seed=0, workers=2)
    return out


@pytest.fixture(scope="session")
def orl_faces():
    """All 400 bundled ORL faces as a normalised float tensor, with labels."""
    from pocketnas.data import FolderDataset, normalize, orl_root

    ds = FolderDataset(orl_root(), train=False)
    images = normalize(ds.batch_uint8(range(len(ds))))
    return images, torch.tensor(ds.labels)


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from seed 0 and leaves torch's thread count as it found it (the command lines under test set
    their own ``--threads``, which would otherwise leak into the tests that follow in the same process)."""
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)
