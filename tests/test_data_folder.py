import numpy as np
import pytest
import torch

from pocketnas.data import FolderDataset, normalize, orl_root
from pocketnas.data.folder import load_image


def test_bundled_orl_faces_with_credit():
    import os

    root = orl_root()
    ds = FolderDataset(root, train=False)
    assert len(ds) == 400 and ds.num_classes == 40
    assert np.bincount(ds.labels).tolist() == [10] * 40
    assert "Olivetti Research Laboratory" in open(os.path.join(root, "CREDIT.txt")).read()


def test_bundled_faces_equal_the_shared_originals(shared):
    bundled = FolderDataset(orl_root(), train=False)
    original = FolderDataset(f"{shared}/data/orl/aligned112", train=False)
    assert bundled.identities == original.identities
    for i in (0, 137, 399):
        assert np.array_equal(bundled.read_uint8(i), original.read_uint8(i))


def test_item_is_normalised_rgb_and_flip_is_switchable():
    ds = FolderDataset(orl_root(), train=False)
    x, y = ds[11]
    assert x.shape == (3, 112, 112) and x.dtype == torch.float32 and y == 1
    raw = torch.from_numpy(ds.read_uint8(11)).float()
    assert torch.allclose(x, (raw / 255 - 0.5) / 0.5, atol=1e-6)
    assert torch.equal(x[0], x[1])  # grey faces become 3 equal RGB channels
    train = FolderDataset(orl_root(), train=True)
    torch.manual_seed(0)
    flips = {bool(torch.equal(train[11][0], x.flip(-1))) for _ in range(20)}
    assert flips == {True, False}


def test_normalisations():
    img = torch.tensor([[[[0, 255]]]], dtype=torch.uint8).expand(1, 3, 1, 2)
    assert normalize(img, "arcface")[0, 0, 0].tolist() == [-1.0, 1.0]
    assert normalize(img, "raw255")[0, 0, 0].tolist() == [0.0, 255.0]
    with pytest.raises(ValueError, match="unknown input normalisation 'imagenet'"):
        normalize(img, "imagenet")


def test_errors_name_the_file(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png: cannot decode image"):
        load_image(str(tmp_path / "a" / "broken.png"))
    with pytest.raises(FileNotFoundError, match="no such image folder"):
        FolderDataset(str(tmp_path / "missing"))
    (tmp_path / "empty" / "b").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images found"):
        FolderDataset(str(tmp_path / "empty"))
