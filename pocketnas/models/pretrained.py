"""The weights that ship inside the package (``pocketnas/assets/weights/``), as timm's pretrained configurations:
the file, its sha256, what it was trained on and how, and what it measures. ``create_model(name, pretrained=True)``
reads a file after checking its sha256; ``pocketnas release`` writes one and prints the values to put here. pocketnas
never downloads weights. The card of each (data, recipe, figures, limits): docs/pretrained.md.
"""
from __future__ import annotations

from typing import Dict

from .registry import PretrainedCfg

CELEBA_LICENCE = ("weights trained on CelebA images (Liu et al., ICCV 2015; MMLAB, The Chinese University of Hong "
                  "Kong): non-commercial research use only")
CELEBA7K = ("celeba7k: 7,278 CelebA identities, 36,068 images aligned to the ArcFace template (no identity of LFW, "
            "celeba295 or the other evaluation sets)")
SFACE = "SFace (sface_fp32.onnx, 128-d, 99.45 % on LFW), function matching on consistent augmented views, w = 1000"
SFACE_SP = SFACE + ", plus similarity-preserving KD (Tung and Mori 2019) on the same views, w = 300"

SHIPPED: Dict[str, PretrainedCfg] = {
    "pocketnet_s_128": PretrainedCfg(
        file="pocketnet_s_128_celeba7k.pt",
        sha256="e33a2466a8fded9f27c4cc71ec1b8e9682867ca50ef33a0d43b0a9a48de528b7",
        data=CELEBA7K,
        teacher=SFACE,
        recipe=("pocketnas train --config pocketnet_s128_celeba7k_cpu --data celeba7k/ --teacher sface_fp32.onnx "
                "--teacher-input-norm raw255 (3 x 450 steps of 64), then --resume to 6 epochs (a warm restart at lr "
                "0.1, epoch 6 at 0.01), --resume to 7 (300 steps at 0.1, 150 at 0.01), then 250 steps at lr 0.01 "
                "from those weights and margin head (--set init_backbone=... --set init_head=...), then 900 more "
                "the same way (seed 1: 300 at lr 0.1, 600 at 0.01), then 1,500 from those weights with a margin "
                "head imprinted from them (--set init_head=imprint; seed 2: 600 at lr 0.1, 900 at 0.01), then 900 "
                "from the released file the same way with a third learning rate (seed 3, --set epochs=3 --set "
                "milestones=[2,3] --set max_batches_per_epoch=300: 300 at lr 0.1, 300 at 0.01, 300 at 0.001), then 900 "
                "more with that schedule from the next released file (seed 4), then 1,200 from that file at low "
                "rates only (seed 5, --set lr=0.01 --set warmup_epochs=0 --set epochs=4 --set milestones=[3]: 600 at "
                "0.01, 600 at 0.001), then 1,200 more that way from the next released file (seed 6, --set "
                "milestones=[4]: 900 at 0.01, 300 at 0.001), then 300 more that way from the next (seed 7, --set "
                "epochs=2 --set milestones=[2] --set max_batches_per_epoch=150: 150 at 0.01, 150 at 0.001), then "
                "1,200 more from the next (seed 8, --set epochs=4 --set milestones=[4] --set "
                "max_batches_per_epoch=300: 900 at 0.01, 300 at 0.001): 11,500 steps on 2 CPU cores, the last "
                "checkpoint of each stage"),
        input_norm="arcface",
        lfw_accuracy=0.962,
        lfw_accuracy_flip=0.9645,
        paper_lfw_accuracy=0.9958,
        threshold=0.385,
        licence=CELEBA_LICENCE,
        notes=("float32 weights; 736,000 training images (20.4 passes over celeba7k) on a CPU, far from the paper's "
               "26 epochs on MS1MV2: see docs/pretrained.md"),
    ),
    "pocketnet_m_128": PretrainedCfg(
        file="pocketnet_m_128_celeba7k.pt",
        sha256="d67a8d7446d8cfd30ef8d9e77d2d5e6a4501d0481b341242d06854f2de08a389",
        data=CELEBA7K,
        teacher=SFACE_SP,
        recipe=("pocketnas train --config pocketnet_m128_celeba7k_cpu --data celeba7k/ --teacher sface_fp32.onnx "
                "--teacher-input-norm raw255 (601 steps of 64 at lr 0.1 after a 135-step warm-up, stopped in epoch "
                "2), then 600 steps from those weights with a margin head imprinted from them (--set "
                "init_backbone=... --set init_head=imprint --set seed=1 --set warmup_epochs=0.1 --set epochs=3 "
                "--set milestones=[2] --set max_batches_per_epoch=200: 200 at lr 0.1, 400 at 0.01), then 400 more "
                "the same way from the released file (seed 2: 200 at lr 0.1, 200 at 0.01, stopped after epoch 2), "
                "then 350 more (seed 3, max_batches_per_epoch=220: 220 at lr 0.1, 130 at 0.01, stopped at a "
                "checkpoint), then 350 more (seed 4, max_batches_per_epoch=200: 200 at lr 0.1, 150 at 0.01, stopped "
                "at a checkpoint), then 350 more the same way (seed 5), then 450 more with a low-learning-rate "
                "schedule (seed 6, --set lr=0.01 --set warmup_epochs=0 --set milestones=[3] --set "
                "max_batches_per_epoch=150: 300 at lr 0.01, 150 at 0.001): 3,101 steps on 2 CPU cores, the last "
                "checkpoint of each stage"),
        input_norm="arcface",
        lfw_accuracy=0.9475,
        lfw_accuracy_flip=0.94917,
        paper_lfw_accuracy=0.9965,
        threshold=0.374,
        licence=CELEBA_LICENCE,
        notes=("float32 weights; 198,464 training images (5.5 passes over "
               "celeba7k) on a CPU, far from the paper's 26 epochs on MS1MV2: see docs/pretrained.md"),
    ),
}
