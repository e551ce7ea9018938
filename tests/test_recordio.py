import filecmp
import io
import os
import shutil
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from pocketnas.data import DataFormatError, RecordDataset
from pocketnas.data.recordio import (MAGIC, RecordIOReader, RecordIOWriter, pack_payload, read_index,
                                     unpack_payload, write_insightface_pack)

MAGIC_BYTES = struct.pack("<I", MAGIC)


def _raw_records(rec_path):
    """An independent minimal parser of single-part records: (offset, payload) in file order."""
    data = open(rec_path, "rb").read()
    out, pos = [], 0
    while pos < len(data):
        magic, lrec = struct.unpack_from("<II", data, pos)
        assert magic == MAGIC and lrec >> 29 == 0
        n = lrec & ((1 << 29) - 1)
        out.append((pos, data[pos + 8:pos + 8 + n]))
        pos += 8 + (n + 3) // 4 * 4
    return out


@pytest.mark.parametrize("name,images,classes", [("orl/rec", 400, 40), ("celeba295", 6199, 295)])
def test_mxnet_written_packs(shared, name, images, classes):
    ds = RecordDataset(f"{shared}/data/{name}", train=False)
    assert len(ds) == images and ds.num_classes == classes
    raw = _raw_records(f"{shared}/data/{name}/train.rec")
    header_labels = [struct.unpack_from("IfQQ", p)[1] for _, p in raw[1:images + 1]]
    assert ds.labels().tolist() == [int(v) for v in header_labels]
    assert np.bincount(ds.labels(), minlength=classes).min() >= 1
    for i in (0, images // 2, images - 1):
        image, label = ds.read_uint8(i)
        jpeg = raw[i + 1][1][24:]
        assert jpeg[:2] == b"\xff\xd8"
        expected = np.array(Image.open(io.BytesIO(jpeg)).convert("RGB")).transpose(2, 0, 1).copy()
        assert np.array_equal(image, expected) and label == int(header_labels[i])
        x, y = ds[i]
        assert x.shape == (3, 112, 112) and y == label
        assert torch.allclose(x, (torch.from_numpy(expected).float() - 127.5) / 127.5)


def test_orl_labels_follow_the_identity_records(shared):
    ds = RecordDataset(f"{shared}/data/orl/rec/train.rec")
    assert ds.identity_ranges.tolist()[:2] == [[1, 11], [11, 21]]
    assert ds.labels().tolist() == [k // 10 for k in range(400)]


@pytest.mark.parametrize("name", ["orl/rec", "celeba295"])
def test_writer_reproduces_the_reference_bytes(shared, tmp_path, name):
    src = f"{shared}/data/{name}"
    reader = RecordIOReader(f"{src}/train.rec")
    n = int(reader.read_header(0)[1][0]) - 1
    images = []
    for k in range(1, n + 1):
        _, label, data = unpack_payload(reader.read(k))
        images.append((data, int(label)))
    classes = int(open(f"{src}/property").read().split(",")[0])
    write_insightface_pack(str(tmp_path), images, classes)
    for f in ("train.rec", "train.idx", "property"):
        assert filecmp.cmp(tmp_path / f, f"{src}/{f}", shallow=False), f


def test_payloads_containing_the_magic_word_are_split_like_dmlc(tmp_path):
    payload = b"abcd" + MAGIC_BYTES + b"efgh" + MAGIC_BYTES + MAGIC_BYTES + b"xy" + b"z" + MAGIC_BYTES[:3]
    unaligned = b"a" + MAGIC_BYTES + b"bc"
    with RecordIOWriter(str(tmp_path / "t.rec")) as w:
        w.write(0, payload)
        w.write(1, unaligned)
        w.write(7, b"")
    raw = (tmp_path / "t.rec").read_bytes()
    # aligned magic words become record boundaries: parts flagged 1 (first), 2 (middle), 3 (last)
    expected = (MAGIC_BYTES + struct.pack("<I", 1 << 29 | 4) + b"abcd"
                + MAGIC_BYTES + struct.pack("<I", 2 << 29 | 4) + b"efgh"
                + MAGIC_BYTES + struct.pack("<I", 2 << 29 | 0)
                + MAGIC_BYTES + struct.pack("<I", 3 << 29 | 6) + b"xyz" + MAGIC_BYTES[:3] + b"\0\0")
    assert raw.startswith(expected)
    r = RecordIOReader(str(tmp_path / "t.rec"))
    assert r.read(0) == payload and r.read(1) == unaligned and r.read(7) == b""
    assert read_index(str(tmp_path / "t.idx"))[0].tolist() == [0, 1, 7]
    os.remove(tmp_path / "t.idx")  # rebuilt by a scan when missing
    r2 = RecordIOReader(str(tmp_path / "t.rec"))
    assert [r2.read(k) for k in range(3)] == [payload, unaligned, b""]


def test_vector_labels(tmp_path):
    with RecordIOWriter(str(tmp_path / "v.rec")) as w:
        w.write(0, pack_payload([3.0, 7.5], b"DATA", id=4))
    header, label, data = unpack_payload(RecordIOReader(str(tmp_path / "v.rec")).read(0))
    assert header.flag == 2 and header.id == 4 and label.tolist() == [3.0, 7.5] and data == b"DATA"


def test_missing_index_is_rebuilt_by_a_scan(shared, tmp_path):
    shutil.copy(f"{shared}/data/orl/rec/train.rec", tmp_path / "train.rec")
    shutil.copy(f"{shared}/data/orl/rec/property", tmp_path / "property")
    ds = RecordDataset(str(tmp_path))
    ref_keys, ref_offsets = read_index(f"{shared}/data/orl/rec/train.idx")
    assert ds.reader.offsets.tolist() == ref_offsets.tolist() and len(ds) == 400


def test_plain_pack_without_insightface_header(tmp_path):
    img = Image.new("RGB", (112, 112), (10, 20, 30))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    with RecordIOWriter(str(tmp_path / "p.rec")) as w:
        for k in range(6):
            w.write(k, pack_payload(float(k % 3), buf.getvalue(), id=k))
    ds = RecordDataset(str(tmp_path / "p.rec"), num_classes=3, train=False)
    assert len(ds) == 6 and ds.labels().tolist() == [0, 1, 2, 0, 1, 2]
    assert ds.read_uint8(4)[0][:, 0, 0].tolist() == [10, 20, 30]


def test_dataloader_workers_open_the_pack_lazily(shared):
    ds = RecordDataset(f"{shared}/data/orl/rec", train=True)
    assert ds.reader._mm is None
    loader = torch.utils.data.DataLoader(ds, batch_size=50, num_workers=2, shuffle=True)
    labels = torch.cat([y for _, y in loader])
    assert sorted(labels.tolist()) == sorted(ds.labels().tolist())
    assert ds.reader._mm is None  # the parent never mapped it


# ----------------------------------------------------------------------------- bad input
@pytest.fixture()
def orl_copy(shared, tmp_path):
    for f in ("train.rec", "train.idx", "property"):
        shutil.copy(f"{shared}/data/orl/rec/{f}", tmp_path / f)
        os.chmod(tmp_path / f, 0o644)
    return tmp_path


def _offset(folder, key):
    keys, offsets = read_index(str(folder / "train.idx"))
    return int(offsets[list(keys).index(key)])


def test_truncated_pack(orl_copy):
    rec = orl_copy / "train.rec"
    cut = _offset(orl_copy, 200) + 100
    rec.write_bytes(rec.read_bytes()[:cut])
    with pytest.raises(DataFormatError, match=r"train.idx: record 201 has offset \d+, past the end of .*train.rec"):
        RecordDataset(str(orl_copy))
    os.remove(orl_copy / "train.idx")
    with pytest.raises(DataFormatError, match=rf"train.rec: record 200 at byte {cut - 100}: needs \d+ bytes but the "
                                              rf"file ends at byte {cut} \(truncated pack\)"):
        RecordDataset(str(orl_copy))


def test_truncated_record_through_the_index(orl_copy):
    rec = orl_copy / "train.rec"
    start = _offset(orl_copy, 12)
    data = bytearray(rec.read_bytes())
    data[start + 4:start + 8] = struct.pack("<I", 1 << 28)  # a length running past the end of the file
    rec.write_bytes(bytes(data))
    ds = RecordDataset(str(orl_copy))
    with pytest.raises(DataFormatError, match=rf"record 12 at byte {start}: needs 268435456 bytes but the file ends"):
        ds[11]


def test_wrong_magic(orl_copy):
    rec = orl_copy / "train.rec"
    start = _offset(orl_copy, 5)
    data = bytearray(rec.read_bytes())
    data[start:start + 4] = b"\x00\x01\x02\x03"
    rec.write_bytes(bytes(data))
    ds = RecordDataset(str(orl_copy))
    with pytest.raises(DataFormatError, match=rf"train.rec: record 5 at byte {start}: bad magic number 0x03020100 "
                                              r"\(expected 0xced7230a\)"):
        ds[4]


def test_index_offset_past_the_end(orl_copy):
    idx = orl_copy / "train.idx"
    lines = idx.read_text().splitlines()
    lines[37] = "37\t99999999"
    idx.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=r"train.idx: record 37 has offset 99999999, past the end of"):
        RecordDataset(str(orl_copy))


def test_malformed_index_line(orl_copy):
    idx = orl_copy / "train.idx"
    lines = idx.read_text().splitlines()
    lines[3] = "3\tabc"
    idx.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=r"train.idx: line 4 is not 'key<TAB>offset': b'3\\tabc'"):
        RecordDataset(str(orl_copy))


