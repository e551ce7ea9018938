"""The training loop behind ``pocketnas train``: margin loss, knowledge distillation, exact resume, torchrun.

Writes into the run folder: ``checkpoint.pt`` (everything needed to continue: backbone, head, distillation
modules, optimizer, scheduler, RNG states, epoch, batch, step, config; written atomically), ``model.pt`` (the
self-describing backbone that ``pocketnas.load`` reads), ``epochs/epoch_NNN.pt`` with ``save_every_epoch``,
``tb/`` (TensorBoard), ``log.txt`` and ``config.yaml``.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import random
import time
from contextlib import nullcontext
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..config import ConfigError, config_from_dict
from ..data.transforms import normalize
from ..losses.distill import EmbeddingKD, HintKD
from ..losses.heads import MarginHead
from ..losses.margins import build_margin
from ..models.checkpoint import atomic_torch_save, save
from ..models.embedders import TorchEmbedder
from ..models.features import FeatureTap, feature_channels
from ..registry import create_model
from . import distributed as dist_utils
from .allocator import tune_glibc_malloc
from .run_folder import RunFolder
from .runlog import close_run_log, open_run_log
from .sampling import EpochBatchSampler, TrainSamples, open_face_dataset
from .teachers import (FixedTeacher, MultiStepTeacher, TeacherCache, build_fixed_teacher, cache_key,
                       hint_layers_of)
from .train_config import TrainConfig, recipe_of

logger = logging.getLogger(__name__)


def load_head_weights(head: MarginHead, path: str) -> None:
    """Start ``head`` from the class centres of a ``pocketnas train`` run's ``checkpoint.pt`` (fine-tuning a pruned
    network with a fresh, random head would push the backbone with meaningless gradients)."""
    from ..models.checkpoint import CheckpointError, _torch_load

    state = _torch_load(path)
    model = state.get("model") if isinstance(state, dict) and state.get("format") == "pocketnas.train_state" else None
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
    """Backbone + margin head + distillation modules in one module (what DistributedDataParallel wraps)."""

    def __init__(self, backbone: nn.Module, head: MarginHead, kd: Optional[nn.Module] = None,
                 hint: Optional[nn.Module] = None, hint_names: Optional[List[str]] = None):
        super().__init__()
        self.backbone, self.head, self.kd, self.hint = backbone, head, kd, hint
        self.tap = FeatureTap(backbone, hint_names) if hint_names else None

    def forward(self, x, labels, teacher_emb=None, teacher_maps=None) -> Dict[str, torch.Tensor]:
        emb = self.backbone(x)
        losses = {"ce": F.cross_entropy(self.head(emb, labels), labels)}
        if self.kd is not None and teacher_emb is not None:
            losses["kd"] = self.kd(emb, teacher_emb)
        if self.hint is not None and teacher_maps is not None:
            losses["hint"] = self.hint(self.tap.collect(), teacher_maps)
        return losses


def lr_factor(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """PocketNet's per-epoch step schedule (x gamma at each milestone epoch, counting from 1), optional warm-up."""
    epoch = step // steps_per_epoch
    factor = cfg.gamma ** sum(1 for m in cfg.milestones if m - 1 <= epoch)
    warm = cfg.warmup_epochs * steps_per_epoch
    if warm and step < warm:
        factor *= (step + 1) / warm
    return factor


