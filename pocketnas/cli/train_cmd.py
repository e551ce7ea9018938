"""pocketnas train, teacher-bank."""
from __future__ import annotations

import argparse
import os
from ..engine.precision import PRECISIONS
from .argtypes import nonnegative_int, positive_int, size_or_keep
from .common import PRECISION_HELP, RUN_OVERWRITE_HELP
from .io import CommandIO, declare


def _cmd_train(args: argparse.Namespace) -> int:
    from ..engine.train_config import load_train_config
    from ..engine.trainer import train
    from ..evaluation.validation import verify_bins

    extra = {"data": args.data, "genotype": args.genotype, "teacher": args.teacher, "kd": args.kd,
             "teacher_arch": args.teacher_arch, "teacher_input_norm": args.teacher_input_norm,
             "precision": args.precision}
    if args.save_every_epoch:
        extra["save_every_epoch"] = True
    if args.skip_bad:
        extra["skip_bad"] = True
    cfg = load_train_config(args.config, args.set or [], extra, resume_from=args.out if args.resume else None)
    history = train(cfg, args.out, resume=args.resume, overwrite=args.overwrite, verifier=verify_bins)
    if "stopped_at_step" not in history:
        print(f"trained {cfg.arch} for {cfg.epochs} epochs in {history['minutes']:.1f} min: "
              f"{os.path.join(args.out, 'model.pt')}")
        for epoch, accs in history["verification"].items():
            print(f"  epoch {epoch}: " + ", ".join(f"{k} {100 * v:.2f} %" for k, v in accs.items()))
    return 0


def _cmd_teacher_bank(args: argparse.Namespace) -> int:
    from ..engine.teacher_bank import build_teacher_bank

    manifest = build_teacher_bank(args.out, args.data, args.teacher, args.views, args.view_seed, args.teacher_arch,
                                  args.teacher_input_norm, args.view_size, args.workers, args.threads,
                                  args.block, overwrite=args.overwrite, labelled=not args.no_labels,
                                  skip_bad=args.skip_bad)
    size = sum(r["bytes"] for r in manifest["finished"].values())
    print(f"teacher bank {args.out}: {manifest['images']} images x {len(manifest['finished'])} views x "
          f"{manifest['dim']} dims (float16, {size / 2 ** 20:.1f} MiB); train with --set teacher_bank={args.out} "
          f"--set view_bank={args.views} --set view_seed={args.view_seed}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The subcommands train, teacher-bank."""
    s = sub.add_parser("train", help="train a face embedder (ArcFace/CosFace, knowledge distillation, resume)")
    s.add_argument("--config", help="a recipe: a YAML file, or a packaged name (train/, e.g. "
                                    "cpu_celeba295); --set overrides any value")
    s.add_argument("--data", help="training data: RecordIO pack (folder or .rec) or image folder")
    s.add_argument("--out", required=True, help="run folder (checkpoint.pt, model.pt, tb/, log.txt)")
    s.add_argument("--genotype", help="genotype for a PocketNet: name, genotype.json or legacy string")
    s.add_argument("--teacher", help="KD teacher: model spec (checkpoint, .onnx, registry name) or, for multistep, "
                   "a teacher run folder")
    s.add_argument("--teacher-arch", help="architecture of a bare backbone.pth teacher")
    s.add_argument("--teacher-input-norm", choices=["arcface", "raw255"], help="for an ONNX teacher without metadata")
    s.add_argument("--kd", metavar="NAME[,NAME]", help="distillation losses by name, comma-separated to combine "
                   "(pocketnas.losses.DISTILL_LOSSES: embedding, rkd, sp, hint; multistep = embedding from a "
                   "teacher run's epochs, feature = hint); checked with the recipe before training starts")
    s.add_argument("--save-every-epoch", action="store_true", help="keep epochs/epoch_NNN.pt (multi-step teachers)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value (repeatable)")
    s.add_argument("--resume", action="store_true", help="continue exactly from OUT/checkpoint.pt")
    s.add_argument("--skip-bad", action="store_true", help="leave damaged records out (counted in the log) instead "
                   "of refusing the data")
    s.add_argument("--overwrite", action="store_true", help=RUN_OVERWRITE_HELP)
    s.add_argument("--precision", choices=PRECISIONS, help=PRECISION_HELP)
    declare(s, CommandIO(inputs=("data", "teacher", "genotype"), must_exist=("data",), run_folder="out"),
            overwrite=False)
    s.set_defaults(func=_cmd_train)

    s = sub.add_parser("teacher-bank", help="a teacher's embeddings of K augmented views of every training image, "
                                            "built once before distillation (resumable, parallel)",
                       description="Embeds K consistent views of every image of --data with --teacher and stores "
                                   "them (float16) with a key of everything that defines them; `pocketnas train "
                                   "--set teacher_bank=OUT` then reads its targets instead of running the teacher. "
                                   "An interrupted build resumes; a larger --views grows the bank.")
    s.add_argument("--teacher", required=True, help="the fixed teacher: .onnx, pocketnas checkpoint or registry name")
    s.add_argument("--data", required=True, help="training data: RecordIO pack (folder or .rec) or image folder")
    s.add_argument("--out", required=True, help="the bank's folder (new, empty, or a bank of the same key to finish)")
    s.add_argument("--views", type=positive_int, default=8,
                   help="views per image (the training's view_bank; default 8)")
    s.add_argument("--view-seed", type=nonnegative_int, default=0,
                   help="seed of the views (the training's view_seed; default 0)")
    s.add_argument("--teacher-arch", help="architecture of a bare backbone.pth teacher")
    s.add_argument("--teacher-input-norm", choices=["arcface", "raw255"], help="for an ONNX teacher without metadata")
    s.add_argument("--view-size", type=size_or_keep, default=0,
                   help="pixels of the views (default: the larger of 112 and the teacher's input)")
    s.add_argument("--workers", type=nonnegative_int, default=2, help="processes embedding blocks in parallel (0: "
                                                                       "this one)")
    s.add_argument("--threads", type=positive_int, default=2, help="CPU threads shared by the workers")
    s.add_argument("--block", type=positive_int, default=512, help="images per unit of work (and of resumption)")
    s.add_argument("--no-labels", action="store_true", help="list the data as a run without labels does "
                   "(margin_weight=0: images at any depth)")
    s.add_argument("--skip-bad", action="store_true", help="leave damaged records out, as the training will")
    s.add_argument("--overwrite", action="store_true", help="replace a bank of another key in OUT")
    declare(s, CommandIO(inputs=("data", "teacher"), must_exist=("data",), run_folder="out"), overwrite=False)
    s.set_defaults(func=_cmd_teacher_bank)