def test_missing_and_malformed_property(orl_copy):
    os.remove(orl_copy / "property")
    with pytest.raises(DataFormatError, match=r"property: missing; it should hold 'num_classes,height,width' \(this "
                                              r"pack's identity records say 40 classes"):
        RecordDataset(str(orl_copy))
    assert RecordDataset(str(orl_copy), num_classes=40).num_classes == 40
    (orl_copy / "property").write_text("forty,112")
    with pytest.raises(DataFormatError, match=r"property: expected 'num_classes,height,width' \(e.g. '85742,112,112'\),"
                                              r" got 'forty,112'"):
        RecordDataset(str(orl_copy))
    (orl_copy / "property").write_text("41,112,112")
    with pytest.raises(DataFormatError, match=r"property: says 41 classes but .*train.rec has 40 identity records"):
        RecordDataset(str(orl_copy))


def test_undecodable_image_and_skipping(orl_copy):
    rec = orl_copy / "train.rec"
    data = bytearray(rec.read_bytes())
    start = _offset(orl_copy, 7)
    n = struct.unpack_from("<I", data, start + 4)[0]
    # the JPEG bytes of record 7 destroyed, its start and end markers kept: only decoding finds it
    data[start + 8 + 24 + 20:start + 8 + n - 2] = b"\x00" * (n - 46)  # header 24 bytes, JPEG's first 20 kept
    bad_magic = _offset(orl_copy, 20)
    data[bad_magic:bad_magic + 4] = b"\xff\xff\xff\xff"
    truncated = _offset(orl_copy, 30)  # a JPEG without its end marker: found up front, without decoding
    m = struct.unpack_from("<I", data, truncated + 4)[0]
    data[truncated + 8 + m - 2:truncated + 8 + m] = b"\x00\x00"
    rec.write_bytes(bytes(data))
    ds = RecordDataset(str(orl_copy))
    with pytest.raises(DataFormatError, match=r"train.rec: record 7: cannot decode image"):
        ds[6]
    with pytest.raises(DataFormatError, match=r"train.rec: record 20 at byte .*--skip-bad"):
        ds.check_records()  # what training does before it starts
    skipping = RecordDataset(str(orl_copy), skip_bad=True)
    assert len(skipping) == 398 and skipping.bad_records == [20, 30]  # checked up front, no decoding
    x, y = skipping[6]  # record 7 fails to decode: the next good image stands in, and it is counted
    assert y == 0 and skipping.bad_records == [20, 30, 7]


def test_label_out_of_range_is_never_silent(tmp_path, shared):
    reader = RecordIOReader(f"{shared}/data/orl/rec/train.rec")
    images = [(unpack_payload(reader.read(k))[2], (k - 1) // 10) for k in range(1, 21)]
    write_insightface_pack(str(tmp_path), images, 2)
    (tmp_path / "property").write_text("2,112,112")
    with RecordIOWriter(str(tmp_path / "x.rec")) as w:
        w.write(0, pack_payload(5.0, images[0][0], id=0))
        w.write(1, pack_payload(0.5, images[0][0], id=1))
    ds = RecordDataset(str(tmp_path / "x.rec"), num_classes=2)
    with pytest.raises(DataFormatError, match=r"x.rec: record 0: label 5.0 is not a class index in 0..1"):
        ds[0]
    with pytest.raises(DataFormatError, match=r"x.rec: record 1: label 0.5 is not a class index"):
        ds[1]
