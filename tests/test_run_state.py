"""Issue 40, item 3: one module for a run's state (formats, seeding, RNG state, the resume policy), used by training
and search alike; one test of the resume policy for both."""
from __future__ import annotations

import dataclasses
import logging
import random

import numpy as np
import pytest
import torch

from pocketnas.config import ConfigError
from pocketnas.data import orl_root
from pocketnas.engine.run_state import check_resume, keep_precision, rng_state, seed_everything, set_rng_state
from pocketnas.engine.search import SEARCH_FREE, search_config
from pocketnas.engine.train_config import TrainConfig
from pocketnas.engine.trainer import TRAIN_FIXED
from pocketnas.config import config_from_dict


def _train(**kw):
    return config_from_dict(TrainConfig, {"arch": "pocketnet_s_128", "data": orl_root(), **kw})


def _search(*sets):
    return search_config("pocketnet", None, list(sets), {"data": orl_root()})


@pytest.mark.parametrize("kind", ["train", "search"])
def test_one_resume_policy_for_training_and_search(kind, caplog):
    make, fixed, free = ((_train, TRAIN_FIXED, ()) if kind == "train" else (_search, None, SEARCH_FREE))

    def cfg(**kw):
        return make(**kw) if kind == "train" else make(*(f"{k}={v}" for k, v in kw.items()))

    saved = cfg()
    # what defines the run is refused, naming it
    with pytest.raises(ConfigError, match="seed differ from the checkpoint's run"):
        check_resume(saved, cfg(seed=5), "ckpt.pt", fixed, free)
    # more epochs: allowed (the reason --resume exists)
    with caplog.at_level(logging.WARNING, logger="pocketnas"):
        check_resume(saved, cfg(epochs=saved.epochs + 3), "ckpt.pt", fixed, free)
    # training logs what changed; a search changes only its free settings, silently
    assert ("using new values for epochs" in caplog.text) == (kind == "train")
    # every setting of a search is fixed but the free ones; training lets its schedule change
    other = "w_lr" if kind == "search" else "lr"
    changed = cfg(**{other: 0.0123})
    if kind == "search":
        with pytest.raises(ConfigError, match="w_lr differ"):
            check_resume(saved, changed, "ckpt.pt", fixed, free)
    else:
        check_resume(saved, changed, "ckpt.pt", fixed, free)


def test_every_fixed_training_setting_exists():
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(TRAIN_FIXED) <= names


def test_precision_is_kept_or_refused():
    cfg = _train(precision="auto")
    keep_precision(cfg, "bf16", "c.pt", lambda p: p)
    assert cfg.precision == "bf16"
    with pytest.raises(ConfigError, match="c.pt ran in bf16; precision=fp32"):
        keep_precision(_train(precision="fp32"), "bf16", "c.pt", lambda p: p)


def test_rng_state_round_trips_every_generator():
    seed_everything(3)
    state = rng_state()
    first = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(state)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]
