"""pocketnas align, verify: photos in, faces and decisions out."""
from __future__ import annotations

import argparse
import os
from ..atomic import atomic_save_image
from ..errors import InputError
from .argtypes import cosine, image_side, nonnegative_int, positive_int
from .common import add_model_args, open_embedder
from .io import CommandIO, declare


def _cmd_align(args: argparse.Namespace) -> int:
    from ..detection import align_folder

    r = align_folder(args.photos, args.out, size=args.size, min_face=args.min_face, overwrite=args.overwrite)
    print(f"aligned {r['aligned']} of {r['photos']} photos into {args.out} ({len(r['no_face'])} without a face, "
          f"{len(r['unreadable'])} unreadable, {r['several_faces']} with several faces: the most confident kept)")
    for rel in r["no_face"][:20]:
        print(f"  no face: {rel}")
    if len(r["no_face"]) > 20:
        print(f"  ... and {len(r['no_face']) - 20} more (align_report.json lists them all)")
    for rel in r["several_faces_photos"][:20]:
        print(f"  several faces (the most confident kept): {rel}")
    if len(r["several_faces_photos"]) > 20:
        print(f"  ... and {len(r['several_faces_photos']) - 20} more (align_report.json lists them all)")
    return 0


def _threshold_advice(spec: str) -> str:
    """What to do about a model without a recorded threshold: a command that works for this kind of model."""
    from ..models.checkpoint import CheckpointError, read_checkpoint

    find = f"pocketnas eval verify --model {spec} --bin lfw.bin"
    if spec.endswith(".onnx"):
        return (f"an ONNX file cannot record one: pass --threshold COSINE, e.g. the cosine threshold `{find}` "
                f"reports (the mean of its folds')")
    if os.path.isfile(spec):
        try:
            read_checkpoint(spec)
        except CheckpointError:  # a bare state dict has nowhere to record it
            return (f"a bare state dict cannot record one: pass --threshold COSINE, e.g. the cosine threshold "
                    f"`{find} --arch ARCH` reports")
        return f"pass --threshold COSINE, or record one in the file: {find} --record-threshold"
    return f"pass --threshold COSINE (e.g. the cosine threshold `{find}` reports)"


def _cmd_verify(args: argparse.Namespace) -> int:
    import torch

    from ..evaluation.photos import recorded_threshold, verify_photos

    torch.set_num_threads(args.threads)
    from ..models.factory import require_trained

    many = sum(x is not None for x in (args.pairs, args.folder))
    if many > 1 or (many and (args.a or args.b)) or (not many and not (args.a and args.b)):
        raise InputError("give two photos (verify A B), or many pairs: --pairs FILE or --folder DIR (one of them)")
    if (args.a or args.b) and (args.out or args.sample):
        raise InputError("--out and --sample go with --pairs or --folder; two photos report with --json")
    require_trained(args.model, args.pretrained, "its verdict")
    if args.threshold is not None:
        threshold, source = args.threshold, "given with --threshold"
    else:
        found = recorded_threshold(args.model, args.pretrained)
        if found is None:
            raise InputError(f"{args.model} records no verification threshold; {_threshold_advice(args.model)}")
        threshold, source = found
    if args.pairs or args.folder:
        return _verify_many(args, threshold, source)
    r = verify_photos(open_embedder(args), args.a, args.b, threshold, aligned=args.aligned, flip=not args.no_flip)
    if args.save_faces:
        from PIL import Image

        for name, face in zip(("a.png", "b.png"), r["faces"]):
            atomic_save_image(Image.fromarray(face.transpose(1, 2, 0)), os.path.join(args.save_faces, name))
    verdict = "the same person" if r["same"] else "different people"
    print(f"cosine {r['cosine']:.4f}, threshold {threshold:.4f} ({source}): {verdict}")
    if args.json:
        from ..evaluation.run import write_json

        write_json(args.json, {k: v for k, v in r.items() if k != "faces"} | {"threshold_source": source})
    return 0


