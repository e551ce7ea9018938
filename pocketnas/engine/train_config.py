"""What a training run is: one flat dataclass, read from ``train/*.yaml`` and ``--set key=value``."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from ..config import ConfigError

# ``kd`` names distillation losses of pocketnas.losses.DISTILL_LOSSES, comma-separated ("embedding,rkd"); two
# names of earlier releases stay: "multistep" (embedding KD from a teacher run's checkpoint of each epoch) and
# "feature" (the hint loss)
KD_ALIASES = {"multistep": "embedding", "feature": "hint"}


@dataclass
class TrainConfig:
    # network
    arch: str = "pocketnet_s_128"
    genotype: Optional[str] = None          # published name, genotype.json, or legacy string; None: the arch's own
    embedding_size: Optional[int] = None
    se: bool = False
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    # data
    data: str = ""
    batch_size: int = 128                   # per process
    workers: int = 2
    flip: bool = True
    max_batches_per_epoch: int = 0          # 0: the whole epoch (small runs and tests cap it)
    skip_bad: bool = False                  # leave damaged records out (counted) instead of refusing the data
    val_bins: List[str] = field(default_factory=list)
    val_every_epochs: int = 1
    val_flip: bool = True
    # views (Beyer et al. 2022): augment: aligned-face views (crop, shift, mirror, colour, grey) for student and
    # teacher alike; view_bank: K fixed views per image (a teacher's embeddings of them are cached), 0: a fresh
    # view every time (the teacher runs on each, in the DataLoader workers); mixup_alpha > 0: mix pairs of views
    augment: bool = False
    view_bank: int = 0
    mixup_alpha: float = 0.0
    view_size: int = 0                      # pixels of the views (0: the larger of student's and teacher's input)
    view_seed: Optional[int] = None         # draws the bank's K views (None: seed); runs of other seeds that share
    #                                         it share one teacher bank
    # loss: margin -> normalised head -> cross-entropy
    margin_weight: float = 1.0              # 0: the teacher's losses alone (labels not needed: any face set)
    loss: str = "arcface"
    margin_s: float = 64.0
    margin_m: Optional[float] = None        # arcface 0.5, cosface 0.35 when unset
    margin_m1: Optional[float] = None
    margin_m2: Optional[float] = None
    margin_m3: Optional[float] = None
    # optimisation (PocketNet: SGD 0.9, wd 5e-4, lr 0.1 x global batch / 512, x0.1 at epochs 8, 14, 20, 25)
    epochs: int = 26
    lr: float = 0.1
    lr_reference_batch: int = 512
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: List[int] = field(default_factory=lambda: [8, 14, 20, 25])
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    grad_clip: float = 5.0
    init_head: Optional[str] = None         # a run's checkpoint.pt (its class centres), or "imprint": centres from
    #                                         the starting network's embeddings of the training set (Qi et al. 2018)
    init_backbone: Optional[str] = None     # a pocketnas checkpoint of this arch: start the network from its weights
    #                                         ("pretrained": the weights that ship with pocketnas for this arch)
    # distillation
    distill: List[Dict[str, Any]] = field(default_factory=list)  # the distillation terms, torchdistill-style:
    #                                         [{name: embedding, weight: 1000}, {name: sp, weight: 300}, ...];
    #                                         other keys go to the loss (rkd: distance_weight, angle_weight)
    kd: Optional[str] = None                # or, as before: comma-separated names (embedding, rkd, sp, hint;
    #                                         multistep, feature) with their weights in kd_weight, rkd_weight, ...
    teacher: Optional[str] = None           # model spec, or (multistep) a teacher run folder
    teacher_arch: Optional[str] = None      # for a bare backbone.pth
    teacher_input_norm: Optional[str] = None  # for an ONNX teacher without pocketnas metadata
    kd_weight: float = 100.0
    rkd_weight: float = 1.0                 # x (25 distance + 50 angle), Park et al.'s weights
    sp_weight: float = 3000.0               # Tung and Mori's gamma
    kd_only_epochs: int = 0                 # the first epochs train on the teacher's losses alone, then joint
    imprint_at_joint: bool = False          # when the margin loss joins, its head starts from class centres
    #                                         imprinted by the network the teacher-only phase made (Qi et al. 2018)
    teacher_cache: bool = True
    teacher_cache_dir: str = ""             # share the cache between runs: one subfolder per cache key, kept
    teacher_threads: int = 1                # threads of the teacher in each DataLoader worker (live teacher)
    teacher_bank: str = ""                  # a folder of the teacher's embeddings of every view, built before the
    #                                         first step (engine/teacher_bank.py; built there if missing, resumable)
    hint_layers: List[List[str]] = field(default_factory=list)  # [[student module, teacher module], ...]
    hint_weight: float = 1.0
    # run
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"                 # auto | fp32 | bf16 | fp16: autocast of the network's forward
    #                                         (engine/precision.py; auto: bf16/fp16 on CUDA, fp32 on the CPU)
    amp: bool = True                        # the older switch: false makes precision auto mean fp32 on CUDA too
    channels_last: bool = True              # faster on CUDA and, measured in bench/train.py, on CPU too
    compile: Union[bool, str] = "auto"      # torch.compile the backbone: "auto" (runs of >= 300 steps), true, false
    tune_malloc: Union[bool, str] = True    # glibc malloc on the CPU (engine/process.py): true keeps freed buffers
    #                                         for the next step (fastest, bench/train.py), lean returns them at once
    #                                         (lowest peak memory, bench/memory.py), false leaves glibc's defaults
    grad_checkpointing: bool = False        # recompute each block's activations in the backward pass instead of
    #                                         keeping them: PocketNetS-128 at batch 64 peaks at 3.45 GB instead of
    #                                         10.07 (1.50 with tune_malloc: lean), for a fifth more time a step
    #                                         (layers/checkpointing.py, bench/memory.py)
    threads: int = 0                        # CPU threads (0: leave torch's default)
    log_every: int = 10
    save_every_steps: int = 0               # also checkpoint every N steps (0: at epoch ends only)
    save_every_epoch: bool = False          # keep epochs/epoch_NNN.pt (a multi-step teacher needs them)
    stop_after_steps: int = 0               # stop at this global step, after a checkpoint and model.pt

    def validate(self, source: str = "config") -> None:
        """Every setting, checked when the configuration is read (before any file or folder is touched): the
        network and its loss, the distillation, the views, the numbers, the device and precision."""
        from ..losses.margins import MARGINS
        from ..models import is_model

        if not is_model(self.arch):
            raise ConfigError(f"{source}: arch {self.arch!r} is not a registered model (see `pocketnas models`)")
        if self.loss not in MARGINS:
            raise ConfigError(f"{source}: loss must be one of {', '.join(MARGINS.names())}, got {self.loss!r}")
        self._check_distillation(source)
        self._check_numbers(source)
        from ..config import check_device
        from .precision import check_precision

        check_device(self.device, source)
        check_precision(self.precision, source)
        if str(self.compile).lower() not in ("auto", "true", "false"):
            raise ConfigError(f"{source}: compile must be auto, true or false, got {self.compile!r}")
        from .process import malloc_mode

        try:
            malloc_mode(self.tune_malloc)
        except ValueError as e:
            raise ConfigError(f"{source}: {e}") from None
        if self.grad_checkpointing and str(self.compile).lower() == "true":
            raise ConfigError(f"{source}: grad_checkpointing runs the network eagerly; drop compile: true")
        self._check_model(source)

    def _check_distillation(self, source: str) -> None:
        """The teacher, the terms, the teacher-only phase, the views and the bank: settings that only make sense
        together."""
        losses, multistep = self.kd_plan(source)
        if multistep and (self.teacher_input_norm or self.teacher_arch):
            raise ConfigError(f"{source}: a multi-step teacher is a pocketnas run whose checkpoints record their own "
                              f"architecture and normalisation; drop teacher_input_norm / teacher_arch")
        if losses and not self.teacher:
            raise ConfigError(f"{source}: distillation ({', '.join(losses)}) needs a teacher (--teacher or teacher: "
                              f"...)")
        if "hint" in losses and not self.hint_layers:
            raise ConfigError(f"{source}: the hint loss needs hint_layers: [[student_module, teacher_module], ...]")
        if self.margin_weight < 0 or (self.margin_weight == 0 and not losses):
            raise ConfigError(f"{source}: margin_weight must be >= 0, and 0 needs a distillation loss (kd)")
        if self.kd_only_epochs and not (losses and 0 <= self.kd_only_epochs < self.epochs):
            raise ConfigError(f"{source}: kd_only_epochs needs kd and must lie in 0..epochs-1, got "
                              f"{self.kd_only_epochs}")
        if self.imprint_at_joint and not (self.kd_only_epochs and self.margin_weight > 0):
            raise ConfigError(f"{source}: imprint_at_joint needs a teacher-only phase (kd_only_epochs >= 1) and the "
                              f"margin loss after it (margin_weight > 0)")
        if self.mixup_alpha < 0 or (self.mixup_alpha > 0 and self.margin_weight > 0):
            raise ConfigError(f"{source}: mixup_alpha must be >= 0, and mixing faces needs margin_weight=0 (a mix "
                              f"of two people has no identity label)")
        if self.view_bank < 0 or (self.view_bank and not self.augment):
            raise ConfigError(f"{source}: view_bank must be >= 0 and needs augment=true")
        if self.teacher_bank:
            if not (losses and self.view_bank and not multistep and not self.mixup_alpha and "hint" not in losses):
                raise ConfigError(f"{source}: teacher_bank holds a fixed teacher's embeddings of a bank of views: it "
                                  f"needs kd with a fixed teacher (not multistep or hint), augment=true with "
                                  f"view_bank >= 1, and no mixup")

    def _check_numbers(self, source: str) -> None:
        """Ranges of the numeric settings (each float is finite already: :func:`pocketnas.config._check`)."""
        if self.view_seed is not None and self.view_seed < 0:
            raise ConfigError(f"{source}: view_seed must be >= 0 (or unset: the seed), got {self.view_seed}")
        if self.view_size < 0 or self.teacher_threads < 1:
            raise ConfigError(f"{source}: view_size must be >= 0 and teacher_threads >= 1")
        for key in ("batch_size", "epochs", "log_every", "lr_reference_batch", "val_every_epochs"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{source}: {key} must be >= 1, got {getattr(self, key)}")
        for key in ("lr", "margin_s", "gamma"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{source}: {key} must be positive, got {getattr(self, key)}")
        for key in ("workers", "weight_decay", "grad_clip", "warmup_epochs", "save_every_steps", "stop_after_steps",
                    "threads", "max_batches_per_epoch", "momentum", "kd_weight", "rkd_weight", "sp_weight",
                    "hint_weight"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{source}: {key} must not be negative, got {getattr(self, key)}")
        if self.embedding_size is not None and self.embedding_size < 1:
            raise ConfigError(f"{source}: embedding_size must be >= 1 (or unset: the architecture's own), got "
                              f"{self.embedding_size}")
        if self.warmup_epochs > self.epochs:
            raise ConfigError(f"{source}: warmup_epochs ({self.warmup_epochs}) exceeds epochs ({self.epochs})")
        if sorted(self.milestones) != list(self.milestones):
            raise ConfigError(f"{source}: milestones must be increasing, got {self.milestones}")
        if self.seed < 0:
            raise ConfigError(f"{source}: seed must be >= 0 (numpy's generators take no negative seed), got "
                              f"{self.seed}")

    def check_inputs(self, source: str = "config") -> None:
        """Every file the run will read exists, and a fixed teacher is trained: checked when a run starts, before
        its run folder is touched (a recipe alone may name a teacher the command line replaces)."""
        from ..errors import MissingFileError
        from ..models.factory import require_trained

        multistep = self.kd_plan(source)[1]
        if self.init_backbone == "pretrained":
            from ..models import model_cfg

            if model_cfg(self.arch).pretrained is None:
                raise ConfigError(f"{source}: init_backbone: pretrained: no weights ship for {self.arch}")
        for key in ("data", "init_backbone"):
            path = getattr(self, key) or ""
            if path and path != "pretrained" and not os.path.exists(path):
                raise MissingFileError(f"{source}: {key} {path}: no such file or folder")
        if self.init_head not in (None, "", "imprint") and not os.path.isfile(self.init_head):
            raise MissingFileError(f"{source}: init_head {self.init_head}: no such file (a training checkpoint.pt, "
                                   f"or 'imprint')")
        for path in self.val_bins:
            if not os.path.isfile(path):
                raise MissingFileError(f"{source}: val_bins: {path}: no such .bin file")
        if self.teacher and not multistep:
            from ..models import is_model

            if not (os.path.exists(self.teacher) or is_model(self.teacher)):
                raise MissingFileError(f"{source}: teacher {self.teacher}: neither a file nor a registered model")
            require_trained(self.teacher, None, "its distillation targets")
            self._probe_teacher(source)

    def _probe_teacher(self, source: str) -> None:
        """The fixed teacher opened and run on two images (one finite embedding each, of its declared size), and
        the hint layers named on both networks: a wrong teacher or layer name is refused here, before the run
        folder exists, not after it holds a config and a log."""
        from .teachers import build_fixed_teacher, hint_layers_of

        teacher = build_fixed_teacher(self.teacher, self.teacher_arch, self.teacher_input_norm, "cpu", threads=1)
        if "hint" not in self.kd_plan(source)[0]:
            return
        import torch

        from ..models import create_model

        with torch.device("meta"):
            student = dict(create_model(self.arch, **self.model_overrides()).named_modules())
        teacher_modules = dict(getattr(getattr(teacher, "model", None), "named_modules", lambda: [])())
        for s_name, t_name in hint_layers_of(self.hint_layers):
            if s_name not in student:
                raise ConfigError(f"{source}: hint_layers: the student {self.arch} has no module {s_name!r}")
            if teacher_modules and t_name not in teacher_modules:
                raise ConfigError(f"{source}: hint_layers: the teacher {self.teacher} has no module {t_name!r}")

    def _check_model(self, source: str) -> None:
        """Build the network on the meta device (no memory, no time): a bad model_kwargs, genotype or size is an
        error now, before a run folder is touched."""
        import torch

        from ..models import create_model

        try:
            with torch.device("meta"):
                model = create_model(self.arch, **self.model_overrides())
        except ConfigError:
            raise
        except (TypeError, ValueError, KeyError) as e:
            msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
            raise ConfigError(f"{source}: {self.arch} cannot be built with "
                              f"{self.model_overrides() or 'its defaults'}: {msg}") from None
        if self.grad_checkpointing and not hasattr(model, "set_grad_checkpointing"):
            raise ConfigError(f"{source}: grad_checkpointing: {self.arch} cannot checkpoint its blocks (PocketNets, "
                              f"MobileFaceNets and iResNets can)")
        if self.grad_checkpointing and self.hint_layers:
            raise ConfigError(f"{source}: grad_checkpointing recomputes the blocks the hint loss taps; use one or "
                              f"the other")

    def kd_plan(self, source: str = "config") -> Tuple[List[str], bool]:
        """(distillation loss names, whether the teacher is multi-step) from ``distill`` or ``kd``."""
        terms, multistep = self.distill_terms(source)
        return [t["name"] for t in terms], multistep

    def distill_terms(self, source: str = "config") -> Tuple[List[Dict[str, Any]], bool]:
        """The distillation terms, each {name, weight, **the loss's own arguments}, and whether the teacher is
        multi-step: from ``distill`` (a list of terms, as torchdistill configures its losses) or, as before, from
        ``kd`` (names) with the weights in ``kd_weight``, ``rkd_weight``, ``sp_weight``, ``hint_weight``."""
        from ..losses.distill import DISTILL_LOSSES

        if self.distill and self.kd:
            raise ConfigError(f"{source}: give the distillation terms once: distill (a list of {{name, weight}}) or "
                              f"kd (names), not both")
        raw = list(self.distill) if self.distill else [
            {"name": t.strip()} for t in str(self.kd or "").split(",") if t.strip()]
        terms, multistep = [], False
        for i, term in enumerate(raw):
            where = f"{source}: distill[{i}]" if self.distill else f"{source}: kd"
            if not isinstance(term, dict) or not isinstance(term.get("name"), str):
                raise ConfigError(f"{where}: a term is a mapping with a name, e.g. {{name: embedding, weight: 100}}")
            multistep |= term["name"] == "multistep"
            name = KD_ALIASES.get(term["name"], term["name"])
            if name not in DISTILL_LOSSES:
                raise ConfigError(f"{where}: unknown distillation loss {term['name']!r} (known: "
                                  f"{', '.join(DISTILL_LOSSES.names())}; also multistep, feature)")
            if any(t["name"] == name for t in terms):
                raise ConfigError(f"{where}: names {name} twice")
            weight = term.get("weight", getattr(self, DISTILL_LOSSES.get(name).weight_key))
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0 \
                    or weight == float("inf"):
                raise ConfigError(f"{where}: weight of {name} must be a finite number >= 0, got {weight!r}")
            terms.append({**{k: v for k, v in term.items() if k != "name"}, "name": name, "weight": float(weight)})
        return terms, multistep

    def margin_kwargs(self) -> Dict[str, Any]:
        from ..losses.margins import margin_kwargs

        return margin_kwargs(self.loss, {"margin_s": self.margin_s, "margin_m": self.margin_m,
                                         "margin_m1": self.margin_m1, "margin_m2": self.margin_m2,
                                         "margin_m3": self.margin_m3})

    def model_overrides(self) -> Dict[str, Any]:
        out = dict(self.model_kwargs)
        if self.genotype:
            out["genotype"] = self.genotype
        if self.embedding_size:
            out["embedding_size"] = self.embedding_size
        if self.se:
            out["se"] = True
        return out


RECIPE_KEYS = ("loss", "margin_s", "margin_m", "margin_m1", "margin_m2", "margin_m3", "flip")


def recipe_of(cfg: TrainConfig) -> Dict[str, Any]:
    """The loss settings a model was trained with, kept in its checkpoint so fine-tuning (after pruning, say)
    continues with the same margin rather than the library defaults."""
    return {key: getattr(cfg, key) for key in RECIPE_KEYS}


def load_train_config(config: Optional[str] = None, overrides: Sequence[str] = (),
                      extra: Optional[Dict[str, Any]] = None, resume_from: Optional[str] = None) -> TrainConfig:
    """A run's configuration: the recipe ``config`` (a file or a packaged name), command-line values ``extra`` and
    ``--set`` overrides. Resuming (``resume_from`` = the run folder) without a recipe starts from the configuration
    the run's ``checkpoint.pt`` recorded, so a resume needs nothing but the folder."""
    from ..config import load_config
    from ..models.checkpoint import read_state

    defaults = None
    state_path = os.path.join(resume_from, "checkpoint.pt") if resume_from else ""
    if state_path and not config and os.path.isfile(state_path):
        from .run_state import TRAIN_STATE

        defaults = read_state(state_path, TRAIN_STATE, "pocketnas training checkpoint")["config"]
    return load_config(TrainConfig, config, overrides, extra, defaults)
