"""The ``pocketnas`` command: argparse subcommands that call the library (no logic of their own)."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import List, Optional

from ..atomic import atomic_save_image, atomic_write, atomic_write_json
from ..compress.prune import PRUNERS
from ..engine.search_methods import SEARCH_METHODS
from ..nas.zero_cost import PROXIES
from ..engine.precision import PRECISIONS
from ..errors import InputError
from ..version import __version__
from ..outputs import WRITE_ERRNOS, Output, write_failure
from .argtypes import (compression_rate, cosine, fraction, image_side, jpeg_quality, nonnegative_int,
                       opset, positive_int, size_or_keep)
from .io import CommandIO, check_command_io, declare

logger = logging.getLogger("pocketnas")


def _cmd_models(args: argparse.Namespace) -> int:
    import torch

    from ..evaluation.cost import count_parameters
    from ..models import create_model, list_models, model_cfg

    rows = [("name", "family", "emb", "params", "pretrained", "description")]
    for name in list_models(args.pattern):
        cfg = model_cfg(name)
        with torch.device("meta"):
            params = count_parameters(create_model(name))
        pre = cfg.pretrained
        weights = "-" if pre is None else (f"yes: LFW {100 * pre.lfw_accuracy:.2f} %" if pre.lfw_accuracy else "yes")
        rows.append((name, cfg.family, str(cfg.embedding_size), f"{params:,}", weights, cfg.description))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:5], widths)) + "  " + r[5])
    if any(model_cfg(n).pretrained for n in list_models(args.pattern)):
        print("pretrained: weights inside the package, create_model(name, pretrained=True); LFW: 10-fold, no flip, "
              "trained on CelebA (research use only), not the paper's MS1MV2 figures")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from ..evaluation.cost import cost_report, format_cost_table
    from ..models import load_model
    from ..nas.cell_diagram import draw_genotype

    model = load_model(args.model, args.arch)
    name = getattr(model, "pocketnas_arch", args.model)
    report = cost_report(model, name, latency=not args.no_latency, threads=args.threads)
    print(format_cost_table([report]))
    result = report.as_dict()
    genotype = getattr(model, "genotype", None)
    if genotype is not None:
        out = args.out or os.path.join("pocketnas_info", name)
        if not args.out:  # the default folder is known only now: the same rule as a named one
            from ..outputs import check_outputs

            check_outputs([Output(out, "--out (default)", CELL_PNGS)], [], overwrite=args.overwrite)
        result["cells"] = draw_genotype(genotype, out, "", name)
        print(f"genotype: {genotype}")
        print(f"cell diagrams: {', '.join(result['cells'])}")
    if args.json:
        atomic_write_json(args.json, result, sort_keys=False)
    return 0


def _cmd_genotype(args: argparse.Namespace) -> int:
    from ..nas.cell_diagram import draw_genotype
    from ..genotype import get_genotype

    genotype = get_genotype(args.spec).validate()
    if args.compare:
        from ..genotype import genotype_agreement

        other = get_genotype(args.compare).validate()
        agreement = genotype_agreement(genotype, other)
        print(f"{'cell':<8}{'same edges':>12}{'same inputs':>13}{'same ops':>10}   "
              f"({args.spec} against {args.compare})")
        for cell, r in agreement.items():
            print(f"{cell:<8}{r['edges']:>12.0%}{r['inputs']:>13.0%}{r['ops']:>10.0%}")
        if args.json:
            atomic_write_json(args.json, agreement, sort_keys=False)
        return 0
    print(genotype.to_json() if args.format == "json" else genotype.to_legacy())
    if args.json:
        atomic_write(args.json, genotype.to_json() + "\n")
    if args.draw:
        for p in draw_genotype(genotype, args.draw):
            print(f"wrote {p}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    import torch

    torch.set_num_threads(args.threads)
    run_demo(args.out, models=args.models, threads=args.threads, latency=not args.no_latency,
             pipeline=not args.no_pipeline, overwrite=args.overwrite)
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    if args.data_command == "pack":
        from ..data.pack import pack_folder

        paths = pack_folder(args.folder, args.out_dir, size=args.size or None, quality=args.quality,
                            workers=args.workers)
        print("\n".join(f"wrote {p}" for p in paths.values()))
    elif args.data_command == "subset":
        from ..data.pack import subset_pack

        paths = subset_pack(args.pack, args.out_dir, args.identities, args.seed)
        print("\n".join(f"wrote {p}" for p in paths.values()))
    elif args.data_command == "pairs":
        from ..data.pack import pairs_from_folder

        info = pairs_from_folder(args.folder, args.out, args.pairs, folds=args.folds, seed=args.seed,
                                 size=args.size or None, workers=args.workers)
        print(f"wrote {info['path']}: {info['pairs']} pairs ({info['genuine']} genuine) in {info['folds']} folds"
              f"{', person-disjoint' if info['person_disjoint_folds'] else ''}")
    else:
        from ..data.inspect import inspect_path

        info = inspect_path(args.path, args.out, samples=args.samples)
        print("\n".join(info["summary"]))
        print(f"contact sheet: {info['contact_sheet']}")
        if args.json:
            atomic_write_json(args.json, info, sort_keys=False)
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    from ..engine.search import search_config
    from ..engine.search_methods import SearchOptions, run_search

    extra = {"data": args.data, "budget_params": args.budget_params, "budget_flops": args.budget_flops,
             "skip_bad": True if args.skip_bad else None, "precision": args.precision}
    cfg = search_config(args.space, args.config, args.set or [], extra)
    options = SearchOptions(resume=args.resume, overwrite=args.overwrite, count=args.count,
                            candidates=args.candidates, proxy=args.proxy, budget_tolerance=args.budget_tolerance)
    outcome = run_search(args.method, cfg, args.out, options)
    if outcome.entries:  # random, zero-cost: the genotypes written, with their cost and scores
        for e in outcome.entries:
            cost = f", {outcome.budget.metric} {e['cost']:,.0f}" if outcome.budget else ""
            scores = ", ".join(f"{k} {v:.4g}" for k, v in e.get("scores", {}).items())
            print(f"{e['name']}{cost}{'; ' + scores if scores else ''}")
        print(f"wrote {len(outcome.entries)} genotypes and {outcome.summary}")
        return 0
    history = outcome.history
    if history.get("interrupted"):
        return 0
    if history.get("stopped_early"):
        print(history["stopped_early"])
    last = history["epochs"][-1]
    print(f"searched {len(history['epochs'])} epochs in {history['minutes']:.1f} min: val acc "
          f"{100 * last['val_acc']:.2f} %, alpha entropy {history['alpha_entropy_start']:.3f} -> "
          f"{history['alpha_entropy_end']:.3f}")
    print(f"genotype: {os.path.join(args.out, 'genotype.json')}, cells: {os.path.join(args.out, 'cells')}")
    return 0


def _cmd_nas_eval(args: argparse.Namespace) -> int:
    from ..engine.nas_eval import format_table, load_entries, nas_eval, parse_shard

    shard = parse_shard(args.shard)
    overrides = (args.set or []) + ([f"precision={args.precision}"] if args.precision else [])
    report = nas_eval(load_entries(args.genotypes), args.data, args.bin, args.out, args.seeds, args.config,
                      overrides, flip=args.flip, proxies=[] if args.no_proxies else args.proxies, shard=shard)
    if not report["complete"]:
        print(f"shard {args.shard} finished its runs; {len(report['pending'])} run(s) of other shards are still to "
              f"finish ({', '.join(report['pending'])}): the last shard to finish writes the table")
        return 0
    print(format_table(report))
    print(f"wrote {os.path.join(args.out, 'table.md')}, results.json, accuracy_vs_params.png")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from ..engine.train_config import load_train_config
    from ..engine.trainer import train

    extra = {"data": args.data, "genotype": args.genotype, "teacher": args.teacher, "kd": args.kd,
             "teacher_arch": args.teacher_arch, "teacher_input_norm": args.teacher_input_norm,
             "precision": args.precision}
    if args.save_every_epoch:
        extra["save_every_epoch"] = True
    if args.skip_bad:
        extra["skip_bad"] = True
    cfg = load_train_config(args.config, args.set or [], extra, resume_from=args.out if args.resume else None)
    history = train(cfg, args.out, resume=args.resume, overwrite=args.overwrite)
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


def _cmd_prune(args: argparse.Namespace) -> int:
    from ..compress import run as crun
    from ..models import load_model

    model = load_model(args.model, args.arch, args.pretrained)
    recipe = crun.checkpoint_recipe(args.model) if args.finetune_epochs else None
    head = None
    if args.finetune_epochs and args.head != "none":
        head = args.head or crun.training_checkpoint(args.model)
    if args.sweep:
        methods = args.methods or PRUNERS.names()
        crun.sweep(model, methods, args.rates, args.data, args.out, args.finetune_epochs, args.teacher,
               args.bin, args.set or [], export=not args.no_export, recipe=recipe, head=head,
               overwrite=args.overwrite)
        print(open(os.path.join(args.out, "sweep.md"), encoding="utf-8").read())
        print(f"wrote {os.path.join(args.out, 'sweep.md')}, sweep.json" + (", sweep.png" if args.bin else ""))
        return 0
    if not args.method or args.rate is None:
        raise InputError("give --method and --rate (or --sweep)")
    r = crun.prune_one(model, args.method, args.rate, args.data, args.out, args.finetune_epochs, args.teacher,
                       args.bin, args.set or [], export=not args.no_export, recipe=recipe, head=head,
               overwrite=args.overwrite)

    def pct(v):
        return "-" if v is None else f"{100 * v:.2f} %"

    print(f"{args.method} at rate {args.rate:g}: achieved {r['achieved_rate']:.3f} (counting zeros: "
          f"{r['remaining']:,} of {r['prunable']:,} prunable weights left; whole model {r['model_rate']:.2f}); "
          f"left dense: {', '.join(r['dense'])}")
    print(f"accuracy: before {pct(r['accuracy_before'])}, pruned {pct(r['accuracy_pruned'])}, fine-tuned "
          f"{pct(r['accuracy_finetuned'])}; model: {r['model']}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from ..compress import run as crun
    from ..models import load_model

    model = load_model(args.model, args.arch, args.pretrained)
    r = crun.export_model(model, args.format, args.out, args.calib, args.bin, args.int8_mode, args.opset)
    p = r["parity"]
    print(f"wrote {r['path']} ({args.format}); parity with PyTorch on {p.get('images', 64)} face crops: max abs "
          f"diff {p['max_abs_diff']:.2e}, min cosine {p['min_cosine']:.7f}")
    for key in ("fp32", "int8"):
        if key in r:
            c = r[key]
            print(f"  {key}: {c['size_mb']:.2f} MB ({c['gzip_mb']:.2f} gzipped), ONNX Runtime batch 1: "
                  f"{c['latency_ms_1thread']:.1f} ms (1 thread), {c['latency_ms_2threads']:.1f} ms (2 threads)")
    if "int8_vs_fp32" in r:
        print(f"  int8 ({r['int8_mode']}) against PyTorch: mean cosine {r['int8_vs_fp32']['mean_cosine']:.5f}")
    for k, v in r.get("verification", {}).items():
        print(f"  {v['set']} accuracy, {k}: {100 * v['accuracy_mean']:.2f} % +- {100 * v['accuracy_std']:.2f}")
    if args.json:
        from ..evaluation.run import write_json

        write_json(args.json, r)
    return 0


def _embedder(args: argparse.Namespace):
    from ..config import check_device, resolve_device
    from ..models.embedders import load_embedder

    device = getattr(args, "device", "cpu")
    check_device(device, "--device")  # before the model is read: a CUDA device this machine lacks is refused
    device = resolve_device(device)
    return load_embedder(args.model, arch=args.arch, pretrained=args.pretrained, input_norm=args.input_norm,
                         device=device, threads=args.threads, engine=getattr(args, "engine", "torch"))


def _cmd_eval(args: argparse.Namespace) -> int:
    from ..evaluation import run

    if args.eval_command is None:
        if not args.config:
            raise InputError("pocketnas eval: give --config NAME|FILE --model M, or a command (verify, pairs, ijb, "
                             "cost, compare)")
        return _cmd_eval_config(args)
    if args.config:
        raise InputError("pocketnas eval: --config goes without a command (pocketnas eval --config NAME --model M)")

    if args.eval_command == "compare":
        points = run.compare_results(args.results, args.out, args.set)
        for p in points:
            print(f"{p['name']}: {p['set']} {100 * p['accuracy']:.2f} %, {p['params']:,} params, "
                  f"{p['mflops']:.1f} MFLOPs")
        print(f"wrote {args.out}")
        if args.json:
            run.write_json(args.json, {"points": points, "plot": args.out})
        return 0

    import torch

    torch.set_num_threads(args.threads)
    embedder = _embedder(args)
    meta = {"model": embedder.name, "input_norm": embedder.input_norm, "threads": args.threads,
            "engine": embedder.engine, "device": str(getattr(embedder, "device", "cpu"))}
    if args.eval_command == "cost":
        cost = run.model_cost(embedder, threads=args.threads)
        from ..evaluation.cost import CostReport, format_cost_table

        fields = {k: v for k, v in cost.items() if k in CostReport.__dataclass_fields__}
        print(format_cost_table([CostReport(**{"input_size": embedder.input_size, **fields})]))
        if args.json:
            run.write_json(args.json, {run.META_KEY: {**meta, "cost": cost}})
        return 0
    if args.eval_command == "verify":
        if args.record_threshold:  # checked before the work: it must be a pocketnas checkpoint
            from ..models.checkpoint import read_checkpoint

            read_checkpoint(args.model)
        results = run.verify_bins(embedder, args.bin, flip=not args.no_flip, batch_size=args.batch_size)
        print(run.format_verify_table(results))
        if args.record_threshold:
            record = run.record_threshold(args.model, results)
            print(f"recorded in {args.model}: cosine threshold {record['cosine_threshold']:.4f} "
                  f"({record['set']}, {100 * record['accuracy']:.2f} %)")
        curves = {stem: (r["roc_fpr"], r["roc_tpr"]) for stem, r in results.items()}
    elif args.eval_command == "pairs":
        r = run.verify_folder(embedder, args.folder, args.pairs, args.folds, args.seed, flip=not args.no_flip,
                              batch_size=args.batch_size)
        stem = os.path.basename(os.path.normpath(args.folder))
        results = {stem: r}
        print(run.format_verify_table(results))
        print("TAR at FAR: " + ", ".join(f"{k}: {100 * v:.2f} %" for k, v in r["tar_at_far"].items()))
        curves = {stem: r.pop("roc_full")}
    else:  # ijb
        results, curves = run.verify_ijb(embedder, args.root, args.target, flip=not args.no_flip,
                                         batch_size=args.batch_size)
        r = results[args.target.lower()]
        print(f"{args.target}: {r['templates']} templates, {r['pairs']} pairs; AUC {r['auc']:.4f}, "
              f"EER {100 * r['eer']:.2f} %")
        print("TAR at FAR: " + ", ".join(f"{k}: {100 * v:.2f} %" for k, v in r["tar_at_far"].items()))
    meta = run.finish_report(embedder, results, curves, meta, cost=args.cost and not args.no_cost,
                             latency=not args.no_latency,
                             threads=args.threads, plots=args.plots, json_path=args.json)
    if meta.get("plots"):
        print(f"plots: {', '.join(meta['plots'])}")
    if args.json:
        print(f"wrote {args.json}")
    return 0


CELL_PNGS = ("normal.png", "reduce.png")
RUN_OVERWRITE_HELP = "replace a previous run in OUT (what pocketnas wrote there)"
PACK_FILES = ("train.rec", "train.idx", "property", "identities.txt")


def _plots_output(args: argparse.Namespace) -> List[Output]:
    """An evaluation's ROC and DET pictures: --plots, or a folder beside --json."""
    folder = args.plots or (os.path.splitext(args.json)[0] + "_plots" if args.json else None)
    return [Output(folder, "--plots", ("roc.png", "det.png"))] if folder else []


