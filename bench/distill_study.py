"""The distillation comparison of docs/distillation.md: PocketNetS-128 students on one budget, one row per method.

Every row trains with ``pocketnas train`` on the same data, epochs, batch, schedule, crop size and seed (only the
distillation settings differ), then is evaluated on LFW (10-fold, without and with the flip test, AUC, EER,
student-teacher cosine) from its last checkpoint. Rows already evaluated are skipped; a row whose run was
interrupted resumes. The table is rewritten after every row.

    python bench/distill_study.py --data c2k --bin lfw.bin --teacher sface_fp32.onnx --out runs/study \\
        --rows none,kd100,fm1000,fm1000_nolabel [--torch-teacher runs/t_r18]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

# the budget every row shares (PocketNetS-128 at 56x56 from 112x112 views; the CPU recipe of train/)
COMMON = ["--set", "arch=pocketnet_s_128", "--set", "model_kwargs={input_size: 56}", "--set", "view_size=112",
          "--set", "batch_size=64", "--set", "lr=0.1", "--set", "lr_reference_batch=64", "--set", "warmup_epochs=1",
          "--set", "margin_s=32", "--set", "margin_m=0.3", "--set", "workers=2", "--set", "threads=2"]

# row -> (what it is, extra arguments); {teacher} / {torch_teacher} are filled in
ROWS = {
    "none": ("no distillation (ArcFace)", []),
    "augment": ("no distillation, augmented views (control)", ["--set", "augment=true"]),
    "kd100": ("PocketNet's embedding KD, w=100 (teacher on image and mirror, cached)",
              ["--kd", "embedding", "--teacher", "{teacher}", "--set", "kd_weight=100"]),
    "kd1000": ("embedding KD, w=1000, cached (control for the weight)",
               ["--kd", "embedding", "--teacher", "{teacher}", "--set", "kd_weight=1000"]),
    "fm1000": ("function matching: embedding KD w=1000 on consistent augmented views (a bank of 8 per image) + "
               "ArcFace", ["--kd", "embedding", "--teacher", "{teacher}", "--set", "kd_weight=1000", "--set",
                           "augment=true", "--set", "view_bank=8"]),
    "fm1000_live": ("function matching as fm1000 with a fresh view every step (live teacher in the workers)",
                    ["--kd", "embedding", "--teacher", "{teacher}", "--set", "kd_weight=1000", "--set",
                     "augment=true"]),
    "fm1000_nolabel": ("function matching without labels (teacher only, w=1000, the bank of fm1000)",
                       ["--kd", "embedding", "--teacher", "{teacher}", "--set", "kd_weight=1000", "--set",
                        "augment=true", "--set", "view_bank=8", "--set", "margin_weight=0"]),
    "fm1000_sched": ("fm1000 with a teacher-only phase: the first 2 epochs on the teacher's loss alone, then joint "
                     "with ArcFace (the same bank of views)",
                     ["--kd", "embedding", "--teacher", "{teacher}", "--set", "kd_weight=1000", "--set",
                      "augment=true", "--set", "view_bank=8", "--set", "kd_only_epochs=2"]),
    "fm1000_joint": ("fm1000_sched with the margin head imprinted, as it joins, by the network the teacher-only "
                     "phase trained (Qi et al. 2018)",
                     ["--kd", "embedding", "--teacher", "{teacher}", "--set", "kd_weight=1000", "--set",
                      "augment=true", "--set", "view_bank=8", "--set", "kd_only_epochs=2", "--set",
                      "imprint_at_joint=true"]),
    "fm1000_sp300": ("fm1000 + similarity-preserving KD (w=300) on the same views: the teacher's function and its "
                     "batch similarity structure",
                     ["--kd", "embedding,sp", "--teacher", "{teacher}", "--set", "kd_weight=1000", "--set",
                      "sp_weight=300", "--set", "augment=true", "--set", "view_bank=8"]),
    "rkd": ("relational KD (RKD distance + angle) + ArcFace, cached",
            ["--kd", "rkd", "--teacher", "{teacher}"]),
    "sp": ("similarity-preserving KD + ArcFace, cached", ["--kd", "sp", "--teacher", "{teacher}"]),
    "sp300": ("similarity-preserving KD at a tenth of Tung and Mori's weight (300) + ArcFace, cached",
              ["--kd", "sp", "--teacher", "{teacher}", "--set", "sp_weight=300"]),
    "ms_last": ("embedding KD w=100 from the iResNet-18 teacher's last checkpoint",
                ["--kd", "embedding", "--teacher", "{torch_teacher}/model.pt", "--set", "kd_weight=100"]),
    "ms_multi": ("multi-step KD w=100: epoch e from the iResNet-18 teacher's epoch e",
                 ["--kd", "multistep", "--teacher", "{torch_teacher}", "--set", "kd_weight=100"]),
    "hint_se": ("feature (hint) KD with squeeze-excitation from the iResNet-18 teacher + ArcFace",
                ["--kd", "feature", "--teacher", "{torch_teacher}/model.pt", "--set", "se=true", "--set",
                 "hint_layers=[[cells.5, layer2], [cells.11, layer3]]"]),
}


def run_row(name: str, args: argparse.Namespace) -> dict:
    out = os.path.join(args.out, name)
    desc, extra = ROWS[name]
    if "{teacher}" in extra and args.teacher.endswith(".onnx"):  # the ONNX teacher declares no normalisation
        extra = extra + ["--teacher-input-norm", args.teacher_input_norm]
    extra = [a.format(teacher=args.teacher, torch_teacher=args.torch_teacher) for a in extra]
    if "{teacher}" in ROWS[name][1]:  # rows with one teacher and one view transform share its embeddings
        extra = extra + ["--set", f"teacher_cache_dir={os.path.join(args.out, 'teacher_cache')}"]
    cmd = ["pocketnas", "train", "--data", args.data, "--out", out, *COMMON, "--set", f"epochs={args.epochs}",
           "--set", f"milestones=[{args.epochs - 1}]", "--set", f"seed={args.seed}", *extra]
    resume = os.path.isfile(os.path.join(out, "checkpoint.pt"))
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "pocketnas.cli", *cmd[1:], *(["--resume"] if resume else [])], check=True)
    minutes = (time.time() - t0) / 60
    return {"row": name, "what": desc, "command": " ".join(cmd), "train_minutes_this_process": minutes,
            "resumed": resume}


def teacher_embeddings(args: argparse.Namespace):
    """The fixed teacher's embeddings of the test set's images, computed once per study (saved beside the rows)."""
    import numpy as np

    from pocketnas.data.binfile import read_bin
    from pocketnas.models.checkpoint import file_digest
    from pocketnas.models.embedders import embed_images, load_embedder

    path = os.path.join(args.out, f"teacher_{file_digest(args.teacher)[:12]}_{file_digest(args.bin)[:12]}.npy")
    if os.path.isfile(path):
        return np.load(path)
    teacher = load_embedder(args.teacher, input_norm=args.teacher_input_norm, threads=2)
    images, _ = read_bin(args.bin, size=teacher.input_size, progress=False)
    emb = embed_images(teacher, images, 64, flip=False, progress=False)
    np.save(path, emb)
    return emb


def epoch_minutes(out: str) -> list:
    """Each epoch's minutes as the run's log timed them ("epoch e/E: ... (M min so far)")."""
    with open(os.path.join(out, "log.txt"), encoding="utf-8") as f:
        so_far = [float(line.split("(")[-1].split(" min")[0]) for line in f if " min so far)" in line]
    return [b - a for a, b in zip([0.0] + so_far[:-1], so_far)]


def evaluate_row(name: str, args: argparse.Namespace, info: dict) -> dict:
    import torch

    import pocketnas
    from pocketnas.evaluation.run import verification_report, write_json
    from pocketnas.models.embedders import TorchEmbedder

    torch.set_num_threads(2)
    out = os.path.join(args.out, name)
    student = TorchEmbedder(pocketnas.load(os.path.join(out, "model.pt")), name=name)
    report = verification_report(student, args.bin, teacher_embeddings=teacher_embeddings(args), progress=False)
    report["teacher"] = os.path.basename(args.teacher)
    state = torch.load(os.path.join(out, "checkpoint.pt"), map_location="cpu", weights_only=True)
    minutes = epoch_minutes(out)
    result = {**info, "epochs": int(state["epoch"]), "steps": int(state["step"]),
              "train_minutes": sum(minutes) if minutes else None,
              "fastest_epoch_minutes": min(minutes) if minutes else None, "lfw": report}
    write_json(os.path.join(out, "eval.json"), result)
    return result


def table(results: list, out: str = "") -> str:
    lines = ["| row | what | epochs | min/epoch | LFW % (no flip) | LFW % (flip) | AUC | EER % | cos to SFace |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lf = r["lfw"]
        nf, fl = lf["no_flip"], lf["flip"]
        cos = lf.get("teacher_cosine_mean")
        fastest = r.get("fastest_epoch_minutes")
        if fastest is None and out and os.path.isfile(os.path.join(out, r["row"], "log.txt")):
            fastest = min(epoch_minutes(os.path.join(out, r["row"])), default=None)
        lines.append(f"| {r['row']} | {r['what']} | {r['epochs']} | {'-' if fastest is None else f'{fastest:.1f}'} | "
                     f"{100 * nf['accuracy_mean']:.2f} +- {100 * nf['accuracy_std']:.2f} | "
                     f"{100 * fl['accuracy_mean']:.2f} | {nf['auc']:.4f} | {100 * nf['eer']:.2f} | "
                     f"{'-' if cos is None else f'{cos:.3f}'} |")
    lines += ["", "min/epoch: the fastest epoch of the run as its log timed it (the machine is shared: slower epochs "
              "had other work beside them).", "",
              "Commands (each row; `bench/distill_study.py` runs them, then evaluates the last checkpoint):", ""]
    lines += [f"- `{r['row']}`: `{r['command']}`" for r in results]
    return "\n".join(lines)


def draw_views(data: str, out_png: str, indices=(3, 500, 2100), views: int = 7) -> None:
    """A contact sheet: each row an aligned face of ``data`` and ``views`` of its augmented views."""
    import numpy as np
    from PIL import Image

    from pocketnas.data.views import FaceViewAugment
    from pocketnas.data.face_sets import open_face_dataset

    faces, aug = open_face_dataset(data), FaceViewAugment()
    rows = []
    for idx in indices:
        image, _ = faces.sample_uint8(idx)
        tiles = [image] + [aug(image, np.random.default_rng([0, idx, k])) for k in range(views)]
        rows.append(np.concatenate([t.transpose(1, 2, 0) for t in tiles], axis=1))
    Image.fromarray(np.concatenate(rows, axis=0)).save(out_png)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--bin", required=True, help="the test set (LFW .bin)")
    p.add_argument("--teacher", required=True, help="the fixed teacher (e.g. sface_fp32.onnx)")
    p.add_argument("--teacher-input-norm", default="raw255")
    p.add_argument("--torch-teacher", default="", help="a pocketnas teacher run trained with --save-every-epoch")
    p.add_argument("--out", required=True)
    p.add_argument("--rows", default="none,kd100,fm1000,fm1000_nolabel")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--draw-views", metavar="PNG", help="only draw a contact sheet of views of --data into PNG")
    args = p.parse_args()
    if args.draw_views:
        draw_views(args.data, args.draw_views)
        return
    os.makedirs(args.out, exist_ok=True)
    for name in args.rows.split(","):
        if name not in ROWS:
            raise SystemExit(f"unknown row {name!r} (rows: {', '.join(ROWS)})")
        done = os.path.join(args.out, name, "eval.json")
        if not os.path.isfile(done):
            info = run_row(name, args)
            evaluate_row(name, args, info)
        results = []
        for row in ROWS:
            path = os.path.join(args.out, row, "eval.json")
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as f:
                    results.append(json.load(f))
        with open(os.path.join(args.out, "table.md"), "w", encoding="utf-8") as f:
            f.write(table(results, args.out) + "\n")
        print(table(results, args.out), flush=True)


if __name__ == "__main__":
    main()
