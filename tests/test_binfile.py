import io
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from pocketnas.data import DataFormatError, read_bin, write_bin
from pocketnas.data.binfile import read_bin_raw


@pytest.mark.slow
@pytest.mark.parametrize("name,pairs", [("orl/orl.bin", 600), ("lfw/lfw.bin", 6000)])
def test_reference_bins_load(shared, name, pairs):
    path = f"{shared}/data/{name}"
    images, issame = read_bin(path, progress=False)
    assert images.shape == (2 * pairs, 3, 112, 112) and images.dtype == np.uint8
    assert len(issame) == pairs and sum(issame) == pairs // 2
    # ten folds in file order, each half genuine (LFW view 2 layout)
    fold = pairs // 10
    assert all(sum(issame[f * fold:(f + 1) * fold]) == fold // 2 for f in range(10))
    bins, _ = read_bin_raw(path)
    for i in (0, 1, len(bins) - 1):
        expected = np.array(Image.open(io.BytesIO(bins[i])).convert("RGB")).transpose(2, 0, 1)
        assert np.array_equal(images[i], expected)


def test_write_and_read_back(tmp_path, orl_bin):
    images, issame = read_bin(orl_bin, progress=False)
    bins, _ = read_bin_raw(orl_bin)
    write_bin(str(tmp_path / "copy.bin"), bins[:40], issame[:20])
    assert read_bin_raw(str(tmp_path / "copy.bin")) == (bins[:40], issame[:20])
    with open(tmp_path / "copy.bin", "rb") as f:  # what insightface's own loader does
        assert pickle.load(f, encoding="bytes") == (bins[:40], issame[:20])
    write_bin(str(tmp_path / "enc.bin"), images[:8], issame[:4])
    back, same = read_bin(str(tmp_path / "enc.bin"), progress=False)
    assert same == issame[:4] and np.abs(back.astype(int) - images[:8]).mean() < 3  # JPEG q95


def test_protocol2_pickles_from_python3_load(tmp_path, orl_bin):
    bins, issame = read_bin_raw(orl_bin)
    with open(tmp_path / "p2.bin", "wb") as f:
        pickle.dump((bins[:4], issame[:2]), f, protocol=2)  # bytes stored as _codecs.encode(str, 'latin1')
    assert read_bin_raw(str(tmp_path / "p2.bin")) == (bins[:4], issame[:2])


class _System:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Other:
    pass


def test_malicious_bin_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.bin", "wb") as f:
        pickle.dump(([_System(marker), b"x"], [True]), f)
    with pytest.raises(DataFormatError, match=r"evil.bin: not a verification .bin \(UnpicklingError: refused to build "
                                              r"global '(posix|os).system'"):
        read_bin(str(tmp_path / "evil.bin"))
    assert not marker.exists()
    with open(tmp_path / "obj.bin", "wb") as f:
        pickle.dump(([_Other(), b"x"], [True]), f)
    with pytest.raises(DataFormatError, match=r"refused to build global 'test_binfile._Other'"):
        read_bin(str(tmp_path / "obj.bin"))
    with open(tmp_path / "codecs.bin", "wb") as f:  # the one allowed call, misused
        f.write(b"\x80\x02c_codecs\nencode\nq\x00X\x03\x00\x00\x00abcq\x01X\x05\x00\x00\x00rot13q\x02\x86q\x03Rq\x04.")
    with pytest.raises(DataFormatError, match="only as str.encode\\('latin1'\\)"):
        read_bin(str(tmp_path / "codecs.bin"))


def test_mismatched_pair_count(tmp_path, orl_bin):
    bins, issame = read_bin_raw(orl_bin)
    with open(tmp_path / "short.bin", "wb") as f:
        pickle.dump((bins[:11], issame[:6]), f)
    with pytest.raises(DataFormatError, match=r"short.bin: 11 images for 6 pairs \(expected 12\)"):
        read_bin(str(tmp_path / "short.bin"))


def test_wrong_contents(tmp_path, orl_bin):
    bins, issame = read_bin_raw(orl_bin)
    with open(tmp_path / "a.bin", "wb") as f:
        pickle.dump((bins[:3] + ["text"], issame[:2]), f)
    with pytest.raises(DataFormatError, match=r"a.bin: image 3 \(pair 1\) is a str, not encoded bytes"):
        read_bin(str(tmp_path / "a.bin"))
    with open(tmp_path / "b.bin", "wb") as f:
        pickle.dump((bins[:4], [True, 7]), f)
    with pytest.raises(DataFormatError, match=r"b.bin: issame entry 1 is 7, not a boolean"):
        read_bin(str(tmp_path / "b.bin"))
    with open(tmp_path / "c.bin", "wb") as f:
        pickle.dump((bins[:3] + [b"\x00garbage"], issame[:2]), f)
    with pytest.raises(DataFormatError, match=r"c.bin: image 3 \(pair 1\) is not a JPEG/PNG/BMP image"):
        read_bin(str(tmp_path / "c.bin"))
    (tmp_path / "d.bin").write_bytes(b"\x80\x05garbage")
    with pytest.raises(DataFormatError, match=r"d.bin: not a verification .bin"):
        read_bin(str(tmp_path / "d.bin"))
    with pytest.raises(FileNotFoundError, match="no such .bin file"):
        read_bin(str(tmp_path / "none.bin"))


def test_other_sizes_are_resized_and_said(tmp_path, caplog):
    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (4, 3, 96, 96), dtype=np.uint8)
    write_bin(str(tmp_path / "s.bin"), small, [True, False])
    with caplog.at_level("WARNING"):
        images, _ = read_bin(str(tmp_path / "s.bin"), progress=False)
    assert images.shape == (4, 3, 112, 112)
    assert "4 images were stored at 96x96, resized to 112x112" in caplog.text
