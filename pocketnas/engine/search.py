"""``pocketnas search``: differentiable cell search on face images (DARTS, with PocketNet's space and settings).

Writes into the run folder: ``genotype.json`` (the final derived genotype; ``best_genotype.json`` the one of the
best validation accuracy), ``genotypes.jsonl`` (one per epoch), ``cells/`` (PNG per epoch and final), ``tb/``
(scalars and alpha heat maps), ``checkpoint.pt`` (weights, alphas, both optimizers, RNG states, epoch, history;
written atomically each epoch) and ``log.txt``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import resource
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from ..config import ConfigError, config_from_dict
from ..errors import DivergedError, MissingFileError
from ..atomic import atomic_write_json
from ..data.transforms import normalize
from ..genotype import Genotype
from ..layers import use_torch_kernels
from ..losses.heads import MarginHead
from ..losses.margins import MARGINS, build_margin, margin_kwargs
from ..models.checkpoint import atomic_torch_save, check_finite_state, read_state
from ..nas.architect import Architect, frozen
from ..nas.beta_decay import beta_decay_loss, beta_decay_weight
from ..nas.budget import build_cost_model, parse_amount
from ..nas.cell_diagram import draw_genotype
from ..nas.space import load_space
from ..nas.supernet import Supernet, count_skips
from . import distributed as dist_utils
from .precision import autocast, check_precision, float32_region, resolve_precision
from .process import configure_process
from .run import Run, run_to_end
from .runlog import DETAIL
from ..data.face_sets import open_face_dataset
from .sampling import EpochBatchSampler, TrainSamples
from .run_state import (SEARCH_STATE, STATE_VERSION, check_resume, keep_precision, rng_state, seed_everything,
                        set_rng_state)

logger = logging.getLogger(__name__)


@dataclass
class SearchConfig:
    space: str = "pocketnet"
    data: str = ""
    # supernet
    layers: int = 8
    channels: int = 16
    stem_multiplier: int = 3
    embedding_size: int = 128
    input_size: int = 112
    partial_k: int = 1                      # PC-DARTS: 1/k of the channels through the mixed operations
    plain: bool = False                     # the original formulation: every operation (none too) and every
                                            # gradient computed, torch's kernels (use_torch_kernels), NCHW
    # data
    batch_size: int = 64
    workers: int = 2
    train_portion: float = 0.5
    flip: bool = True
    max_batches_per_epoch: int = 0
    skip_bad: bool = False                  # leave damaged records out (counted) instead of refusing the data
    # schedule
    epochs: int = 50
    w_lr: float = 0.1
    w_lr_min: float = 0.004
    w_momentum: float = 0.9
    w_weight_decay: float = 3e-4
    w_grad_clip: float = 5.0
    alpha_lr: float = 1.2e-3
    alpha_betas: List[float] = field(default_factory=lambda: [0.5, 0.999])
    alpha_weight_decay: float = 1e-3
    order: str = "second"
    loss: str = "linear"                    # linear: a linear classifier + cross-entropy (DARTS's, PocketNet's search);
    #                                         or a registered margin (arcface, cosface, combined, softmax: the
    #                                         normalised softmax of training, scale only)
    margin_s: float = 64.0
    margin_m: Optional[float] = None
    # budget: the derived network's cost as a final PocketNet of final_channels x final_layers
    budget_params: Optional[str] = None     # e.g. 1.0M
    budget_flops: Optional[str] = None      # e.g. 600M
    budget_weight: float = 1.0
    beta_decay: float = 0.0                 # beta-DARTS (Ye et al., CVPR 2022): the regulariser's weight, reached
                                            # linearly by the last epoch (0: plain DARTS)
    final_channels: int = 16
    final_layers: int = 18
    # skip-connection collapse guard
    max_skips: int = 2                      # at most this many skips in the derived normal cell (-1: no cap)
    stop_on_skip_rise: bool = True          # stop when the uncapped derivation's skips rise above max_skips
    # run
    seed: int = 0
    device: str = "auto"
    threads: int = 0
    precision: str = "auto"                 # auto | fp32 | bf16 | fp16 (engine/precision.py): the supernet's
    #                                         forward under autocast; alphas, weights, margin and loss in float32
    amp: bool = True                        # the older switch: false makes precision auto mean fp32 on CUDA too
    channels_last: bool = True
    tune_malloc: bool = True
    log_every: int = 10
    stop_after_epochs: int = 0              # interruption drills

    def validate(self, source: str = "config") -> None:
        if self.order not in ("first", "second"):
            raise ConfigError(f"{source}: order must be first or second, got {self.order!r}")
        check_precision(self.precision, source)
        if self.loss != "linear" and self.loss not in MARGINS:
            raise ConfigError(f"{source}: loss must be linear (a linear classifier) or a margin, one of "
                              f"{', '.join(MARGINS.names())}")
        if not 0 < self.train_portion < 1:
            raise ConfigError(f"{source}: train_portion must lie in (0, 1), got {self.train_portion}")
        if self.partial_k < 1 or self.channels % self.partial_k:
            raise ConfigError(f"{source}: partial_k must divide channels ({self.channels}), got {self.partial_k}")
        if self.budget_params and self.budget_flops:
            raise ConfigError(f"{source}: give one budget, params or flops")
        for key in ("budget_params", "budget_flops"):
            if getattr(self, key):
                try:
                    parse_amount(getattr(self, key))
                except ValueError as e:
                    raise ConfigError(f"{source}: {key}: {e}") from None
        for key in ("layers", "channels", "batch_size", "epochs", "input_size", "stem_multiplier", "embedding_size",
                    "log_every", "final_channels", "final_layers"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{source}: {key} must be >= 1, got {getattr(self, key)}")
        for key in ("w_lr", "w_lr_min", "alpha_lr", "margin_s", "budget_weight"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{source}: {key} must be positive, got {getattr(self, key)}")
        for key in ("workers", "threads", "w_momentum", "w_weight_decay", "w_grad_clip", "alpha_weight_decay",
                    "max_batches_per_epoch", "stop_after_epochs", "beta_decay"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{source}: {key} must not be negative, got {getattr(self, key)}")
        if self.w_lr_min > self.w_lr:
            raise ConfigError(f"{source}: w_lr_min ({self.w_lr_min}) exceeds w_lr ({self.w_lr})")
        if len(self.alpha_betas) != 2 or not all(0 <= b < 1 for b in self.alpha_betas):
            raise ConfigError(f"{source}: alpha_betas must be two numbers in [0, 1)")
        if self.input_size % 8:
            raise ConfigError(f"{source}: input_size must be a multiple of 8 (three reductions after the stem), got "
                              f"{self.input_size}")
        if self.seed < 0:
            raise ConfigError(f"{source}: seed must be >= 0, got {self.seed}")
        from ..config import check_device

        check_device(self.device, source)


def search_config(space: str, path: Optional[str] = None, overrides=(), extra=None) -> SearchConfig:
    """The space's defaults, then a config file, then ``extra`` (command-line options), then ``--set``."""
    from ..config import load_config

    defaults = {**load_space(space).defaults, "space": space}
    return load_config(SearchConfig, path, overrides, extra, defaults, packaged="search")


