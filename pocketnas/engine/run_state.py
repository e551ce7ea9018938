"""What a run's state is, for training and search alike: the checkpoint formats, the seeding, the random-number
state a checkpoint carries, and one resume policy (which settings may change when a run is continued).

A resumed run must reproduce the uninterrupted one exactly, so the settings that define its data order, network,
numerics or targets must equal the checkpoint's; the rest (more epochs, a later milestone, threads, logging) may
change, and the log says so."""
from __future__ import annotations

import dataclasses
import logging
import random
from typing import Any, Callable, Dict, Iterable, Optional

import numpy as np
import torch

from ..config import ConfigError

logger = logging.getLogger(__name__)

TRAIN_STATE = "pocketnas.train_state"    # a training run's checkpoint.pt
SEARCH_STATE = "pocketnas.search_state"  # a search run's checkpoint.pt
STATE_VERSION = 1


def seed_everything(seed: int) -> None:
    """torch, numpy and Python's generators from one seed (the run's start)."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def rng_state() -> Dict[str, Any]:
    """Every generator's state, as a checkpoint stores it (tensors and plain values: loadable weights-only)."""
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


def check_resume(saved: Any, cfg: Any, path: str, fixed: Optional[Iterable[str]] = None,
                 free: Iterable[str] = ()) -> None:
    """The one resume policy. ``fixed``: the settings that must equal the checkpoint's (None: every setting not in
    ``free``); a difference is refused, naming them. Any other difference is allowed and logged (``free`` ones
    silently). ``precision`` is settled before (:func:`keep_precision`)."""
    free = set(free) | {"precision"}
    changed = {f.name for f in dataclasses.fields(saved) if getattr(saved, f.name) != getattr(cfg, f.name)} - free
    must = changed if fixed is None else changed & set(fixed)
    if must:
        raise ConfigError(f"--resume: {', '.join(sorted(must))} differ from the checkpoint's run ({path}); an "
                          f"exact resume needs the same values")
    if changed:
        logger.warning("--resume: using new values for %s", ", ".join(sorted(changed)))


def keep_precision(cfg: Any, saved: str, path: str, resolve: Callable[[str], str]) -> None:
    """A resumed run computes in the precision its checkpoint recorded (``auto`` here means: that one; checkpoints
    from before the setting resolve ``auto`` as then); asking for another would change an exact resume's numerics,
    and is refused."""
    saved = resolve(saved)
    if cfg.precision not in ("auto", saved):
        raise ConfigError(f"--resume: {path} ran in {saved}; precision={cfg.precision} would change an exact resume "
                          f"(leave precision at auto, or start a new run)")
    cfg.precision = saved