def _verify_many(args: argparse.Namespace, threshold: float, source: str) -> int:
    """``verify --pairs FILE`` / ``--folder DIR``: every photo embedded once, every pair scored."""
    from ..evaluation.bulk import pairs_of_folder, read_pairs_file, verify_pairs, write_pairs_report

    pairs = read_pairs_file(args.pairs) if args.pairs else pairs_of_folder(args.folder, args.sample, args.seed)
    if not pairs:
        raise InputError(f"{args.pairs or args.folder}: no pairs to score")
    r = verify_pairs(open_embedder(args), pairs, threshold, aligned=args.aligned, flip=not args.no_flip)
    s = r["summary"]
    print(f"{s['pairs']} pairs of {s['photos']} photos ({s['embedded']} embedded once each), threshold "
          f"{threshold:.4f} ({source}): {sum(bool(x['same']) for x in r['rows'])} same, "
          f"{sum(x['same'] is False for x in r['rows'])} different, {s['undecided']} undecided")
    if "accuracy" in s:
        print(f"labelled pairs: {s['labelled']}, accuracy at the threshold {100 * s['accuracy']:.2f} %"
              + (f", AUC {s['auc']:.4f}, EER {100 * s['eer']:.2f} %" if "auc" in s else ""))
    for what, key in (("no face found", "no_face"), ("several faces (the most confident used)", "several_faces")):
        if s[key]:
            print(f"{what}: {len(s[key])}: " + ", ".join(s[key][:10]) + (" ..." if len(s[key]) > 10 else ""))
    if args.out:
        write_pairs_report(args.out, {**r, "summary": {**s, "threshold_source": source}})
        print(f"wrote {args.out}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The subcommands align, verify."""
    s = sub.add_parser("align", help="detect and align the faces of ordinary photos onto the ArcFace template")
    s.add_argument("photos", help="a folder of photos (identity sub-folders are kept)")
    s.add_argument("out", help="where the aligned faces go (PNG, the same structure) and align_report.json")
    s.add_argument("--size", type=image_side, default=112, help="side of the aligned crops (default 112)")
    s.add_argument("--min-face", type=positive_int, default=20, help="smallest face to find, in pixels (default 20)")
    s.add_argument("--overwrite", action="store_true", help="replace an earlier pocketnas align run in OUT")
    declare(s, CommandIO(inputs=("photos",), must_exist=("photos",), folders=(("out", ("align_report.json",)),)),
            overwrite=False)
    s.set_defaults(func=_cmd_align)

    s = sub.add_parser("verify", help="are two photos the same person? cosine and decision (or many pairs at once)",
                       description="verify A B: one pair. verify --pairs FILE or --folder DIR: many pairs in one "
                                   "process, each photo embedded once; --out writes a per-pair CSV or JSON.")
    s.add_argument("a", nargs="?", help="the first photo (any photo with a face, or an aligned crop with --aligned)")
    s.add_argument("b", nargs="?", help="the second photo")
    s.add_argument("--pairs", metavar="FILE", help="a CSV or TSV of pairs: photo_a, photo_b[, label (1/0, "
                   "same/different)]; relative paths from the file's folder")
    s.add_argument("--folder", metavar="DIR", help="photos as DIR/<identity>/<photo>: every pair (or --sample N), "
                   "labelled by identity")
    s.add_argument("--sample", type=positive_int, help="(--folder) score N pairs drawn, half genuine, instead of all")
    s.add_argument("--seed", type=nonnegative_int, default=0, help="(--folder --sample) seed of the draw (default 0)")
    s.add_argument("--out", metavar="FILE", help="(--pairs, --folder) the per-pair table: .csv/.tsv, or .json with "
                   "the summary (faces found per photo, accuracy, AUC and EER when labelled)")
    add_model_args(s)
    s.add_argument("--threshold", type=cosine, help="cosine threshold in [-1, 1] (default: the one recorded with "
                                                    "the model)")
    s.add_argument("--aligned", action="store_true", help="the photos are aligned crops already (no detection)")
    s.add_argument("--no-flip", action="store_true", help="embed the faces only, not also their mirrors")
    s.add_argument("--save-faces", metavar="DIR", help="write the two aligned faces there (PNG)")
    s.add_argument("--json", help="also write cosine, threshold and decision to this JSON file")
    declare(s, CommandIO(inputs=("a", "b", "model", "pairs", "folder"), must_exist=("a", "b", "pairs", "folder"),
                         files=("json", "out"), folders=(("save_faces", ("a.png", "b.png")),)))
    s.set_defaults(func=_cmd_verify)
