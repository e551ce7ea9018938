"""pocketnas data: pack, subset, pairs, inspect."""
from __future__ import annotations

import argparse
import os
from typing import List

from ..atomic import atomic_write_json
from ..outputs import Output
from .argtypes import jpeg_quality, nonnegative_int, positive_int, size_or_keep, width_height
from .common import PACK_FILES
from .io import CommandIO, declare


def _cmd_pack(args: argparse.Namespace) -> int:
    from ..data.pack import pack_folder

    paths = pack_folder(args.folder, args.out_dir, size=args.size or None, quality=args.quality, workers=args.workers)
    print("\n".join(f"wrote {p}" for p in paths.values()))
    return 0


def _cmd_subset(args: argparse.Namespace) -> int:
    from ..data.pack import subset_pack

    paths = subset_pack(args.pack, args.out_dir, args.identities, args.seed)
    print("\n".join(f"wrote {p}" for p in paths.values()))
    return 0


def _cmd_pairs(args: argparse.Namespace) -> int:
    from ..data.crop import source_kind
    from ..data.pack import pairs_from_folder, pairs_from_pack

    if source_kind(args.folder) == "pack":
        info = pairs_from_pack(args.folder, args.out, args.pairs, folds=args.folds, seed=args.seed,
                               size=args.size or None)
    else:
        info = pairs_from_folder(args.folder, args.out, args.pairs, folds=args.folds, seed=args.seed,
                                 size=args.size or None, workers=args.workers)
    print(f"wrote {info['path']}: {info['pairs']} pairs ({info['genuine']} genuine) in {info['folds']} folds"
          f"{', person-disjoint' if info['person_disjoint_folds'] else ''}")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from ..data.inspect import inspect_path

    info = inspect_path(args.path, args.out, samples=args.samples)
    print("\n".join(info["summary"]))
    print(f"contact sheet: {info['contact_sheet']}")
    if args.json:
        atomic_write_json(args.json, info, sort_keys=False)
    return 0


def _cmd_crop(args: argparse.Namespace) -> int:
    from ..data.crop import crop_any, crop_picture, make_crop, sample_faces

    crop = make_crop(args.region, args.box, args.size)
    result = crop_any(args.source, args.out, crop, quality=args.quality)
    what = f"{result['pairs']} pairs" if result["kind"] == "bin" else f"{result['identities']} identities"
    print(f"wrote {args.out}: {result['images']} {crop.region} crops of {crop.width}x{crop.height} (box "
          f"{', '.join(f'{c:g}' for c in crop.box)} of the 112x112 template), {what}")
    if args.picture:
        print(f"picture: {crop_picture(sample_faces(args.source), crop, args.picture)}")
    return 0


def _crop_outputs(args: argparse.Namespace) -> List[Output]:
    """What ``data crop`` writes: a .bin file, or a folder holding a pack or the source's identity folders."""
    from ..data.crop import source_kind

    try:
        kind = source_kind(args.source)
    except Exception:  # a missing source: refused by must_exist before this matters
        return []
    if kind == "bin":
        return [Output(args.out, "OUT")]
    if kind == "pack":
        return [Output(args.out, "OUT", PACK_FILES[:3] + ("crop.json",))]
    names = sorted(d for d in os.listdir(args.source) if not d.startswith(".")
                   and os.path.isdir(os.path.join(args.source, d)))
    return [Output(args.out, "OUT", tuple(names) + ("crop.json",))]


