"""The training loop behind ``pocketnas train``: margin loss, knowledge distillation, exact resume, torchrun.

Writes into the run folder: ``checkpoint.pt`` (everything needed to continue: backbone, head, distillation
modules, optimizer, scheduler, RNG states, epoch, batch, step, config; written atomically), ``model.pt`` (the
self-describing backbone that ``pocketnas.load`` reads), ``epochs/epoch_NNN.pt`` with ``save_every_epoch``,
``tb/`` (TensorBoard), ``log.txt`` and ``config.yaml``.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..config import ConfigError, config_from_dict
from ..data.transforms import fit_size, normalize
from ..image_size import HW, as_hw, hw_text, input_hw, px_text, recorded
from ..losses.distill import DISTILL_LOSSES
from ..losses.heads import MarginHead
from ..losses.margins import build_margin
from ..metrics.verification import verification_record
from ..errors import DivergedError, MissingFileError
from ..models.checkpoint import atomic_torch_save, check_finite_state, read_state, save
from ..models.embedders import TorchEmbedder, model_embedder
from ..models import create_model
from ..models.features import FeatureTap, feature_channels
from . import distributed as dist_utils
from .precision import autocast, float32_region, needs_loss_scaling, resolve_precision
from .process import configure_process
from .callbacks import STOP, Callback, default_callbacks
from .run import Run, run_to_end
from .run_state import (STATE_VERSION, TRAIN_STATE, check_resume, keep_precision, rng_state, seed_everything,
                        set_rng_state)
from ..data.face_sets import open_face_dataset
from .sampling import EpochBatchSampler, TrainSamples, ViewBatches
from .teacher_bank import TeacherBank, bank_is_complete, bank_key, build_teacher_bank
from .teachers import (FixedTeacher, LiveTeacher, MultiStepTeacher, TeacherCache, build_fixed_teacher, cache_key,
                       hint_layers_of, shared_cache_folder, teacher_fingerprint)
from .train_config import TrainConfig, recipe_of

# verifier(embedder, bins, flip=..., progress=...) -> {set stem: results}: evaluation.validation.verify_bins
BinVerifier = Callable[..., Dict[str, Dict[str, Any]]]

logger = logging.getLogger(__name__)


def view_hw(setting: int, student: HW, teacher: Optional[HW]) -> HW:
    """The (height, width) training views are cut at: ``view_size`` when set (a side, for square inputs), else the
    student's input, or the larger square where a square teacher takes another side (each then resizes the view
    to its own input). A teacher and a student of different aspects cannot share a view: refused."""
    if setting:
        if student[0] != student[1]:
            raise ConfigError(f"view_size: {setting} is a square side, but the network takes {hw_text(student)} "
                              f"inputs; leave view_size at 0 (views are cut at the network's own size)")
        return setting, setting
    if teacher is None or teacher == student:
        return student
    if student[0] == student[1] and teacher[0] == teacher[1]:
        side = max(student[0], teacher[0])
        return side, side
    raise ConfigError(f"the teacher takes {hw_text(teacher)} inputs and the student {hw_text(student)}: "
                      f"distillation shows both the same view, so their aspects must match (train the teacher "
                      f"on the same crops, e.g. `pocketnas data crop --region periocular`)")


def load_backbone_weights(backbone: nn.Module, path: str, arch: str) -> None:
    """Start ``backbone`` from the weights of a pocketnas checkpoint of the same architecture (continued training
    with a new schedule, fine-tuning on other data), or from the weights shipped for ``arch`` (``path`` =
    "pretrained"); a file of another architecture, genotype or size is refused before any work starts."""
    from ..models.checkpoint import load_state_dict_checked, read_checkpoint

    if path == "pretrained":  # the weights that ship with the package for this architecture
        from ..models import model_cfg
        from ..models.factory import registered_weights_path

        path = registered_weights_path(arch, model_cfg(arch))
    record = read_checkpoint(path)
    if record["arch"] != arch:
        raise ConfigError(f"init_backbone {path} holds a {record['arch']}, not this run's {arch}")
    load_state_dict_checked(backbone, record["state_dict"], source=f"init_backbone {path}")
    logger.info("backbone starts from %s (epoch %s of its run)", path, record.get("meta", {}).get("epoch", "?"))


def load_head_weights(head: MarginHead, path: str) -> None:
    """Start ``head`` from the class centres of a ``pocketnas train`` run's ``checkpoint.pt`` (fine-tuning a pruned
    network with a fresh, random head would push the backbone with meaningless gradients)."""
    from ..models.checkpoint import CheckpointError, load_weights_file

    state = load_weights_file(path)
    model = state.get("model") if isinstance(state, dict) and state.get("format") == TRAIN_STATE else None
    if not isinstance(model, dict):
        raise CheckpointError(f"{path}: not a pocketnas training checkpoint (init_head needs a run's checkpoint.pt)")
    found = {k[len("head."):]: v for k, v in model.items() if k.startswith("head.")}
    own = head.state_dict()
    if set(found) != set(own) or any(tuple(found[k].shape) != tuple(own[k].shape) for k in own):
        raise ConfigError(f"{path}: its margin head ({', '.join(f'{k} {tuple(v.shape)}' for k, v in found.items())}) "
                          f"does not fit this run's ({', '.join(f'{k} {tuple(v.shape)}' for k, v in own.items())}): "
                          f"the same identities and embedding size are needed")
    head.load_state_dict(found)
    logger.info("margin head initialised from %s (%d identities)", path, int(own["fc.weight"].shape[0]))


class StudentModule(nn.Module):
    """Backbone + margin head + distillation losses in one module (what DistributedDataParallel wraps).

    ``kd``: embedding-level distillation losses by name (``pocketnas.losses.DISTILL_LOSSES``); ``hint``: the
    feature-map loss, fed by ``hint_names``' outputs. ``head`` is None for a run on the teacher alone."""

    def __init__(self, backbone: nn.Module, head: Optional[MarginHead], kd: Optional[nn.ModuleDict] = None,
                 hint: Optional[nn.Module] = None, hint_names: Optional[List[str]] = None, precision: str = "fp32"):
        super().__init__()
        self.backbone, self.head, self.hint = backbone, head, hint
        self.kd = kd if kd is not None else nn.ModuleDict()
        self.tap = FeatureTap(backbone, hint_names) if hint_names else None
        self.precision = precision

    def forward(self, x, labels, teacher_emb=None, teacher_maps=None, margin_weight: float = 1.0
                ) -> Dict[str, torch.Tensor]:
        with autocast(self.precision, x.device):  # the backbone alone runs in low precision
            emb = self.backbone(x)
        emb = emb.float()
        losses = {}
        with float32_region(x.device):  # margin logits and every loss in float32
            if self.head is not None and margin_weight > 0:
                ce = F.cross_entropy(self.head(emb, labels), labels)
                losses["ce"] = ce if margin_weight == 1 else margin_weight * ce
            if teacher_emb is not None:
                for name, loss in self.kd.items():
                    losses[LOG_NAMES.get(name, name)] = loss(emb, teacher_emb.float())
            if self.hint is not None and teacher_maps is not None:
                losses["hint"] = self.hint([m.float() for m in self.tap.collect()], teacher_maps)
        return losses