class SearchModel(nn.Module):
    """Supernet + classifier; ``weights()`` are everything but the architecture parameters ``alphas()``.

    ``weights()`` is found once and kept: walking the supernet's ~3,000 modules for its ~1,500 parameters took
    about 15 ms, and a second-order step asks eight times. ``.to()``, ``.float()`` and the like (``_apply``) drop
    the list; after replacing a submodule in place, call :meth:`forget_weights`."""

    def __init__(self, supernet: Supernet, head: nn.Module):
        super().__init__()
        self.supernet, self.head = supernet, head
        self._weight_list: Optional[List[nn.Parameter]] = None

    def alphas(self):
        return self.supernet.alphas()

    def weights(self) -> List[nn.Parameter]:
        if self._weight_list is None:
            ids = {id(a) for a in self.alphas()}
            self._weight_list = [p for p in self.parameters() if id(p) not in ids]
        return list(self._weight_list)

    def forget_weights(self) -> None:
        self._weight_list = None

    def _apply(self, fn, recurse=True):
        self.forget_weights()
        return super()._apply(fn, recurse)

    precision = "fp32"  # the Searcher sets the run's (engine/precision.py)

    def logits(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """float32 logits: the supernet under the run's autocast, the classifier or margin head in float32."""
        with autocast(self.precision, x.device):
            emb = self.supernet(x)
        with float32_region(x.device):
            emb = emb.float()
            return self.head(emb, y) if isinstance(self.head, MarginHead) else self.head(emb)


def stratified_split(labels: np.ndarray, portion: float, seed: int) -> Tuple[List[int], List[int]]:
    """Per identity, a seeded ``portion`` of its images for the weights, the rest for the alphas (identities with
    a single image go to the weights). Labels come from the pack's identity records: no image is read."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    for group in np.split(order, bounds):
        group = rng.permutation(group)
        k = max(1, int(round(portion * len(group)))) if len(group) > 1 else 1
        train.extend(group[:k].tolist())
        val.extend(group[k:].tolist())
    return sorted(train), sorted(val)


def labels_of(faces) -> np.ndarray:
    labels = faces.labels() if callable(getattr(faces, "labels", None)) else faces.labels
    return np.asarray(labels, dtype=np.int64)


def alpha_entropy(alpha: torch.Tensor) -> float:
    p = F.softmax(alpha.detach().float(), -1)
    return float(-(p * p.clamp_min(1e-12).log()).sum(-1).mean())


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


# a search is continued as it ran: only these may change on --resume (every other setting is fixed)
SEARCH_FREE = ("workers", "threads", "log_every", "stop_after_epochs", "epochs")


class Searcher(Run):
    """One DARTS search in a run folder.

    Args:
        cfg: the search's configuration (:func:`search_config`: the space's defaults, a recipe, ``--set``).
        out_dir: the run folder; resume: continue from its ``checkpoint.pt``; overwrite: replace a search there.

    :meth:`run` searches and returns the history (per-epoch records, the final genotype, alpha entropy at start
    and end); ``genotype.json`` (with how it was found), the cells and TensorBoard land in ``out_dir``."""

    kind = "search"

    def __init__(self, cfg: SearchConfig, out_dir: str, resume: bool = False, overwrite: bool = False):
        if cfg.data and not os.path.exists(cfg.data):  # before the run folder is touched
            raise MissingFileError(f"data {cfg.data}: no such file or folder")
        self._start(cfg, out_dir, resume, overwrite)

    def _init(self, resume: bool) -> None:
        cfg, out_dir = self.cfg, self.out_dir
        if self.env.distributed and cfg.order == "second":
            raise ConfigError("second-order search runs in one process; use order=first under torchrun")
        self.space = load_space(cfg.space)
        state = None
        if resume:
            path = os.path.join(out_dir, "checkpoint.pt")
            if not os.path.isfile(path):
                raise MissingFileError(f"--resume: {path} does not exist")
            state = read_state(path, SEARCH_STATE, "pocketnas search checkpoint")
            saved = config_from_dict(SearchConfig, state["config"], f"{path} config")
            keep_precision(cfg, saved.precision, path, lambda p: resolve_precision(p, self.env.device, saved.amp))
            check_resume(saved, cfg, path, fixed=None, free=SEARCH_FREE)
        requested = cfg.precision
        cfg.precision = resolve_precision(cfg.precision, self.env.device, cfg.amp)
        if cfg.precision == "fp16":  # the search steps have no loss scaling, which float16 needs
            if requested != "auto":
                raise ConfigError("precision fp16 is for training (loss scaling); a search runs in bf16 or fp32")
            cfg.precision = "fp32"
        self._setup_logging()
        seed_everything(cfg.seed)
        self._build()
        self.epoch = 0
        self.history: Dict[str, Any] = {"epochs": [], "best_val_acc": -1.0, "best_genotype": None,
                                        "raw_skips": [], "stopped_early": None}
        if state is not None:
            self._restore(state)

    def _setup_logging(self) -> None:
        if self.env.is_main:
            os.makedirs(os.path.join(self.out_dir, "cells"), exist_ok=True)
        super()._setup_logging()

    def _build(self) -> None:
        """Data, supernet and its optimisers, then the architect with the alphas' penalties: each a step."""
        self._build_data()
        self._build_model()
        self._build_architect()

    def _build_data(self) -> None:
        cfg, env = self.cfg, self.env
        if not cfg.data:
            raise ConfigError("no search data: pass --data PATH (a RecordIO pack or an image folder)")
        self.faces = open_face_dataset(cfg.data, cfg.input_size, skip_bad=cfg.skip_bad)
        if self.faces.num_classes < 2:
            raise ConfigError(f"{cfg.data}: {self.faces.num_classes} identity: a search classifies identities and "
                              f"needs at least two")
        labels = labels_of(self.faces)
        self.train_idx, self.val_idx = stratified_split(labels, cfg.train_portion, cfg.seed)
        samples = TrainSamples(self.faces, flip=cfg.flip, seed=cfg.seed)
        self.samples = samples
        self.train_set, self.val_set = Subset(samples, self.train_idx), Subset(samples, self.val_idx)
        self.train_sampler = EpochBatchSampler(len(self.train_idx), cfg.batch_size, cfg.seed, env.rank,
                                               env.world_size, cfg.max_batches_per_epoch)
        self.val_sampler = EpochBatchSampler(len(self.val_idx), cfg.batch_size, cfg.seed + 1, env.rank,
                                             env.world_size, cfg.max_batches_per_epoch)
        self.steps_per_epoch = min(self.train_sampler.batches, self.val_sampler.batches)

    def _build_model(self) -> None:
        cfg, env = self.cfg, self.env
        supernet = Supernet(self.space, self.faces.num_classes, cfg.channels, cfg.layers, cfg.stem_multiplier,
                            cfg.embedding_size, cfg.input_size, cfg.partial_k, skip_none=not cfg.plain)
        if cfg.plain:
            use_torch_kernels(supernet)
        if cfg.loss == "linear":  # unnormalised logits, as DARTS and PocketNet's search
            head: nn.Module = nn.Linear(cfg.embedding_size, self.faces.num_classes)
        else:
            kw = margin_kwargs(cfg.loss, {"margin_s": cfg.margin_s, "margin_m": cfg.margin_m})
            head = MarginHead(cfg.embedding_size, self.faces.num_classes, build_margin(cfg.loss, **kw))
        self.model = SearchModel(supernet, head).to(env.device)
        self.channels_last = cfg.channels_last and not cfg.plain  # the plain formulation is NCHW
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.cuda = env.device.type == "cuda"
        self.model.precision = cfg.precision
        self.w_optim = torch.optim.SGD(self.model.weights(), cfg.w_lr, momentum=cfg.w_momentum,
                                       weight_decay=cfg.w_weight_decay)
        self.a_optim = torch.optim.Adam(self.model.alphas(), cfg.alpha_lr, betas=tuple(cfg.alpha_betas),
                                        weight_decay=cfg.alpha_weight_decay)

    def _alpha_penalties(self) -> List[Any]:
        """The terms added to the architecture loss: the budget (a size target, in expectation over the alphas)
        and beta-decay (beta-DARTS, Ye et al., CVPR 2022)."""
        cfg, sn = self.cfg, self.model.supernet
        self.cost_model, self.budget, penalties = None, (None, None), []
        if cfg.budget_params or cfg.budget_flops:
            metric = "params" if cfg.budget_params else "flops"
            target = parse_amount(cfg.budget_params or cfg.budget_flops)
            self.cost_model = build_cost_model(self.space, metric, cfg.final_channels, cfg.final_layers,
                                               cfg.input_size, cfg.embedding_size)
            self.budget = (metric, target)
            penalties.append(lambda: self.cost_model.loss(sn.alpha_normal, sn.alpha_reduce, target,
                                                          cfg.budget_weight))
            logger.info("budget: derived %dx%d PocketNet's %s steered towards %s (weight %.2f)",
                        cfg.final_channels, cfg.final_layers, metric, f"{target:,.0f}", cfg.budget_weight)
        if cfg.beta_decay > 0:
            penalties.append(lambda: beta_decay_weight(cfg.beta_decay, self.epoch, cfg.epochs) * beta_decay_loss(
                [sn.alpha_normal, sn.alpha_reduce]))
            logger.info("beta-decay regularisation of the alphas (beta-DARTS), weight 0 -> %g over the search",
                        cfg.beta_decay)
        return penalties

    def _build_architect(self) -> None:
        cfg, env = self.cfg, self.env
        penalties = self._alpha_penalties()

        def alpha_penalty():
            return sum(term() for term in penalties)

        hook = (lambda params: dist_utils.average_gradients(env, params)) if env.distributed else None
        self.architect = Architect(self.model, self._loss, cfg.w_momentum, cfg.w_weight_decay, self.a_optim,
                                   cfg.order, alpha_penalty if penalties else None, hook,
                                   only_needed_grads=not cfg.plain)
        n_w = sum(p.numel() for p in self.model.weights())
        n_a = sum(p.numel() for p in self.model.alphas())
        logger.info("search space %s (%d operations), supernet %d cells x %d channels at %dx%d: %s weights, %d "
                    "alphas; %s-order%s%s; %d train / %d val images of %d identities; %d steps per epoch",
                    self.space.name, len(self.space.operations), cfg.layers, cfg.channels, cfg.input_size,
                    cfg.input_size, f"{n_w:,}", n_a, cfg.order,
                    f", partial channels 1/{cfg.partial_k}" if cfg.partial_k > 1 else "",
                    ", plain formulation" if cfg.plain else "", len(self.train_idx), len(self.val_idx),
                    self.faces.num_classes, self.steps_per_epoch)

    def _loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model.logits(x, y), y)

    def _to_input(self, images: torch.Tensor) -> torch.Tensor:
        x = normalize(images.to(self.env.device, non_blocking=True), "arcface")
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def lr_at(self, epoch: int) -> float:
        c = self.cfg
        return c.w_lr_min + (c.w_lr - c.w_lr_min) * (1 + math.cos(math.pi * epoch / c.epochs)) / 2

    # ------------------------------------------------------------------ state
    def _state(self) -> Dict[str, Any]:
        return {"format": SEARCH_STATE, "format_version": STATE_VERSION, "config": dataclasses.asdict(self.cfg),
                "model": self.model.state_dict(), "w_optimizer": self.w_optim.state_dict(),
                "alpha_optimizer": self.a_optim.state_dict(), "rng": rng_state(), "epoch": self.epoch,
                "history": json.dumps(self.history), "world_size": self.env.world_size}

    def _restore(self, state: Dict[str, Any]) -> None:
        if state.get("world_size") != self.env.world_size:
            raise ConfigError("--resume: the search ran on a different number of processes")
        self.model.load_state_dict(state["model"])
        self.w_optim.load_state_dict(state["w_optimizer"])
        self.a_optim.load_state_dict(state["alpha_optimizer"])
        set_rng_state(state["rng"])
        self.epoch = int(state["epoch"])
        self.history = json.loads(state["history"])
        logger.info("resumed after epoch %d", self.epoch)

    # ------------------------------------------------------------------ loop
    def _loaders(self):
        kw = dict(num_workers=self.cfg.workers, pin_memory=self.cuda)
        return (DataLoader(self.train_set, batch_sampler=self.train_sampler, **kw),
                DataLoader(self.val_set, batch_sampler=self.val_sampler, **kw))

    def run(self) -> Dict[str, Any]:
        from tqdm import tqdm

        cfg, env = self.cfg, self.env
        sn = self.model.supernet
        if self.epoch == 0:
            self.history["alpha_entropy_start"] = (alpha_entropy(sn.alpha_normal) + alpha_entropy(sn.alpha_reduce)) / 2
        start = time.perf_counter()
        while self.epoch < cfg.epochs:
            lr = self.lr_at(self.epoch)
            for g in self.w_optim.param_groups:
                g["lr"] = lr
            self.samples.set_epoch(self.epoch)
            self.train_sampler.set_epoch(self.epoch)
            self.val_sampler.set_epoch(self.epoch)
            train_loader, val_loader = self._loaders()
            sums = {"train_loss": 0.0, "train_acc": 0.0, "val_loss": 0.0, "val_acc": 0.0}
            steps = 0
            bar = tqdm(zip(train_loader, val_loader), total=self.steps_per_epoch, disable=not env.is_main,
                       desc=f"search epoch {self.epoch + 1}/{cfg.epochs}", unit="step", dynamic_ncols=True)
            t_epoch = time.perf_counter()
            self.model.train()
            for (tx, ty, _, _), (vx, vy, _, _) in bar:
                tx, vx = self._to_input(tx), self._to_input(vx)
                ty, vy = ty.to(env.device), vy.to(env.device)
                val_loss, loss, logits = search_step(self.model, self.architect, self.w_optim, tx, ty, vx, vy, lr,
                                                     cfg.w_grad_clip, env)
                if not (math.isfinite(val_loss) and math.isfinite(float(loss))):
                    raise DivergedError(f"search epoch {self.epoch + 1}, step {steps + 1}: the loss is not finite "
                                        f"(train {float(loss):g}, validation {val_loss:g}): the search diverged "
                                        f"(w_lr or alpha_lr too large?); the last checkpoint and genotype are kept")
                with torch.no_grad():
                    v_logits = self.model.logits(vx, vy) if steps % cfg.log_every == 0 else None
                sums["train_loss"] += float(loss)
                sums["train_acc"] += float((logits.argmax(1) == ty).float().mean())
                sums["val_loss"] += val_loss
                if v_logits is not None:
                    sums.setdefault("val_acc_n", 0)
                    sums["val_acc_n"] += 1
                    sums["val_acc"] += float((v_logits.argmax(1) == vy).float().mean())
                steps += 1
                if env.is_main and steps % cfg.log_every == 0:
                    bar.set_postfix(loss=f"{float(loss):.3f}", val=f"{val_loss:.3f}")
            bar.close()
            self.epoch += 1
            self._end_of_epoch(sums, steps, time.perf_counter() - t_epoch)
            self._save()
            if self.history["stopped_early"]:
                break
            if cfg.stop_after_epochs and self.epoch >= cfg.stop_after_epochs and self.epoch < cfg.epochs:
                logger.info("stopping after epoch %d as asked (stop_after_epochs)", self.epoch)
                self.history["interrupted"] = True
                return self.history
        self.history["minutes"] = (time.perf_counter() - start) / 60
        self._finish()
        return self.history

    def _end_of_epoch(self, sums: Dict[str, float], steps: int, seconds: float) -> None:
        """The epoch's record (history), the early stop on a rise of skip connections, then (main process) its
        report in the log and TensorBoard and its genotype written out."""
        n_acc = max(1, int(sums.pop("val_acc_n", 0)))
        means = {k: v / max(1, steps) for k, v in sums.items() if k != "val_acc"}
        means["val_acc"] = sums["val_acc"] / n_acc
        # nothing non-finite becomes a genotype or a checkpoint (a NaN alpha derives an arbitrary cell)
        check_finite_state(self.model.state_dict(), f"search epoch {self.epoch}: the supernet")
        record, capped = self._epoch_record(means, seconds)
        self._stop_on_skip_rise(record["skips_derived"])
        if not self.env.is_main:
            return
        self._report_epoch(record, means, capped, seconds)
        self._write_epoch_genotype(capped, means)

    def _epoch_record(self, means: Dict[str, float], seconds: float):
        cfg, sn = self.cfg, self.model.supernet
        raw = sn.genotype(None)
        capped = sn.genotype(cfg.max_skips if cfg.max_skips >= 0 else None)
        entropy = (alpha_entropy(sn.alpha_normal) + alpha_entropy(sn.alpha_reduce)) / 2
        record = {"epoch": self.epoch, **means, "seconds": seconds, "alpha_entropy": entropy,
                  "skips_derived": count_skips(raw), "genotype": capped.to_dict(), "peak_rss_gb": peak_rss_gb()}
        if self.cost_model is not None:
            record["expected_cost"] = float(self.cost_model.expected(sn.alpha_normal.detach().double(),
                                                                     sn.alpha_reduce.detach().double()))
            record["derived_cost"] = self.cost_model.of_genotype(capped)
        self.history["epochs"].append(record)
        if means["val_acc"] > self.history["best_val_acc"]:
            self.history["best_val_acc"] = means["val_acc"]
            self.history["best_genotype"] = capped.to_dict()
        return record, capped

    def _stop_on_skip_rise(self, raw_skips: int) -> None:
        """DARTS's collapse into skip connections, caught: a rise above ``max_skips`` stops the search, keeping the
        previous epoch's genotype."""
        cfg = self.cfg
        previous = self.history["raw_skips"][-1] if self.history["raw_skips"] else None
        self.history["raw_skips"].append(raw_skips)
        if (cfg.stop_on_skip_rise and cfg.max_skips >= 0 and previous is not None and raw_skips > previous
                and raw_skips > cfg.max_skips):
            self.history["stopped_early"] = (f"skip connections in the derived normal cell rose from {previous} to "
                                             f"{raw_skips} (above {cfg.max_skips}) after epoch {self.epoch}: "
                                             f"stopping early, keeping the previous epoch's genotype")
            if len(self.history["epochs"]) > 1:
                self.history["final_genotype"] = self.history["epochs"][-2]["genotype"]
            logger.warning("%s", self.history["stopped_early"])

    def _report_epoch(self, record: Dict[str, Any], means: Dict[str, float], capped: Genotype,
                      seconds: float) -> None:
        cfg, sn = self.cfg, self.model.supernet
        probs, ops = sn.op_probabilities(), list(self.space.operations)
        lines = [f"epoch {self.epoch}/{cfg.epochs} ({seconds:.0f} s): train loss {means['train_loss']:.4f} acc "
                 f"{100 * means['train_acc']:.2f}%, val loss {means['val_loss']:.4f} "
                 f"acc {100 * means['val_acc']:.2f}%, alpha entropy {record['alpha_entropy']:.4f}, skips in "
                 f"derived normal cell {record['skips_derived']}, peak RSS {record['peak_rss_gb']:.2f} GB"]
        if self.cost_model is not None:
            lines.append(f"  expected {self.cost_model.metric} {record['expected_cost']:,.0f}, derived network "
                         f"{record['derived_cost']:,.0f} (target {self.budget[1]:,.0f})")
        lines.append(f"  genotype: {capped.to_legacy()}")
        logger.info("\n".join(lines))
        alphas = [f"epoch {self.epoch} alphas:"]
        for which in ("normal", "reduce"):
            alphas.append(f"  alphas ({which}), softmax per edge over {', '.join(ops)}:")
            for e, row in enumerate(probs[which].tolist()):
                alphas.append(f"    edge {e:2d}: " + " ".join(f"{v:.3f}" for v in row))
        logging.getLogger(DETAIL).info("\n".join(alphas))  # log.txt only: 2 x 14 lines an epoch
        for k, v in means.items():
            self.tb.add_scalar(f"search/{k}", v, self.epoch)
        for key in ("alpha_entropy", "skips_derived"):
            self.tb.add_scalar(f"search/{key}", record[key], self.epoch)
        if self.cost_model is not None:
            self.tb.add_scalar(f"search/expected_{self.cost_model.metric}", record["expected_cost"], self.epoch)
            self.tb.add_scalar(f"search/derived_{self.cost_model.metric}", record["derived_cost"], self.epoch)
        self.tb.add_figure("alphas", alpha_heatmap(probs, ops), self.epoch)

    def _write_epoch_genotype(self, capped: Genotype, means: Dict[str, float]) -> None:
        """The epoch's derived genotype: cell diagrams and a line of genotypes.jsonl."""
        draw_genotype(capped, os.path.join(self.out_dir, "cells"), f"epoch_{self.epoch:03d}_",
                      f"epoch {self.epoch}")
        with open(os.path.join(self.out_dir, "genotypes.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps({"epoch": self.epoch, "val_acc": means["val_acc"], "genotype": capped.to_dict()}) + "\n")

    def _save(self) -> None:
        if self.env.is_main:
            atomic_torch_save(self._state(), os.path.join(self.out_dir, "checkpoint.pt"))
        dist_utils.barrier(self.env)

    def _record(self) -> Dict[str, Any]:
        """How the genotype was found, written with it (readers of genotype.json need no other file)."""
        cfg = self.cfg
        return {"method": "darts", "space": self.space.name, "order": cfg.order, "partial_k": cfg.partial_k,
                "beta_decay": cfg.beta_decay, "loss": cfg.loss, "seed": cfg.seed, "epochs": cfg.epochs,
                "budget_params": cfg.budget_params, "budget_flops": cfg.budget_flops}

    def _finish(self) -> None:
        sn = self.model.supernet
        final = self.history.get("final_genotype") or self.history["epochs"][-1]["genotype"]
        self.history["final_genotype"] = final
        self.history["alpha_entropy_end"] = (alpha_entropy(sn.alpha_normal) + alpha_entropy(sn.alpha_reduce)) / 2
        self.history["alpha_entropy_uniform"] = math.log(len(self.space.operations))
        if not self.env.is_main:
            return
        g = Genotype.from_dict(final)
        for name, genotype in (("genotype.json", g), ("best_genotype.json", Genotype.from_dict(self.history[
                "best_genotype"]))):  # the genotype with how it was found (what nas-eval reports as its source)
            atomic_write_json(os.path.join(self.out_dir, name), {"genotype": genotype.to_dict(),
                                                                 "search": self._record()}, sort_keys=False)
        draw_genotype(g, os.path.join(self.out_dir, "cells"), "final_", "searched")
        logger.info("final genotype (genotype.json): %s", g.to_legacy())
        logger.info("alpha entropy %.4f -> %.4f (uniform: %.4f); best val acc %.2f%%",
                    self.history["alpha_entropy_start"], self.history["alpha_entropy_end"],
                    self.history["alpha_entropy_uniform"], 100 * self.history["best_val_acc"])


def search_step(model: SearchModel, architect: Architect, w_optim: torch.optim.Optimizer, tx, ty, vx, vy,
                lr: float, grad_clip: float, env=None):
    """One DARTS step: the architecture step on a validation batch (first or second order), then the weight step
    on a training batch (gradients averaged across processes, norm-clipped). Returns (val loss, train loss, logits)."""
    val_loss = architect.step(tx, ty, vx, vy, lr, w_optim)
    w_optim.zero_grad(set_to_none=True)
    # the weight step needs no alpha gradients: skip their reductions in the backward pass
    with frozen(model.alphas() if architect.only_needed_grads else []):
        logits = model.logits(tx, ty)
        loss = F.cross_entropy(logits, ty)
        loss.backward()
    if env is not None:
        dist_utils.average_gradients(env, model.weights())
    nn.utils.clip_grad_norm_(model.weights(), grad_clip)
    w_optim.step()
    return val_loss, loss.detach(), logits.detach()


def alpha_heatmap(probs: Dict[str, torch.Tensor], ops: List[str]):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 5), dpi=100)
    for ax, which in zip(axes, ("normal", "reduce")):
        im = ax.imshow(probs[which].numpy(), aspect="auto", cmap="viridis", vmin=0)
        ax.set_xticks(range(len(ops)))
        ax.set_xticklabels(ops, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("edge")
        ax.set_title(f"{which} cell: softmax(alpha)")
        fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return fig


def search(cfg: SearchConfig, out_dir: str, resume: bool = False, overwrite: bool = False) -> Dict[str, Any]:
    """Run a search (what ``pocketnas search`` does): the process-wide settings ``cfg`` asks for, then the run."""
    configure_process(cfg.threads, False if cfg.device.startswith("cuda") else cfg.tune_malloc)
    searcher = Searcher(cfg, out_dir, resume, overwrite)
    return run_to_end(searcher, searcher.run)