def rng_state() -> Dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
             "python_version": random.getstate()[0], "numpy": torch.from_numpy(np.random.get_state()[1].copy())}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), None))
    np.random.set_state(("MT19937", state["numpy"].numpy(), 624, 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """``backbone``: an already built network to train instead of ``cfg.arch`` (e.g. a pruned one to fine-tune;
    its pruning masks hold through training)."""

    def __init__(self, cfg: TrainConfig, out_dir: str, resume: bool = False, backbone: Optional[nn.Module] = None,
                 overwrite: bool = False):
        self.cfg, self.out_dir = cfg, out_dir
        self._given_backbone = backbone
        self.tb, self._log_handler = None, None
        self.env = dist_utils.setup(cfg.device)
        self.folder = RunFolder(out_dir, resume, overwrite, "train")
        if self.env.is_main:
            self.folder.acquire()
        try:
            self._init(resume)
        except BaseException:
            self.close()
            raise

    def _init(self, resume: bool) -> None:
        cfg, out_dir = self.cfg, self.out_dir
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.resume_state: Optional[Dict[str, Any]] = None
        ckpt_path = os.path.join(out_dir, "checkpoint.pt")
        if resume:
            if not os.path.isfile(ckpt_path):
                raise FileNotFoundError(f"--resume: {ckpt_path} does not exist")
            self.resume_state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
            saved = config_from_dict(TrainConfig, self.resume_state["config"], f"{ckpt_path} config")
            changed = {f.name for f in dataclasses.fields(TrainConfig)
                       if getattr(saved, f.name) != getattr(cfg, f.name)}
            order = changed & {"seed", "batch_size", "data", "flip", "max_batches_per_epoch", "arch", "genotype",
                               "embedding_size", "kd", "teacher"}
            if order:
                raise ConfigError(f"--resume: {', '.join(sorted(order))} differ from the checkpoint's run; an exact "
                                  f"resume needs the same values")
            if changed:
                logger.warning("--resume: using new values for %s", ", ".join(sorted(changed)))
        self._setup_logging()
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        random.seed(cfg.seed)
        self._build()

    # ------------------------------------------------------------------ set-up
    def _setup_logging(self) -> None:
        if not self.env.is_main:
            return
        self.tb, self._log_handler = open_run_log(self.out_dir, self.cfg)

    def _build(self) -> None:
        cfg, env = self.cfg, self.env
        if not cfg.data:
            raise ConfigError("no training data: pass --data PATH (a RecordIO pack or an image folder)")
        self.backbone = (self._given_backbone if self._given_backbone is not None
                         else create_model(cfg.arch, **cfg.model_overrides()))
        input_size = int(getattr(self.backbone, "input_size", 112))
        self.faces = open_face_dataset(cfg.data, input_size)
        self.samples = TrainSamples(self.faces, flip=cfg.flip, seed=cfg.seed)
        self.sampler = EpochBatchSampler(len(self.faces), cfg.batch_size, cfg.seed, env.rank, env.world_size,
                                         cfg.max_batches_per_epoch)
        self.steps_per_epoch = self.sampler.batches
        self.student_norm = self.backbone.pocketnas_cfg.input_norm
        emb_dim = int(self.backbone.embedding_size)
        head = MarginHead(emb_dim, self.faces.num_classes, build_margin(cfg.loss, **cfg.margin_kwargs()))
        if cfg.init_head:
            load_head_weights(head, cfg.init_head)
        logger.info("model %s (%s params), %d identities, %d images, %d steps per epoch on %d process(es)",
                    cfg.arch, f"{sum(p.numel() for p in self.backbone.parameters()):,}", self.faces.num_classes,
                    len(self.faces), self.steps_per_epoch, env.world_size)

        self.teacher = None
        kd_module = hint_module = None
        hint_names = None
        self.teacher_tap = None
        if cfg.kd in ("embedding", "feature"):
            embedder = build_fixed_teacher(cfg.teacher, cfg.teacher_arch, cfg.teacher_input_norm, str(env.device),
                                           threads=cfg.threads or None)
            cache = None
            if cfg.teacher_cache and cfg.kd == "embedding":
                cache_dir = os.path.join(self.out_dir, "teacher_cache")
                key = cache_key(embedder, self.faces, {"decoded_size": input_size, "flip": "mirror"})
                if env.is_main:
                    cache = TeacherCache(cache_dir, len(self.faces), int(embedder.embedding_size), key)
                dist_utils.barrier(env)
                if not env.is_main:
                    cache = TeacherCache(cache_dir, len(self.faces), int(embedder.embedding_size), key, create=False)
            self.teacher = FixedTeacher(embedder, cache)
            logger.info("teacher %s (input normalisation %s, %s-d)%s", embedder.name, embedder.input_norm,
                        embedder.embedding_size, ", embeddings cached" if cache else "")
        elif cfg.kd == "multistep":
            self.teacher = MultiStepTeacher(cfg.teacher, cfg.epochs, str(env.device))
            logger.info("multi-step teacher run %s: all %d epoch checkpoints present", cfg.teacher, cfg.epochs)
        if cfg.kd in ("embedding", "multistep"):
            kd_module = EmbeddingKD(emb_dim, self.teacher.dim, cfg.kd_weight)
            if kd_module.projection is not None:
                logger.info("student embedding %d-d, teacher %d-d: a learned linear projection maps the student's "
                            "embedding to the teacher's size for the KD loss", emb_dim, self.teacher.dim)
        if cfg.kd == "feature":
            if not isinstance(self.teacher.embedder, TorchEmbedder):
                raise ConfigError("kd=feature needs a PyTorch teacher (checkpoint or backbone): an ONNX model does "
                                  "not expose its intermediate feature maps")
            pairs = hint_layers_of(cfg.hint_layers)
            hint_names = [s for s, _ in pairs]
            t_model = self.teacher.embedder.model
            self.teacher_tap = FeatureTap(t_model, [t for _, t in pairs])
            chans = list(zip(feature_channels(self.backbone, hint_names, input_size),
                             feature_channels(t_model, [t for _, t in pairs], input_size)))
            hint_module = HintKD(chans, cfg.hint_weight)
            logger.info("feature KD: %s", ", ".join(f"{s} ({cs} ch) -> {t} ({ct} ch)"
                                                     for (s, t), (cs, ct) in zip(pairs, chans)))

        self.module = StudentModule(self.backbone, head, kd_module, hint_module, hint_names).to(env.device)
        self.cuda = env.device.type == "cuda"
        if cfg.channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)
        if not self.cuda and cfg.tune_malloc:
            tune_glibc_malloc()
        total_steps = self.steps_per_epoch * cfg.epochs
        want = str(cfg.compile).lower()
        if want == "true" or (want == "auto" and total_steps >= 300 and hint_names is None):
            self.backbone.compile()  # in place: state-dict keys unchanged
            logger.info("backbone compiled with torch.compile (first steps include compilation)")
        self.ddp = (torch.nn.parallel.DistributedDataParallel(self.module, device_ids=[env.device] if self.cuda
                                                              else None) if env.distributed else None)
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
        self.amp_dtype = None
        if self.cuda and cfg.amp:
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.epoch, self.batch_in_epoch, self.step = 0, 0, 0
        if self.resume_state is not None:
            self._restore(self.resume_state)
        logger.info("lr %.5f (%.3f x global batch %d / %d), %d epochs", self.base_lr, cfg.lr, global_batch,
                    cfg.lr_reference_batch, cfg.epochs)

    # ------------------------------------------------------------------ checkpoints
    def _state(self) -> Dict[str, Any]:
        return {
            "format": "pocketnas.train_state", "format_version": 1,
            "config": dataclasses.asdict(self.cfg),
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "step": self.step,
            "steps_per_epoch": self.steps_per_epoch, "world_size": self.env.world_size,
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
        if isinstance(self.teacher, FixedTeacher) and self.teacher.cache is not None:
            self.teacher.cache.forget_after(self.step)
        logger.info("resumed at epoch %d, batch %d (global step %d)", self.epoch + 1, self.batch_in_epoch, self.step)

    def save_checkpoint(self) -> None:
        if self.env.is_main:
            atomic_torch_save(self._state(), os.path.join(self.out_dir, "checkpoint.pt"))

    def save_backbone(self, path: str) -> None:
        if self.env.is_main:
            save(self.backbone, path, meta={"epoch": self.epoch, "step": self.step, "arch": self.cfg.arch,
                                            "recipe": recipe_of(self.cfg)})

    # ------------------------------------------------------------------ the loop
    def _teacher_outputs(self, images_u8, index, flipped):
        if self.teacher is None:
            return None, None
        if self.cfg.kd == "feature":
            t_model = self.teacher.embedder.model
            with torch.no_grad():
                t_model(normalize(images_u8.to(self.env.device), self.teacher.embedder.input_norm))
            return None, [m.detach() for m in self.teacher_tap.collect()]
        return self.teacher.embed(images_u8, index, flipped, self.step).to(self.env.device), None

    def train_step(self, images_u8, labels, index, flipped) -> Dict[str, float]:
        cfg, dev = self.cfg, self.env.device
        x = normalize(images_u8.to(dev, non_blocking=True), self.student_norm)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        labels = labels.to(dev, non_blocking=True)
        t_emb, t_maps = self._teacher_outputs(images_u8, index, flipped)
        autocast = torch.autocast("cuda", dtype=self.amp_dtype) if self.amp_dtype else nullcontext()
        with autocast:
            losses = (self.ddp or self.module)(x, labels, t_emb, t_maps)
            loss = sum(losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.backbone.parameters(), cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        out = {k: float(v.detach()) for k, v in losses.items()}
        out["loss"] = float(loss.detach())
        return out

    def _loader(self) -> DataLoader:
        return DataLoader(self.samples, batch_sampler=self.sampler, num_workers=self.cfg.workers,
                          pin_memory=self.cuda, prefetch_factor=4 if self.cfg.workers else None)

    def fit(self) -> Dict[str, Any]:
        from tqdm import tqdm

        cfg, env = self.cfg, self.env
        history: Dict[str, Any] = {"epochs": [], "verification": {}}
        self.module.train()
        start = time.perf_counter()
        try:
            while self.epoch < cfg.epochs:
                if isinstance(self.teacher, MultiStepTeacher):
                    self.teacher.set_epoch(self.epoch)
                self.samples.set_epoch(self.epoch)
                self.sampler.set_epoch(self.epoch, self.batch_in_epoch)
                sums: Dict[str, float] = {}
                seen = 0
                bar = tqdm(self._loader(), total=len(self.sampler), disable=not env.is_main,
                           desc=f"epoch {self.epoch + 1}/{cfg.epochs}", unit="step", dynamic_ncols=True)
                for images, labels, index, flipped in bar:
                    losses = self.train_step(images, labels, index, flipped)
                    self.batch_in_epoch += 1
                    self.step += 1
                    seen += 1
                    for k, v in losses.items():
                        sums[k] = sums.get(k, 0.0) + v
                    if env.is_main and (self.step % cfg.log_every == 0 or self.batch_in_epoch == 1):
                        lr = self.optimizer.param_groups[0]["lr"]
                        bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()} | {"lr": f"{lr:.4g}"})
                        for k, v in losses.items():
                            self.tb.add_scalar(f"train/{k}", v, self.step)
                        self.tb.add_scalar("train/lr", lr, self.step)
                    if cfg.save_every_steps and self.step % cfg.save_every_steps == 0:
                        self.save_checkpoint()
                    if cfg.stop_after_steps and self.step >= cfg.stop_after_steps:
                        self.save_checkpoint()
                        logger.info("stopping at step %d as asked (stop_after_steps)", self.step)
                        history["stopped_at_step"] = self.step
                        return history
                bar.close()
                means = {k: v / max(1, seen) for k, v in sums.items()}
                finished = self.epoch + 1
                self.epoch, self.batch_in_epoch = finished, 0
                if self.teacher is not None and getattr(self.teacher, "cache", None) is not None:
                    c = self.teacher.cache
                    logger.info("teacher cache: %d hits, %d computed so far", c.hits, c.misses)
                logger.info("epoch %d/%d: %s (%.1f min so far)", finished, cfg.epochs,
                            ", ".join(f"{k} {v:.4f}" for k, v in means.items()), (time.perf_counter() - start) / 60)
                history["epochs"].append({"epoch": finished, **means})
                self.save_checkpoint()
                self.save_backbone(os.path.join(self.out_dir, "model.pt"))
                if cfg.save_every_epoch:
                    from .teachers import epoch_checkpoint

                    self.save_backbone(epoch_checkpoint(self.out_dir, finished))
                if cfg.val_bins and (finished % cfg.val_every_epochs == 0 or finished == cfg.epochs):
                    history["verification"][finished] = self.verify()
                dist_utils.barrier(env)
        finally:
            if self.tb is not None:
                self.tb.flush()
        history["minutes"] = (time.perf_counter() - start) / 60
        return history

    def verify(self) -> Dict[str, float]:
        """Verification accuracy on the configured .bin sets (rank 0), logged to TensorBoard."""
        if not self.env.is_main:
            return {}
        from ..evaluation.run import verify_bins

        self.backbone.eval()
        try:
            results = verify_bins(TorchEmbedder(self.backbone, device=self.env.device), self.cfg.val_bins,
                                  flip=self.cfg.val_flip, progress=False)
        finally:
            self.backbone.train()
        out = {}
        for stem, r in results.items():
            out[stem] = r["accuracy_mean"]
            self.tb.add_scalar(f"verification/{stem}", r["accuracy_mean"], self.epoch)
            logger.info("verification %s after epoch %d: %.2f%% +- %.2f", stem, self.epoch,
                        100 * r["accuracy_mean"], 100 * r["accuracy_std"])
        return out

    def close(self) -> None:
        close_run_log(self.tb, self._log_handler)
        self.tb, self._log_handler = None, None
        self.folder.release()
        dist_utils.teardown(self.env)


def train(cfg: TrainConfig, out_dir: str, resume: bool = False, backbone: Optional[nn.Module] = None,
          overwrite: bool = False) -> Dict[str, Any]:
    trainer = Trainer(cfg, out_dir, resume, backbone, overwrite)
    try:
        return trainer.fit()
    finally:
        trainer.close()
