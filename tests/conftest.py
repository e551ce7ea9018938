import os

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(REPO), "shared")


@pytest.fixture(scope="session")
def shared() -> str:
    """The real data and notes given beside the project (tests may read them; the product never does)."""
    assert os.path.isdir(SHARED), f"the shared folder is missing: {SHARED}"
    return SHARED


@pytest.fixture(scope="session")
def orl_faces():
    """All 400 bundled ORL faces as a normalised float tensor, with labels."""
    from pocketnas.data import FolderDataset, normalize, orl_root

    ds = FolderDataset(orl_root(), train=False)
    images = normalize(ds.batch_uint8(range(len(ds))))
    return images, torch.tensor(ds.labels)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