def _int8_sibling(args: argparse.Namespace) -> List[Output]:
    """``export --format onnx-int8`` also keeps the float32 model beside the int8 one."""
    if args.format != "onnx-int8":
        return []
    return [Output(os.path.splitext(args.out)[0] + ".fp32.onnx", "--out (its float32 sibling)")]


def _contact_sheet_default(args: argparse.Namespace) -> List[Output]:
    if args.out:
        return []
    return [Output(f"{os.path.basename(os.path.normpath(args.path))}_contact.png", "--out (default)")]


MODEL_HELP = "registry name, pocketnas checkpoint, backbone.pth (with --arch) or .onnx file"


def _eval_config_names():
    from ..config import packaged_yaml_names

    return packaged_yaml_names("eval")


def _cmd_eval_config(args: argparse.Namespace) -> int:
    from ..evaluation import run
    from ..evaluation.config import load_eval_config, run_eval_config
    from ..models.embedders import load_embedder

    if not args.config_model:
        raise InputError("pocketnas eval --config needs --model")
    cfg = load_eval_config(args.config, args.eval_set or [])  # every set checked before the model is loaded
    embedder = load_embedder(args.config_model, arch=args.config_arch, pretrained=args.config_pretrained,
                             input_norm=args.config_input_norm, engine="auto")
    results = run_eval_config(embedder, cfg)
    print(run.format_verify_table({k: r for k, r in results.items() if "accuracy_mean" in r}))
    for name, r in results.items():
        if "tar_at_far" in r:
            print(f"{name}: AUC {r['auc']:.4f}; TAR at FAR: "
                  + ", ".join(f"{k}: {100 * v:.2f} %" for k, v in r["tar_at_far"].items()))
    if args.config_json:
        run.write_json(args.config_json, {**results, run.META_KEY: {"model": embedder.name, "config": args.config,
                                                                     "input_norm": embedder.input_norm}})
        print(f"wrote {args.config_json}")
    return 0


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--pretrained", help="weights for a registry name")
    p.add_argument("--arch", help="architecture of a bare backbone.pth")
    p.add_argument("--input-norm", choices=["arcface", "raw255"],
                   help="input normalisation of an ONNX model without pocketnas metadata")
    p.add_argument("--threads", type=positive_int, default=max(1, os.cpu_count() or 1),
                   help="CPU threads (default: the CPU count)")
    p.add_argument("--device", default="auto", help="where a PyTorch model embeds: auto (the first CUDA device when "
                   "there is one, else the CPU), cpu, cuda, cuda:N")


