import json
import os

import numpy as np
import pytest

from pocketnas.cli import main
from pocketnas.data import FolderDataset, RecordDataset, read_bin, orl_root
from pocketnas.data.binfile import read_bin_raw
from pocketnas.data.pack import make_pairs, pack_folder, pairs_from_folder


def test_pack_folder_round_trip(tmp_path):
    paths = pack_folder(orl_root(), str(tmp_path), workers=2)
    assert open(paths["property"]).read() == "40,112,112"
    ds = RecordDataset(str(tmp_path), train=False)
    folder = FolderDataset(orl_root(), train=False)
    assert len(ds) == 400 and ds.num_classes == 40
    assert ds.labels().tolist() == folder.labels  # identities in sorted folder-name order
    for i in (0, 155, 399):
        image, label = ds.read_uint8(i)
        assert label == folder.labels[i]
        assert np.abs(image.astype(int) - folder.read_uint8(i)).mean() < 2.0  # JPEG q95 of the same face
    names = [line.split("\t")[1].strip() for line in open(tmp_path / "identities.txt")]
    assert names == folder.identities


def test_pairs_are_seeded_foldwise_and_person_disjoint(tmp_path):
    labels = FolderDataset(orl_root()).labels
    pairs, issame, disjoint = make_pairs(labels, 600, seed=3)
    assert disjoint and len(pairs) == 600
    for f in range(10):
        fold = issame[f * 60:(f + 1) * 60]
        assert fold == [True] * 30 + [False] * 30
    people = [{labels[i] for p in pairs[f * 60:(f + 1) * 60] for i in p} for f in range(10)]
    assert all(people[a].isdisjoint(people[b]) for a in range(10) for b in range(a + 1, 10))
    assert all((labels[a] == labels[b]) == s for (a, b), s in zip(pairs, issame))
    assert len({tuple(sorted(p)) for p in pairs}) == 600
    assert make_pairs(labels, 600, seed=3)[0] == pairs and make_pairs(labels, 600, seed=4)[0] != pairs
    with pytest.raises(ValueError, match="multiple of 20"):
        make_pairs(labels, 610)


def test_pairs_bin_from_folder(tmp_path):
    info = pairs_from_folder(orl_root(), str(tmp_path / "orl_pairs.bin"), 200, seed=1)
    assert info["pairs"] == 200 and info["genuine"] == 100 and info["person_disjoint_folds"]
    images, issame = read_bin(str(tmp_path / "orl_pairs.bin"), progress=False)
    assert images.shape == (400, 3, 112, 112) and sum(issame) == 100
    again = tmp_path / "again.bin"
    pairs_from_folder(orl_root(), str(again), 200, seed=1)
    assert read_bin_raw(str(again)) == read_bin_raw(str(tmp_path / "orl_pairs.bin"))


def test_pairs_from_a_pack_copy_its_bytes_and_draw_as_from_the_folder(tmp_path, capsys):
    """A labelled pack gives the same pairs as the folder it was packed from (one draw rule), each image's stored
    JPEG bytes copied, not re-encoded; the command line takes either."""
    pack_folder(orl_root(), str(tmp_path / "pack"), workers=2)
    assert main(["data", "pairs", str(tmp_path / "pack"), str(tmp_path / "from_pack.bin"), "--pairs", "200",
                 "--seed", "3"]) == 0
    assert "200 pairs (100 genuine) in 10 folds, person-disjoint" in capsys.readouterr().out
    pairs_from_folder(orl_root(), str(tmp_path / "from_folder.bin"), 200, seed=3)
    bins, issame = read_bin_raw(str(tmp_path / "from_pack.bin"))
    assert (bins, issame) == read_bin_raw(str(tmp_path / "from_folder.bin"))
    stored = set()
    ds = RecordDataset(str(tmp_path / "pack"), train=False)
    from pocketnas.data.recordio import unpack_payload

    for key in ds.keys:
        stored.add(unpack_payload(ds.reader.read(int(key)), "record")[2])
    assert set(bins) <= stored


def test_data_commands(tmp_path, shared, capsys):
    assert main(["data", "pack", orl_root(), str(tmp_path / "pack"), "--workers", "2"]) == 0
    assert main(["data", "pairs", orl_root(), str(tmp_path / "p.bin"), "--pairs", "100"]) == 0
    assert "100 pairs (50 genuine) in 10 folds, person-disjoint" in capsys.readouterr().out
    for target, expect in [(str(tmp_path / "pack"), "400 images of 40 identities"),
                           (f"{shared}/data/celeba295", "6199 images of 295 identities"),
                           (str(tmp_path / "p.bin"), "100 pairs (50 genuine, 50 impostor)"),
                           (orl_root(), "400 images of 40 identities")]:
        png, js = tmp_path / "sheet.png", tmp_path / "info.json"
        assert main(["data", "inspect", target, "--out", str(png), "--json", str(js), "--overwrite"]) == 0
        assert expect in capsys.readouterr().out
        assert os.path.getsize(png) > 20_000 and json.loads(js.read_text())["contact_sheet"] == str(png)
    assert main(["data", "inspect", str(tmp_path / "missing.bin")]) == 2
    assert "missing.bin: no such file" in capsys.readouterr().err


def test_subset_pack_copies_identities(tmp_path, shared):
    from pocketnas.data import RecordDataset
    from pocketnas.data.pack import subset_pack

    src = f"{shared}/data/orl/rec"
    full = RecordDataset(src, train=False)
    subset_pack(src, str(tmp_path / "first"), 3)
    first = RecordDataset(str(tmp_path / "first"), train=False)
    assert first.num_classes == 3 and len(first) == 30 and list(np.unique(first.labels())) == [0, 1, 2]
    assert np.array_equal(first.read_uint8(0)[0], full.read_uint8(0)[0])  # bytes copied, not re-encoded
    subset_pack(src, str(tmp_path / "drawn"), 4, seed=1)
    drawn = RecordDataset(str(tmp_path / "drawn"), train=False)
    chosen = [int(line.split("\t")[1]) for line in (tmp_path / "drawn" / "subset.txt").read_text().splitlines()[2:]]
    assert len(chosen) == 4 and drawn.num_classes == 4
    k = int(np.flatnonzero(full.labels() == chosen[2])[0])
    assert np.array_equal(drawn.read_uint8(20)[0], full.read_uint8(k)[0])