def _contact_sheet_default(args: argparse.Namespace) -> List[Output]:
    if args.out:
        return []
    return [Output(f"{os.path.basename(os.path.normpath(args.path))}_contact.png", "--out (default)")]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The subcommands data."""
    s = sub.add_parser("data", help="pack folders into RecordIO, make pairs .bin files, crop regions, inspect data")
    dsub = s.add_subparsers(dest="data_command", required=True)
    d = dsub.add_parser("pack", help="image folder (root/<identity>/<image>) -> train.rec/.idx/property")
    d.add_argument("folder", help="aligned faces as FOLDER/<identity>/<image>")
    d.add_argument("out_dir", help="where train.rec, train.idx, property and identities.txt go")
    d.add_argument("--size", type=size_or_keep, default=112, help="resize to SIZE x SIZE (0: keep)")
    d.add_argument("--quality", type=jpeg_quality, default=95, help="JPEG quality")
    d.add_argument("--workers", type=positive_int, default=max(1, os.cpu_count() or 1),
                   help="threads encoding images (default: the CPU count)")
    declare(d, CommandIO(inputs=("folder",), must_exist=("folder",), folders=(("out_dir", PACK_FILES),)))
    d.set_defaults(func=_cmd_pack)
    d = dsub.add_parser("subset", help="a labelled pack -> a pack of its first N identities (or N drawn with --seed)")
    d.add_argument("pack", help="a labelled RecordIO pack (folder with train.rec, or a .rec)")
    d.add_argument("out_dir", help="where the new pack goes (never the source pack)")
    d.add_argument("--identities", type=positive_int, required=True, help="how many identities to keep")
    d.add_argument("--seed", type=nonnegative_int, help="draw the identities at random with this seed (default: the "
                                                         "first N)")
    declare(d, CommandIO(inputs=("pack",), must_exist=("pack",),
                         folders=(("out_dir", PACK_FILES[:3] + ("subset.txt",)),)))
    d.set_defaults(func=_cmd_subset)
    d = dsub.add_parser("pairs", help="image folder or pack -> verification pairs .bin (10 folds, seeded)")
    d.add_argument("folder", help="aligned faces as FOLDER/<identity>/<image> (e.g. people held out of training), "
                                  "or a labelled RecordIO pack (its JPEG bytes copied as stored)")
    d.add_argument("out", help="the .bin file to write (insightface's format, as lfw.bin)")
    d.add_argument("--pairs", type=positive_int, default=600, help="pairs in all, half genuine (default 600, a "
                                                                      "multiple of 2 x folds)")
    d.add_argument("--folds", type=positive_int, default=10, help="folds of the 10-fold protocol (default 10)")
    d.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the pair draw (default 0)")
    d.add_argument("--size", type=size_or_keep, default=112, help="resize to SIZE x SIZE (0: keep)")
    d.add_argument("--workers", type=positive_int, default=max(1, os.cpu_count() or 1),
                   help="threads encoding images (default: the CPU count)")
    declare(d, CommandIO(inputs=("folder",), must_exist=("folder",), files=("out",)))
    d.set_defaults(func=_cmd_pairs)
    d = dsub.add_parser("crop", help="a region of aligned faces (periocular, one eye, a box) from a pack, a folder "
                                     "or a .bin into the same kind of file")
    d.add_argument("source", help="aligned faces: a RecordIO pack (folder with train.rec, or a .rec), a folder "
                                  "SOURCE/<identity>/<image>, or a .bin of pairs")
    d.add_argument("out", help="where the crops go: a .bin for a .bin, else a folder (a pack for a pack)")
    d.add_argument("--region", default="periocular", choices=["periocular", "left_eye", "right_eye"],
                   help="periocular: both eyes and brows, 80x40 of the 112x112 template (default); left_eye / "
                        "right_eye: 36x36 around the eye on the image's left / right")
    d.add_argument("--box", help="any other box, x0,y0,x1,y1 in 112x112 template pixels (instead of --region)")
    d.add_argument("--size", type=width_height, help="resize the crops to WIDTHxHEIGHT (default: the box's own "
                                                     "size in template pixels, e.g. 80x40)")
    d.add_argument("--quality", type=jpeg_quality, default=95, help="JPEG quality of packs and .bin files "
                                                                      "(folders are written as PNG)")
    d.add_argument("--picture", help="also draw a few faces with the box and their crops into this PNG")
    declare(d, CommandIO(inputs=("source",), must_exist=("source",), files=("picture",), extra=_crop_outputs))
    d.set_defaults(func=_cmd_crop)
    d = dsub.add_parser("inspect", help="identities, images, per-identity histogram, contact sheet PNG")
    d.add_argument("path", help="a RecordIO folder or .rec, a .bin, or an image folder")
    d.add_argument("--out", help="contact sheet PNG (default NAME_contact.png)")
    d.add_argument("--samples", type=positive_int, default=32, help="faces on the contact sheet (default 32)")
    d.add_argument("--json", help="also write the summary to this JSON file")
    declare(d, CommandIO(inputs=("path",), must_exist=("path",), files=("out", "json"), extra=_contact_sheet_default))
    d.set_defaults(func=_cmd_inspect)