def _cmd_release(args: argparse.Namespace) -> int:
    from ..evaluation.release import release_weights
    from ..evaluation.run import write_json

    r = release_weights(args.model, args.out, args.bin, fp16=not args.fp32)
    for name, v in r["results"].items():
        print(f"{name}: {100 * v['accuracy']:.2f} % +- {100 * v['accuracy_std']:.2f} (no flip), "
              f"{100 * v['accuracy_flip']:.2f} % (flip), AUC {v['auc']:.4f}, EER {100 * v['eer']:.2f} %, "
              f"cosine threshold {v['threshold_flip']:.4f} (flip)")
    print(f"wrote {r['file']} ({r['storage']}, {r['bytes']:,} bytes)"
          + (f"; float32 because {r['why_float32']}" if r["why_float32"] else ""))
    print(f"sha256 {r['sha256']}")
    print("PretrainedCfg(" + ", ".join(f"{k}={v!r}" for k, v in r["pretrained_cfg"].items()) + ", ...)")
    if args.json:
        write_json(args.json, r)
    return 0


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
    r = verify_photos(_embedder(args), args.a, args.b, threshold, aligned=args.aligned, flip=not args.no_flip)
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
    r = verify_pairs(_embedder(args), pairs, threshold, aligned=args.aligned, flip=not args.no_flip)
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