LOG_NAMES = {"embedding": "kd"}  # the loss's key in logs and history (PocketNet's name for its KD term)


def epoch_factor(cfg: TrainConfig, epoch: int) -> float:
    """The step schedule's factor for 0-based ``epoch``: x gamma at each milestone epoch, counting from 1."""
    return cfg.gamma ** sum(1 for m in cfg.milestones if m - 1 <= epoch)


def lr_factor(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """PocketNet's per-epoch step schedule (x gamma at each milestone epoch, counting from 1), optional warm-up."""
    factor = epoch_factor(cfg, step // steps_per_epoch)
    warm = cfg.warmup_epochs * steps_per_epoch
    if warm and step < warm:
        factor *= min(1.0, (step + 1) / warm)  # 1.1 x 100 is 110.00000000000001 in floats: no step above 1
    return factor


def lr_schedule_text(cfg: TrainConfig, base_lr: float, steps_per_epoch: int) -> str:
    """Each epoch's learning rate in words ("epochs 1-2 at 0.01, epochs 3-4 at 0.001"), logged before the first step so
    a milestone off by one (they count epochs from 1) shows before the run spends its time."""
    runs: List[List] = []  # [first epoch, last epoch, lr], epochs counted from 1
    for epoch in range(cfg.epochs):
        lr = base_lr * epoch_factor(cfg, epoch)
        if runs and math.isclose(runs[-1][2], lr):
            runs[-1][1] = epoch + 1
        else:
            runs.append([epoch + 1, epoch + 1, lr])
    parts = [(f"epoch {a}" if a == b else f"epochs {a}-{b}") + f" at {lr:.3g}" for a, b, lr in runs]
    text = ", ".join(parts)
    warm = round(cfg.warmup_epochs * steps_per_epoch)
    return f"{text}, after a {warm}-step warm-up" if warm else text


# what defines a training run (its data order, network, targets): equal on --resume; epochs, milestones, lr, threads
# and the like may change (logged)
TRAIN_FIXED = ("seed", "batch_size", "data", "flip", "max_batches_per_epoch", "arch", "genotype", "embedding_size",
               "kd", "distill", "teacher", "augment", "view_bank", "mixup_alpha", "view_size", "view_seed", "skip_bad")


class Trainer(Run):
    """One training run in a run folder.

    Args:
        cfg: the run's configuration (:func:`~pocketnas.engine.train_config.load_train_config`).
        out_dir: the run folder (claimed and locked: :mod:`pocketnas.engine.run_folder`).
        resume: continue exactly from ``out_dir/checkpoint.pt``; overwrite: replace a previous run there.
        backbone: an already built network to train instead of ``cfg.arch`` (e.g. a pruned one to fine-tune;
            its pruning masks hold through training).
        verifier: what verifies the network on ``cfg.val_bins`` (``verifier(embedder, bins, flip=...,
            progress=False)`` -> results keyed by set): :func:`pocketnas.evaluation.validation.verify_bins`, given
            by the layers above (the command line, ``prune``); the engine does not import evaluation. Needed only
            with ``val_bins``.

    :meth:`fit` trains and returns the history; :func:`train` does both and closes the run."""

    kind = "train"

    def __init__(self, cfg: TrainConfig, out_dir: str, resume: bool = False, backbone: Optional[nn.Module] = None,
                 overwrite: bool = False, verifier: Optional[BinVerifier] = None):
        self._given_backbone = backbone
        self._verifier = verifier
        if cfg.val_bins and verifier is None:
            raise ConfigError("val_bins: this run verifies on .bin sets, so it needs a verifier: pass "
                              "verifier=pocketnas.evaluation.validation.verify_bins to train() or Trainer() (the "
                              "command line does)")
        cfg.check_inputs()  # a missing file or an untrained teacher, before the run folder is touched
        self._start(cfg, out_dir, resume, overwrite)

    def _init(self, resume: bool) -> None:
        cfg, out_dir = self.cfg, self.out_dir
        self.resume_state: Optional[Dict[str, Any]] = None
        self.verification: Optional[Dict[str, Any]] = None  # of the last verification on the first val_bins set
        ckpt_path = os.path.join(out_dir, "checkpoint.pt")
        if resume:
            if not os.path.isfile(ckpt_path):
                raise MissingFileError(f"--resume: {ckpt_path} does not exist")
            self.resume_state = read_state(ckpt_path, TRAIN_STATE, "pocketnas training checkpoint")
            saved = config_from_dict(TrainConfig, self.resume_state["config"], f"{ckpt_path} config")
            keep_precision(cfg, saved.precision, ckpt_path,
                           lambda p: resolve_precision(p, self.env.device, cfg.amp))
            check_resume(saved, cfg, ckpt_path, fixed=TRAIN_FIXED)
        else:
            cfg.precision = resolve_precision(cfg.precision, self.env.device, cfg.amp)
        self._setup_logging()
        seed_everything(cfg.seed)
        self._build()

    # ------------------------------------------------------------------ set-up
    def _build(self) -> None:
        """Data and model, teacher and losses, then the optimiser: each a step of its own."""
        cfg = self.cfg
        if not cfg.data:
            raise ConfigError("no training data: pass --data PATH (a RecordIO pack or an image folder)")
        self.backbone = (self._given_backbone if self._given_backbone is not None
                         else create_model(cfg.arch, **cfg.model_overrides()))
        if cfg.init_backbone and self._given_backbone is None and self.resume_state is None:  # resume restores it
            load_backbone_weights(self.backbone, cfg.init_backbone, cfg.arch)
        if cfg.grad_checkpointing:
            if not hasattr(self.backbone, "set_grad_checkpointing"):
                raise ConfigError(f"grad_checkpointing: {type(self.backbone).__name__} cannot checkpoint its blocks")
            self.backbone.set_grad_checkpointing(True)
            logger.info("activation checkpointing: each block recomputed in the backward pass")
        self.input_size = input_hw(self.backbone)  # (height, width)
        self.student_norm = self.backbone.pocketnas_cfg.input_norm
        self.kd_losses, multistep = cfg.kd_plan()
        self._check_val_bins()
        teacher_size = self._open_teacher(multistep)
        self.view_size = view_hw(cfg.view_size, self.input_size, teacher_size)
        self._build_data()
        self._build_losses()
        self._place_teacher()
        self._build_module()
        self._build_optimiser()
        self.epoch, self.batch_in_epoch, self.step = 0, 0, 0
        if self.resume_state is not None:
            self._restore(self.resume_state)

    def _check_val_bins(self) -> None:
        """Every verification set is read (not decoded) before training: a missing or damaged one is an error now,
        not after the first epoch."""
        from ..data.binfile import read_bin_raw

        for path in self.cfg.val_bins:
            if not os.path.isfile(path):
                raise MissingFileError(f"val_bins: {path}: no such .bin file")
            read_bin_raw(path)

    def _open_teacher(self, multistep: bool) -> Optional[HW]:
        """Open the teacher (if any); returns its input (height, width) (None without one)."""
        cfg, env = self.cfg, self.env
        self.teacher = None
        self.live_teacher = None
        self.teacher_tap = None
        if not self.kd_losses:
            return None
        if multistep:
            self.teacher = MultiStepTeacher(cfg.teacher, cfg.epochs, str(env.device))
            logger.info("multi-step teacher run %s: all %d epoch checkpoints present", cfg.teacher, cfg.epochs)
            return as_hw(self.teacher.input_size)
        embedder = build_fixed_teacher(cfg.teacher, cfg.teacher_arch, cfg.teacher_input_norm, str(env.device),
                                       threads=cfg.threads or None)
        self.teacher = FixedTeacher(embedder)
        return input_hw(embedder)

    def _build_data(self) -> None:
        from ..data.views import FaceViewAugment

        cfg, env = self.cfg, self.env
        self.labelled = cfg.margin_weight > 0
        self.faces = open_face_dataset(cfg.data, self.view_size, labelled=self.labelled, skip_bad=cfg.skip_bad)
        if self.labelled and self.faces.num_classes < 2:
            n = self.faces.num_classes
            raise ConfigError(f"{cfg.data}: {n} identit{'y' if n == 1 else 'ies'}"
                              f": a margin loss needs at least two (or train on the teacher alone: margin_weight=0)")
        self.samples = TrainSamples(self.faces, flip=cfg.flip, seed=cfg.seed,
                                    augment=FaceViewAugment() if cfg.augment else None, view_bank=cfg.view_bank,
                                    view_seed=cfg.view_seed)
        self.sampler = EpochBatchSampler(len(self.faces), cfg.batch_size, cfg.seed, env.rank, env.world_size,
                                         cfg.max_batches_per_epoch)
        self.steps_per_epoch = self.sampler.batches
        logger.info("model %s (%s params), %s%d images, %d steps per epoch on %d process(es); views %s px%s%s",
                    cfg.arch, f"{sum(p.numel() for p in self.backbone.parameters()):,}",
                    f"{self.faces.num_classes} identities, " if self.labelled else "no labels used, ",
                    len(self.faces), self.steps_per_epoch, env.world_size, px_text(self.view_size),
                    (f", augmented ({'a bank of %d per image' % cfg.view_bank if cfg.view_bank else 'fresh each time'})"
                     if cfg.augment else ""), f", mixup alpha {cfg.mixup_alpha:g}" if cfg.mixup_alpha else "")
        if self.view_size != self.input_size:
            logger.info("the student sees the views resized to %s px", px_text(self.input_size))

    def _build_losses(self) -> None:
        """The margin head (when labels are used) and every distillation loss, built by name from the registry."""
        cfg = self.cfg
        emb_dim = int(self.backbone.embedding_size)
        self.head = None
        if self.labelled:
            self.head = MarginHead(emb_dim, self.faces.num_classes, build_margin(cfg.loss, **cfg.margin_kwargs()))
            if cfg.init_head and self.resume_state is None:  # a resumed run restores its head instead
                self._init_head(cfg.init_head)
        self.kd_modules: Dict[str, nn.Module] = {}
        self.hint_names = None
        terms = cfg.distill_terms()[0]
        for term in terms:
            name, weight = term["name"], term["weight"]
            options = {k: v for k, v in term.items() if k not in ("name", "weight")}
            cls = DISTILL_LOSSES.get(name)
            if cls.inputs == "maps":
                self.kd_modules[name] = self._hint_loss(cls, weight)
                continue
            try:
                module = cls(student_dim=emb_dim, teacher_dim=self.teacher.dim, weight=weight, **options)
            except TypeError as e:
                raise ConfigError(f"distillation term {name}: {e}") from None
            if getattr(module, "projection", None) is not None:
                logger.info("student embedding %d-d, teacher %d-d: a learned linear projection maps the student's "
                            "embedding to the teacher's size for the %s loss", emb_dim, self.teacher.dim, name)
            self.kd_modules[name] = module
        if self.kd_losses:
            logger.info("distillation: %s (weights %s)%s", ", ".join(self.kd_losses),
                        ", ".join(f"{t['weight']:g}" for t in terms),
                        "" if self.labelled else "; no margin loss (margin_weight=0)")
            if cfg.kd_only_epochs:
                logger.info("the first %d epoch(s) train on the teacher alone, then the margin loss joins%s",
                            cfg.kd_only_epochs, " with a head imprinted from the network" if cfg.imprint_at_joint
                            else "")

    def _init_head(self, source: str) -> None:
        """``init_head``: a run's ``checkpoint.pt``, or ``imprint`` (centres from the starting network's own
        embeddings of the training faces)."""
        if source != "imprint":
            load_head_weights(self.head, source)
            return
        from .imprint import imprint_head

        imprint_head(self.head, self.backbone, self.faces, input_norm=self.student_norm,
                     batch_size=self.cfg.batch_size, workers=self.cfg.workers, device=self.env.device,
                     progress=self.env.is_main)

    def _imprint_at_joint(self) -> None:
        """``imprint_at_joint``: as the margin loss joins (the first step of epoch ``kd_only_epochs``), its head's
        centres are imprinted by the network the teacher-only phase trained, and the head's momentum (weight decay
        alone, in that phase) is cleared. A run resumed after that step restores the head from its checkpoint; one
        resumed at the epoch's boundary imprints, from the same network, the same centres."""
        logger.info("the margin loss joins at epoch %d: imprinting its head from the network", self.epoch + 1)
        self._init_head("imprint")
        for p in self.head.parameters():
            self.optimizer.state.pop(p, None)

    def _hint_loss(self, cls, weight: float) -> nn.Module:
        teacher = getattr(self.teacher, "embedder", None)
        if not isinstance(teacher, TorchEmbedder):
            raise ConfigError("the hint loss needs a fixed PyTorch teacher (checkpoint or backbone): an "
                              "ONNX model does not expose its intermediate feature maps")
        pairs = hint_layers_of(self.cfg.hint_layers)
        self.hint_names = [s for s, _ in pairs]
        t_model = teacher.model
        self.teacher_tap = FeatureTap(t_model, [t for _, t in pairs])
        chans = list(zip(feature_channels(self.backbone, self.hint_names, self.input_size),
                         feature_channels(t_model, [t for _, t in pairs], input_hw(teacher))))
        logger.info("feature KD: %s", ", ".join(f"{s} ({cs} ch) -> {t} ({ct} ch)"
                                                 for (s, t), (cs, ct) in zip(pairs, chans)))
        return cls(chans, weight)

    def _place_teacher(self) -> None:
        """Where the teacher's embeddings come from: a disk cache of each image's views, the DataLoader workers
        (a fresh view every step, computed ahead of the student), or the training process itself."""
        cfg, env = self.cfg, self.env
        if not isinstance(self.teacher, FixedTeacher):
            return
        embedder = self.teacher.embedder
        needs_maps = self.teacher_tap is not None
        views = self.samples.views_per_image
        if cfg.teacher_bank:
            self.teacher = self._open_bank(embedder)
            where = f"read from the teacher bank {cfg.teacher_bank} ({views} views per image)"
        elif cfg.teacher_cache and views and not cfg.mixup_alpha and not needs_maps:
            transform = {"view_size": recorded(self.view_size), "views": views, "flip": cfg.flip,
                         "augment": repr(self.samples.augment) if self.samples.augment else None,
                         "seed": self.samples.view_seed if self.samples.augment else None}  # draws augmented views
            key = cache_key(embedder, self.faces, transform)
            shared = bool(cfg.teacher_cache_dir)
            cache_dir = (shared_cache_folder(cfg.teacher_cache_dir, key) if shared
                         else os.path.join(self.out_dir, "teacher_cache"))
            if env.is_main:
                self.teacher.cache = TeacherCache(cache_dir, len(self.faces), self.teacher.dim, key, views=views,
                                                  shared=shared)
            dist_utils.barrier(env)
            if not env.is_main:
                self.teacher.cache = TeacherCache(cache_dir, len(self.faces), self.teacher.dim, key, create=False,
                                                  views=views, shared=shared)
            where = f"embeddings cached ({views} views per image{', in ' + cache_dir if shared else ''})"
        elif not needs_maps and env.device.type == "cpu" and cfg.workers > 0:
            self.live_teacher = LiveTeacher(cfg.teacher, cfg.teacher_arch, embedder.input_norm, cfg.teacher_threads)
            where = f"run on every view in the {cfg.workers} DataLoader worker(s), ahead of the student"
        else:
            where = "run on every view in the training process"
        logger.info("teacher %s (input normalisation %s, %s px, %s-d): %s", embedder.name, embedder.input_norm,
                    px_text(input_hw(embedder)), embedder.embedding_size, where)

    def _open_bank(self, embedder) -> TeacherBank:
        """The run's teacher bank, checked against this run's teacher, data and views; built first (the run's first
        phase, resumable) where it is missing or has fewer views than ``view_bank``."""
        cfg, env = self.cfg, self.env
        key = bank_key(teacher_fingerprint(embedder), embedder.input_norm, embedder.input_size, self.teacher.dim,
                       self.faces.fingerprint(), self.view_size, self.samples.augment, self.samples.view_seed)
        if env.is_main and not bank_is_complete(cfg.teacher_bank, cfg.view_bank):
            logger.info("teacher bank %s: building %d views per image before training", cfg.teacher_bank,
                        cfg.view_bank)
            build_teacher_bank(cfg.teacher_bank, cfg.data, cfg.teacher, cfg.view_bank, self.samples.view_seed,
                               cfg.teacher_arch, embedder.input_norm, self.view_size,
                               workers=min(cfg.workers, cfg.threads or 1) if cfg.workers > 1 else 0,
                               threads=cfg.threads or torch.get_num_threads(), labelled=self.labelled,
                               skip_bad=cfg.skip_bad, progress=env.is_main)
        dist_utils.barrier(env)
        return TeacherBank(cfg.teacher_bank, key, views=cfg.view_bank, images=len(self.faces))

    def _build_module(self) -> None:
        cfg, env = self.cfg, self.env
        kd = nn.ModuleDict({n: m for n, m in self.kd_modules.items() if DISTILL_LOSSES.get(n).inputs != "maps"})
        hint = next((m for n, m in self.kd_modules.items() if DISTILL_LOSSES.get(n).inputs == "maps"), None)
        self.module = StudentModule(self.backbone, self.head, kd, hint, self.hint_names,
                                    precision=cfg.precision).to(env.device)
        self.cuda = env.device.type == "cuda"
        if cfg.channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)
        total_steps = self.steps_per_epoch * cfg.epochs
        want = str(cfg.compile).lower()
        if want == "true" or (want == "auto" and total_steps >= 300 and self.hint_names is None
                              and not cfg.grad_checkpointing):
            self.backbone.compile()  # in place: state-dict keys unchanged
            logger.info("backbone compiled with torch.compile (first steps include compilation)")
        self.ddp = (torch.nn.parallel.DistributedDataParallel(self.module, device_ids=[env.device] if self.cuda
                                                              else None) if env.distributed else None)

    def _build_optimiser(self) -> None:
        cfg, env = self.cfg, self.env
        backbone_params = list(self.backbone.parameters())
        ids = {id(p) for p in backbone_params}
        others = [p for p in self.module.parameters() if id(p) not in ids]
        global_batch = cfg.batch_size * env.world_size
        self.base_lr = cfg.lr * global_batch / cfg.lr_reference_batch
        self.optimizer = torch.optim.SGD([{"params": [p for p in backbone_params if p.requires_grad]},
                                          {"params": others}], lr=self.base_lr, momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(cfg, step, self.steps_per_epoch))
        self.scaler = torch.amp.GradScaler("cuda", enabled=needs_loss_scaling(cfg.precision))
        logger.info("lr %.5f (%.3f x global batch %d / %d), %d epochs (%s), precision %s%s", self.base_lr, cfg.lr,
                    global_batch, cfg.lr_reference_batch, cfg.epochs,
                    lr_schedule_text(cfg, self.base_lr, self.steps_per_epoch), cfg.precision,
                    " (autocast of the backbone; float32 weights, optimiser state, margin and losses)"
                    if cfg.precision != "fp32" else "")

    # ------------------------------------------------------------------ checkpoints
    def _state(self) -> Dict[str, Any]:
        return {
            "format": TRAIN_STATE, "format_version": STATE_VERSION,
            "config": dataclasses.asdict(self.cfg),
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "step": self.step,
            "steps_per_epoch": self.steps_per_epoch, "world_size": self.env.world_size,
            "precision": self.cfg.precision,
        }

    def _restore(self, state: Dict[str, Any]) -> None:
        if state.get("steps_per_epoch") != self.steps_per_epoch or state.get("world_size") != self.env.world_size:
            raise ConfigError(f"--resume: the checkpoint ran {state.get('steps_per_epoch')} steps per epoch on "
                              f"{state.get('world_size')} process(es); this run would take {self.steps_per_epoch} "
                              f"on {self.env.world_size}: the data order would differ")
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.epoch, self.batch_in_epoch, self.step = state["epoch"], state["batch_in_epoch"], state["step"]
        # the optimizer state holds the learning rate the saved schedule set for this step; the next step runs at
        # the one this run's schedule gives (the same value unless --resume changed epochs or milestones)
        factor = lr_factor(self.cfg, self.step, self.steps_per_epoch)
        for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
            group["lr"] = base * factor
        if isinstance(self.teacher, FixedTeacher) and self.teacher.cache is not None:
            self.teacher.cache.forget_after(self.step)
        logger.info("resumed at epoch %d, batch %d (global step %d)", self.epoch + 1, self.batch_in_epoch, self.step)

    def save_checkpoint(self) -> None:
        if self.env.is_main:
            path = os.path.join(self.out_dir, "checkpoint.pt")
            check_finite_state(self.module.state_dict(), f"step {self.step}: saving {path}")
            atomic_torch_save(self._state(), path)

    def save_backbone(self, path: str) -> None:
        if self.env.is_main:
            cfg = self.cfg
            training = {"data": os.path.basename(os.path.normpath(cfg.data)), "epochs": cfg.epochs,
                        "kd": ",".join(cfg.kd_plan()[0]) or None,
                        "teacher": os.path.basename(os.path.normpath(cfg.teacher)) if cfg.teacher else None,
                        "augment": cfg.augment, "view_bank": cfg.view_bank, "margin_weight": cfg.margin_weight,
                        "precision": cfg.precision,
                        "init_backbone": os.path.basename(cfg.init_backbone) if cfg.init_backbone else None}
            meta = {"epoch": self.epoch, "step": self.step, "arch": cfg.arch, "recipe": recipe_of(cfg),
                    "training": training}
            if self.verification is not None:  # the threshold `pocketnas verify` decides with
                meta["verification"] = self.verification
            save(self.backbone, path, meta=meta)

    # ------------------------------------------------------------------ the loop
    def _teacher_outputs(self, images_u8, index, view, live):
        """(teacher embeddings, teacher feature maps) for this batch of views, as the losses need them."""
        if live.numel():
            return live.to(self.env.device), None
        if self.teacher is None:
            return None, None
        if self.teacher_tap is not None:
            embedder = self.teacher.embedder
            with torch.no_grad():
                x = fit_size(images_u8.to(self.env.device), embedder.input_size)
                embedder.model(normalize(x, embedder.input_norm))
            return None, [m.detach() for m in self.teacher_tap.collect()]
        return self.teacher.embed(images_u8, index, view, self.step).to(self.env.device), None

    def margin_weight(self) -> float:
        """The margin loss's weight now: 0 in the teacher-only phase (``kd_only_epochs``)."""
        return 0.0 if self.epoch < self.cfg.kd_only_epochs else self.cfg.margin_weight

    def train_step(self, images_u8, labels, index, view, live=None) -> Dict[str, float]:
        cfg, dev = self.cfg, self.env.device
        x = normalize(fit_size(images_u8.to(dev, non_blocking=True), self.input_size), self.student_norm)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        labels = labels.to(dev, non_blocking=True)
        t_emb, t_maps = self._teacher_outputs(images_u8, index, view, live if live is not None else torch.empty(0))
        if t_emb is not None and not bool(torch.isfinite(t_emb).all()):
            bad = index[~torch.isfinite(t_emb).all(1).cpu()].tolist()
            raise DivergedError(f"step {self.step + 1}: the teacher's embeddings of images {bad[:5]} are not finite; "
                                f"nothing of this step was applied (the last checkpoint is kept): check the teacher")
        losses = (self.ddp or self.module)(x, labels, t_emb, t_maps, self.margin_weight())
        loss = sum(losses.values())
        self._check_finite(losses, loss)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            norm = nn.utils.clip_grad_norm_(self.backbone.parameters(), cfg.grad_clip)
            if not self.scaler.is_enabled() and not bool(torch.isfinite(norm)):  # (fp16's scaler skips such steps)
                raise DivergedError(f"step {self.step + 1}: the gradient's norm is {float(norm)}: the run diverged; "
                                    f"the step was not applied and the last checkpoint is kept (lower lr)")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        out = {k: float(v.detach()) for k, v in losses.items()}
        out["loss"] = float(loss.detach())
        return out

    def _check_finite(self, losses: Dict[str, torch.Tensor], loss: torch.Tensor) -> None:
        """Finite or fail: a NaN or infinite loss stops the run before it touches the weights, naming the step and
        the terms; the last checkpoint is kept (and nothing after it written)."""
        if bool(torch.isfinite(loss.detach())):
            return
        terms = ", ".join(f"{k} {float(v.detach()):g}" for k, v in losses.items())
        raise DivergedError(f"step {self.step + 1} (epoch {self.epoch + 1}): the loss is not finite ({terms}): the "
                            f"run diverged (a learning rate or margin too large, or a broken teacher); nothing of "
                            f"this step was applied and the last checkpoint is kept")

    def _loader(self) -> DataLoader:
        collate = ViewBatches(self.samples, self.cfg.mixup_alpha, self.live_teacher)
        return DataLoader(self.samples, batch_sampler=self.sampler, num_workers=self.cfg.workers,
                          pin_memory=self.cuda, prefetch_factor=4 if self.cfg.workers else None,
                          collate_fn=collate)

    def fit(self, callbacks: Optional[List[Callback]] = None) -> Dict[str, Any]:
        """Train to the configured end (or ``stop_after_steps``); the side jobs are ``callbacks``
        (:func:`~pocketnas.engine.callbacks.default_callbacks`: TensorBoard, checkpoints, verification).

        Returns:
            The history: per-epoch mean losses, verification per epoch, minutes; ``stopped_at_step`` when stopped
            early."""
        cfg, env = self.cfg, self.env
        callbacks = default_callbacks() if callbacks is None else callbacks
        history: Dict[str, Any] = {"epochs": [], "verification": {}}
        if cfg.stop_after_steps and self.step >= cfg.stop_after_steps:
            # a run resumed at (or past) its stop: its checkpoint's backbone as model.pt, nothing trained (how a
            # stage killed at a checkpoint becomes a file to evaluate or release)
            self.save_backbone(os.path.join(self.out_dir, "model.pt"))
            logger.info("step %d is at or past stop_after_steps (%d): model.pt written from the checkpoint, no step "
                        "taken", self.step, cfg.stop_after_steps)
            history["stopped_at_step"] = self.step
            return history
        self.module.train()
        start = time.perf_counter()
        try:
            while self.epoch < cfg.epochs:
                self._start_epoch()
                means = self._run_epoch(callbacks, history)
                if means is None:  # a callback stopped the run
                    return history
                self._end_epoch(means, start, callbacks, history)
                dist_utils.barrier(env)
        finally:
            if self.tb is not None:
                self.tb.flush()
        history["minutes"] = (time.perf_counter() - start) / 60
        return history

    def _start_epoch(self) -> None:
        cfg = self.cfg
        if isinstance(self.teacher, MultiStepTeacher):
            self.teacher.set_epoch(self.epoch)
        if (cfg.imprint_at_joint and self.head is not None and self.epoch == cfg.kd_only_epochs
                and self.batch_in_epoch == 0):
            self._imprint_at_joint()
        self.samples.set_epoch(self.epoch)
        self.sampler.set_epoch(self.epoch, self.batch_in_epoch)

    def _run_epoch(self, callbacks: List[Callback], history: Dict[str, Any]) -> Optional[Dict[str, float]]:
        """The epoch's steps (from where a resumed run left it); the mean of each loss, or None when stopped."""
        from tqdm import tqdm

        cfg = self.cfg
        sums: Dict[str, float] = {}
        seen = 0
        bar = tqdm(self._loader(), total=len(self.sampler), disable=not self.env.is_main,
                   desc=f"epoch {self.epoch + 1}/{cfg.epochs}", unit="step", dynamic_ncols=True)
        for images, labels, index, view, live in bar:
            losses = self.train_step(images, labels, index, view, live)
            self.batch_in_epoch += 1
            self.step += 1
            seen += 1
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v
            if self.env.is_main and (self.step % cfg.log_every == 0 or self.batch_in_epoch == 1):
                bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()}
                                | {"lr": f"{self.optimizer.param_groups[0]['lr']:.4g}"})
            if any(cb.on_step(self, losses, history) == STOP for cb in list(callbacks)):
                return None
        bar.close()
        return {k: v / max(1, seen) for k, v in sums.items()}

    def _end_epoch(self, means: Dict[str, float], start: float, callbacks: List[Callback],
                   history: Dict[str, Any]) -> None:
        finished = self.epoch + 1
        self.epoch, self.batch_in_epoch = finished, 0
        if self.teacher is not None and getattr(self.teacher, "cache", None) is not None:
            c = self.teacher.cache
            logger.info("teacher cache: %d hits, %d computed so far%s", c.hits, c.misses,
                        f", {c.damaged} damaged entries recomputed" if c.damaged else "")
        logger.info("epoch %d/%d: %s (%.1f min so far)", finished, self.cfg.epochs,
                    ", ".join(f"{k} {v:.4f}" for k, v in means.items()), (time.perf_counter() - start) / 60)
        history["epochs"].append({"epoch": finished, **means})
        for cb in callbacks:
            cb.on_epoch_end(self, finished, means, history)

    def verify(self) -> Dict[str, float]:
        """Verification accuracy on the configured .bin sets (rank 0), logged to TensorBoard."""
        if not self.env.is_main:
            return {}
        self.backbone.eval()
        try:
            # the training network's memory format is left as the run set it (a resume sees the same network)
            embedder = model_embedder(self.backbone, engine="auto", device=self.env.device, threads=self.cfg.threads,
                                      channels_last=self.cfg.channels_last)
            results = self._verifier(embedder, self.cfg.val_bins, flip=self.cfg.val_flip, progress=False)
        finally:
            self.backbone.train()
        out = {}
        if results:
            stem, first = next(iter(results.items()))
            self.verification = {**verification_record(stem, first), "epoch": self.epoch}
        for stem, r in results.items():
            out[stem] = r["accuracy_mean"]
            self.tb.add_scalar(f"verification/{stem}", r["accuracy_mean"], self.epoch)
            logger.info("verification %s after epoch %d: %.2f%% +- %.2f", stem, self.epoch,
                        100 * r["accuracy_mean"], 100 * r["accuracy_std"])
        return out

def train(cfg: TrainConfig, out_dir: str, resume: bool = False, backbone: Optional[nn.Module] = None,
          overwrite: bool = False, verifier: Optional[BinVerifier] = None) -> Dict[str, Any]:
    """Train (what ``pocketnas train`` does): the process-wide settings ``cfg`` asks for, then the run (arguments
    as :class:`Trainer`'s)."""
    configure_process(cfg.threads, False if cfg.device.startswith("cuda") else cfg.tune_malloc)
    trainer = Trainer(cfg, out_dir, resume, backbone, overwrite, verifier)
    return run_to_end(trainer, trainer.fit)