def _add_eval_output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-flip", action="store_true", help="embed the image only, not also its mirror")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images embedded at once (default 64)")
    p.add_argument("--json", help="write every figure to this JSON file")
    p.add_argument("--plots", help="folder for roc.png and det.png (default: beside --json)")
    p.add_argument("--cost", action="store_true", help="add the model's cost (parameters, MFLOPs, size, and "
                   "latency unless --no-latency: about a minute more) to the report and the JSON file "
                   "(what eval compare plots)")
    p.add_argument("--no-cost", action="store_true", help=argparse.SUPPRESS)  # the default now; kept for scripts
    p.add_argument("--no-latency", action="store_true", help="cost report without timings")
    p.add_argument("--engine", choices=["auto", "torch", "onnxruntime"], default="auto",
                   help="what embeds a PyTorch model: auto (ONNX Runtime on the CPU when installed, exported in "
                        "memory and checked against PyTorch on the first batch; else PyTorch), torch, onnxruntime")


PRECISION_HELP = ("numeric precision of the network's forward pass: auto (default: bf16, or fp16 without bf16, on "
                  "CUDA; fp32 on the CPU, where bf16 measured no faster, docs/performance.md), fp32, bf16, fp16 "
                  "(CUDA); weights, optimiser state, margin and losses stay float32; a resumed run keeps its own")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pocketnas", description="Compact face recognition networks: search, build, "
                                "train, compress, evaluate.")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="how much the log says (DEBUG also shows the traceback of an error)")
    p.add_argument("--version", action="version", version=f"pocketnas {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("models", help="list the model registry")
    s.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'pocketnet*'")
    s.set_defaults(func=_cmd_models)

    s = sub.add_parser("info", help="cost (params, MFLOPs, size, latency) and cells of a model or checkpoint")
    s.add_argument("model", help="registry name, pocketnas checkpoint, or a bare backbone.pth (with --arch)")
    s.add_argument("--arch", help="architecture of a bare state dict (e.g. an original release backbone.pth)")
    s.add_argument("--out", help="folder for the cell diagrams (default pocketnas_info/NAME)")
    s.add_argument("--threads", type=positive_int, default=2, help="CPU threads for the latency measurement "
                                                                  "(default 2)")
    s.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    s.add_argument("--json", help="also write the figures to this JSON file")
    declare(s, CommandIO(inputs=("model",), files=("json",), folders=(("out", CELL_PNGS),)))
    s.set_defaults(func=_cmd_info)

    s = sub.add_parser("genotype", help="validate, convert and draw a genotype (name, .json, or legacy string)")
    s.add_argument("spec", help="a published name (e.g. pocketnet_casia), a genotype.json or a legacy string")
    s.add_argument("--format", choices=["json", "legacy"], default="json",
                   help="how to print it: pocketnas's JSON (default) or the original code's Genotype(...) string")
    s.add_argument("--json", help="write it (with --compare: the figures) as JSON to this file")
    s.add_argument("--draw", help="write normal.png and reduce.png into this folder")
    s.add_argument("--compare", metavar="OTHER", help="print how far OTHER differs from it (shared edges, inputs, "
                   "operations per cell; --json writes the figures) instead of printing it")
    declare(s, CommandIO(inputs=("spec", "compare"), files=("json",), folders=(("draw", CELL_PNGS),)))
    s.set_defaults(func=_cmd_genotype)

    s = sub.add_parser("data", help="pack folders into RecordIO, make pairs .bin files, inspect data")
    dsub = s.add_subparsers(dest="data_command", required=True)
    d = dsub.add_parser("pack", help="image folder (root/<identity>/<image>) -> train.rec/.idx/property")
    d.add_argument("folder", help="aligned faces as FOLDER/<identity>/<image>")
    d.add_argument("out_dir", help="where train.rec, train.idx, property and identities.txt go")
    d.add_argument("--size", type=size_or_keep, default=112, help="resize to SIZE x SIZE (0: keep)")
    d.add_argument("--quality", type=jpeg_quality, default=95, help="JPEG quality")
    d.add_argument("--workers", type=positive_int, default=max(1, os.cpu_count() or 1),
                   help="threads encoding images (default: the CPU count)")
    declare(d, CommandIO(inputs=("folder",), must_exist=("folder",), folders=(("out_dir", PACK_FILES),)))
    d = dsub.add_parser("subset", help="a labelled pack -> a pack of its first N identities (or N drawn with --seed)")
    d.add_argument("pack", help="a labelled RecordIO pack (folder with train.rec, or a .rec)")
    d.add_argument("out_dir", help="where the new pack goes (never the source pack)")
    d.add_argument("--identities", type=positive_int, required=True, help="how many identities to keep")
    d.add_argument("--seed", type=nonnegative_int, help="draw the identities at random with this seed (default: the "
                                                         "first N)")
    declare(d, CommandIO(inputs=("pack",), must_exist=("pack",),
                         folders=(("out_dir", PACK_FILES[:3] + ("subset.txt",)),)))
    d = dsub.add_parser("pairs", help="image folder -> verification pairs .bin (10 folds, seeded)")
    d.add_argument("folder", help="aligned faces as FOLDER/<identity>/<image> (e.g. people held out of training)")
    d.add_argument("out", help="the .bin file to write (insightface's format, as lfw.bin)")
    d.add_argument("--pairs", type=positive_int, default=600, help="pairs in all, half genuine (default 600, a "
                                                                      "multiple of 2 x folds)")
    d.add_argument("--folds", type=positive_int, default=10, help="folds of the 10-fold protocol (default 10)")
    d.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the pair draw (default 0)")
    d.add_argument("--size", type=size_or_keep, default=112, help="resize to SIZE x SIZE (0: keep)")
    d.add_argument("--workers", type=positive_int, default=max(1, os.cpu_count() or 1),
                   help="threads encoding images (default: the CPU count)")
    declare(d, CommandIO(inputs=("folder",), must_exist=("folder",), files=("out",)))
    d = dsub.add_parser("inspect", help="identities, images, per-identity histogram, contact sheet PNG")
    d.add_argument("path", help="a RecordIO folder or .rec, a .bin, or an image folder")
    d.add_argument("--out", help="contact sheet PNG (default NAME_contact.png)")
    d.add_argument("--samples", type=positive_int, default=32, help="faces on the contact sheet (default 32)")
    d.add_argument("--json", help="also write the summary to this JSON file")
    declare(d, CommandIO(inputs=("path",), must_exist=("path",), files=("out", "json"), extra=_contact_sheet_default))
    s.set_defaults(func=_cmd_data)

    s = sub.add_parser("search", help="DARTS cell search on face images -> genotype.json, cell PNGs")
    s.add_argument("--space", default="pocketnet", help="search-space YAML (or a built-in name: pocketnet, darts)")
    s.add_argument("--data", help="RecordIO pack (folder or .rec) or image folder")
    s.add_argument("--out", required=True, help="run folder (checkpoint.pt, genotype.json, cells/, tb/, log.txt)")
    s.add_argument("--config", help="optional YAML of search settings: a file, or a packaged name (e.g. "
                                    "search_cpu_celeba295); the space's defaults apply first")
    s.add_argument("--budget-params", help="steer the derived final network towards this many parameters, "
                   "e.g. 1.0M")
    s.add_argument("--budget-flops", help="... or towards this many FLOPs, e.g. 600M")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a setting (repeatable)")
    s.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    s.add_argument("--skip-bad", action="store_true", help="leave damaged records out (counted in the log) instead "
                   "of refusing the data")
    s.add_argument("--overwrite", action="store_true", help=RUN_OVERWRITE_HELP)
    s.add_argument("--method", choices=SEARCH_METHODS.names(), default="darts",
                   help="darts (default); random: genotypes drawn uniformly in the budget window; zero-cost: the "
                        "best of --candidates random genotypes by a training-free proxy")
    s.add_argument("--count", type=positive_int, default=5, help="(random, zero-cost) genotypes to write")
    s.add_argument("--candidates", type=positive_int, default=100, help="(zero-cost) random genotypes to score")
    s.add_argument("--proxy", default="naswot", choices=PROXIES.names(),
                   help="(zero-cost) the proxy that picks")
    s.add_argument("--budget-tolerance", type=fraction, default=0.05,
                   help="(random, zero-cost) the budget window, a fraction of the target (default 0.05)")
    s.add_argument("--precision", choices=PRECISIONS, help=PRECISION_HELP)
    declare(s, CommandIO(inputs=("data",), must_exist=("data",), run_folder="out"), overwrite=False)
    s.set_defaults(func=_cmd_search)

    s = sub.add_parser("nas-eval", help="train genotypes under one recipe with several seeds: table, plot, "
                                        "proxy rank correlations")
    s.add_argument("genotypes", nargs="+", help="genotype files, candidates.json of a random/zero-cost search, or "
                                                "published names (pocketnet_casia)")
    s.add_argument("--data", required=True, help="training data: RecordIO pack (folder or .rec) or image folder")
    s.add_argument("--bin", action="append", required=True, help="a .bin set (repeatable; the first is the table's)")
    s.add_argument("--out", required=True, help="study folder: one run per genotype and seed, table.md, "
                   "results.json, accuracy_vs_params.png (resumable: finished runs are kept)")
    s.add_argument("--seeds", type=nonnegative_int, nargs="+", default=[0, 1], help="training seeds of every "
                   "genotype (default 0 1)")
    s.add_argument("--config", help="the training recipe every genotype shares (a file or a packaged name)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe value (repeatable)")
    s.add_argument("--flip", action="store_true", help="evaluate with the flip test")
    s.add_argument("--proxies", nargs="+", default=PROXIES.names(), choices=PROXIES.names(),
                   help="zero-cost proxies scored for every genotype (one setting: the recipe's network, 64 faces "
                        "of --data) for the rank correlations")
    s.add_argument("--no-proxies", action="store_true",
                   help="score nothing: correlate the scores stored in candidates.json files only")
    s.add_argument("--shard", default="0/1", metavar="K/N",
                   help="train only the runs whose index is K modulo N, so that N processes (or machines) share "
                        "one study; the last to finish writes the table")
    s.add_argument("--precision", choices=PRECISIONS, help=PRECISION_HELP)
    declare(s, CommandIO(inputs=("data", "bin"), must_exist=("data", "bin"), run_folder="out"), overwrite=False)
    s.set_defaults(func=_cmd_nas_eval)

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

    s = sub.add_parser("eval", help="verification accuracy (LFW-family .bin, IJB, any folder) and cost",
                       description="pocketnas eval --config NAME|FILE --model M: every set of an evaluation "
                                   "configuration (packaged: " + ", ".join(_eval_config_names()) + "); or one of "
                                   "the commands below")
    s.add_argument("--config", help="an evaluation configuration: a YAML file or a packaged name (eval/)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", dest="eval_set",
                   help="override a value of --config (e.g. root=/data/faces_emore)")
    s.add_argument("--model", dest="config_model", metavar="MODEL", help="(with --config) " + MODEL_HELP)
    s.add_argument("--pretrained", dest="config_pretrained", metavar="FILE",
                   help="(with --config) weights for a registry name")
    s.add_argument("--arch", dest="config_arch", metavar="ARCH",
                   help="(with --config) architecture of a bare backbone.pth")
    s.add_argument("--input-norm", dest="config_input_norm", choices=["arcface", "raw255"],
                   help="(with --config) input normalisation of an ONNX model without pocketnas metadata")
    s.add_argument("--json", dest="config_json", metavar="FILE", help="(with --config) write the results as JSON")
    declare(s, CommandIO(inputs=("config_model",), files=("config_json",),
                         labels={"config_json": "--json", "config_model": "--model"}))
    esub = s.add_subparsers(dest="eval_command")
    e = esub.add_parser("verify", help="insightface 10-fold protocol on .bin sets")
    _add_model_args(e)
    e.add_argument("--bin", action="append", required=True, help="a .bin set (repeatable)")
    e.add_argument("--record-threshold", action="store_true", help="write the first set's decision threshold into "
                   "the pocketnas checkpoint given as --model (what pocketnas verify decides with)")
    _add_eval_output_args(e)
    declare(e, CommandIO(inputs=("model", "bin"), must_exist=("bin",), files=("json",), extra=_plots_output))
    e = esub.add_parser("pairs", help="genuine/impostor pairs of FOLDER/<identity>/<image>: EER, TAR@FAR, accuracy")
    e.add_argument("folder", help="aligned faces as FOLDER/<identity>/<image>")
    _add_model_args(e)
    e.add_argument("--pairs", type=positive_int, default=600, help="pairs drawn, half genuine (default 600)")
    e.add_argument("--folds", type=positive_int, default=10, help="folds of the protocol (default 10)")
    e.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the pair draw (default 0)")
    _add_eval_output_args(e)
    declare(e, CommandIO(inputs=("model", "folder"), must_exist=("folder",), files=("json",), extra=_plots_output))
    e = esub.add_parser("ijb", help="IJB-B/IJB-C 1:1 template verification, TAR at FAR 1e-6..1e-1")
    _add_model_args(e)
    e.add_argument("--root", required=True, help="folder with meta/ and loose_crop/")
    e.add_argument("--target", default="IJBC", choices=["IJBB", "IJBC"], help="which benchmark (default IJBC)")
    _add_eval_output_args(e)
    declare(e, CommandIO(inputs=("model", "root"), must_exist=("root",), files=("json",), extra=_plots_output))
    e = esub.add_parser("cost", help="parameters, MFLOPs, size, latency and throughput (PyTorch and ONNX Runtime)")
    _add_model_args(e)
    e.add_argument("--json", help="write the cost report to this JSON file")
    declare(e, CommandIO(inputs=("model",), files=("json",)))
    e = esub.add_parser("compare", help="plot accuracy against parameters and FLOPs for several eval JSON files")
    e.add_argument("results", nargs="+", help="JSON files written by pocketnas eval verify --json")
    e.add_argument("--set", help="which set to plot (default: the first in each file)")
    e.add_argument("--out", default="tradeoff.png", help="the plot to write (default tradeoff.png)")
    e.add_argument("--json", help="also write the plotted points to this JSON file")
    declare(e, CommandIO(inputs=("results",), must_exist=("results",), files=("out", "json")))
    s.set_defaults(func=_cmd_eval)

    s = sub.add_parser("prune", help="unstructured pruning at a compression rate, fine-tuning, sweeps")
    s.add_argument("--model", required=True, help="pocketnas checkpoint, registry name (--pretrained) or backbone.pth")
    s.add_argument("--arch", help="architecture of a bare backbone.pth")
    s.add_argument("--pretrained", help="weights for a registry name")
    s.add_argument("--method", choices=PRUNERS.names(), help="the pruning method (with --rate)")
    s.add_argument("--rate", type=compression_rate, help="compression rate: prunable parameters / remaining "
                                                          "non-zeros")
    s.add_argument("--data", required=True, help="face data for gradient scores and fine-tuning")
    s.add_argument("--out", required=True, help="run folder (model.pt, report.json; a sweep: sweep.md, .json, .png)")
    s.add_argument("--finetune-epochs", type=nonnegative_int, default=0, help="fine-tuning epochs after pruning, "
                   "the masks held (default 0: none)")
    s.add_argument("--teacher", help="distil from this model while fine-tuning (e.g. the unpruned checkpoint)")
    s.add_argument("--head", help="a training run's checkpoint.pt whose margin head fine-tuning starts from "
                                  "(default: the checkpoint.pt beside --model, if any; 'none': a fresh head)")
    s.add_argument("--bin", help="a .bin set to report verification accuracy on")
    s.add_argument("--sweep", action="store_true", help="every --methods at every --rates, as a table and a plot")
    s.add_argument("--methods", nargs="+", choices=PRUNERS.names(), help="(--sweep) methods to compare (default: all)")
    s.add_argument("--rates", nargs="+", type=compression_rate, default=[2, 4, 8, 16],
                   help="(--sweep) compression rates to compare (default 2 4 8 16)")
    s.add_argument("--no-export", action="store_true", help="skip the ONNX export and its cost")
    s.add_argument("--overwrite", action="store_true", help=RUN_OVERWRITE_HELP)
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="fine-tuning settings (train config keys)")
    declare(s, CommandIO(inputs=("model", "data", "bin", "teacher", "head"), must_exist=("data", "bin"),
                         run_folder="out"), overwrite=False)
    s.set_defaults(func=_cmd_prune)

    s = sub.add_parser("export", help="ONNX (checked against PyTorch on face crops), int8, TorchScript")
    s.add_argument("--model", required=True, help=MODEL_HELP.replace(" or .onnx file", ""))
    s.add_argument("--arch", help="architecture of a bare backbone.pth")
    s.add_argument("--pretrained", help="weights for a registry name")
    s.add_argument("--format", choices=["onnx", "onnx-int8", "torchscript"], default="onnx",
                   help="onnx (default), onnx-int8 (also keeps OUT's .fp32.onnx), torchscript")
    s.add_argument("--out", required=True, help="the file to write")
    s.add_argument("--calib", help="face crops for the parity check and int8 calibration (folder, pack or .bin; "
                   "default: the bundled faces)")
    s.add_argument("--bin", help="report verification accuracy of PyTorch, fp32 and int8 on this .bin")
    s.add_argument("--int8-mode", choices=["static", "dynamic"], default="static",
                   help="(onnx-int8) static: activations calibrated on face crops (default); dynamic")
    s.add_argument("--opset", type=opset, default=17, help="ONNX opset (default 17)")
    s.add_argument("--json", help="also write the report to this JSON file")
    declare(s, CommandIO(inputs=("model", "pretrained", "calib", "bin"), must_exist=("calib", "bin"),
                         files=("out", "json"), extra=_int8_sibling))
    s.set_defaults(func=_cmd_export)

    s = sub.add_parser("release", help="a trained checkpoint -> the weights file to ship (float16 when verification "
                                       "is unchanged), its measured accuracy and sha256")
    s.add_argument("model", help="a pocketnas checkpoint (a run's model.pt)")
    s.add_argument("out", help="the file to write (e.g. pocketnas/assets/weights/pocketnet_s_128_celeba7k.pt)")
    s.add_argument("--bin", action="append", required=True, help=".bin set(s) to measure on (the first is recorded)")
    s.add_argument("--fp32", action="store_true", help="store float32 even where float16 changes nothing")
    s.add_argument("--json", help="write the report there too")
    declare(s, CommandIO(inputs=("model", "bin"), must_exist=("model", "bin"), files=("out", "json")))
    s.set_defaults(func=_cmd_release)

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
    _add_model_args(s)
    s.add_argument("--threshold", type=cosine, help="cosine threshold in [-1, 1] (default: the one recorded with "
                                                    "the model)")
    s.add_argument("--aligned", action="store_true", help="the photos are aligned crops already (no detection)")
    s.add_argument("--no-flip", action="store_true", help="embed the faces only, not also their mirrors")
    s.add_argument("--save-faces", metavar="DIR", help="write the two aligned faces there (PNG)")
    s.add_argument("--json", help="also write cosine, threshold and decision to this JSON file")
    declare(s, CommandIO(inputs=("a", "b", "model", "pairs", "folder"), must_exist=("a", "b", "pairs", "folder"),
                         files=("json", "out"), folders=(("save_faces", ("a.png", "b.png")),)))
    s.set_defaults(func=_cmd_verify)

    s = sub.add_parser("demo", help="the main job on the bundled ORL faces")
    s.add_argument("--out", default="pocketnas_demo", help="run folder (default pocketnas_demo)")
    s.add_argument("--models", nargs="+", help="registry names (default: the four PocketNets)")
    s.add_argument("--threads", type=positive_int, default=2, help="CPU threads (default 2)")
    s.add_argument("--no-latency", action="store_true", help="skip the latency measurements")
    s.add_argument("--no-pipeline", action="store_true", help="only build/verify/cost, no search-train-evaluate")
    s.add_argument("--overwrite", action="store_true", help=RUN_OVERWRITE_HELP)
    declare(s, CommandIO(run_folder="out"), overwrite=False)
    s.set_defaults(func=_cmd_demo)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    level = getattr(logging, args.log_level)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for handler in logging.getLogger().handlers:  # the console shows --log-level; a run's log.txt keeps INFO
        handler.setLevel(level)
    from ..errors import PocketnasError

    try:
        check_command_io(args)
        return args.func(args)
    except (PocketnasError, OSError) as e:
        if level <= logging.DEBUG or not (isinstance(e, PocketnasError) or e.errno in WRITE_ERRNOS):
            raise  # anything else is a bug: its traceback is what a report needs
        if not isinstance(e, PocketnasError):  # the place refused (full, read-only, ...): not pocketnas's error
            e = write_failure(e.filename or "a file", e)
        command = " ".join(c for c in (args.command, getattr(args, "data_command", None),
                                       getattr(args, "eval_command", None)) if c)
        message = " ".join(line.strip() for line in str(e).splitlines())  # one line, whatever the source wrote
        print(f"pocketnas {command}: error: {message}", file=sys.stderr)
        return 2

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
