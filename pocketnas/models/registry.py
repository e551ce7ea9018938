"""The model registry (timm's ``_registry``): one short registration function per variant, and a frozen
configuration describing it (no download links: pocketnas never fetches weights). Model modules register by being
imported from :mod:`pocketnas.models`; building goes through :func:`pocketnas.models.factory.create_model`.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from ..registry import Registry


@dataclass(frozen=True)
class PretrainedCfg:
    """Weights that ship inside the package for a variant, in the manner of timm's ``pretrained_cfg``: the file
    (under ``pocketnas/assets/weights/``, or the ``POCKETNAS_WEIGHTS`` folder), its sha256 (checked before every
    load: a tampered file is refused), and what a user must know before trusting it: the data and teacher it was
    trained with, the recipe, the input normalisation, its measured verification accuracy and the data's licence.
    pocketnas never downloads anything."""

    file: str
    sha256: str
    data: str
    teacher: str
    recipe: str
    input_norm: str = "arcface"
    lfw_accuracy: Optional[float] = None        # 10-fold, no flip, as ``pocketnas eval verify --no-flip``
    lfw_accuracy_flip: Optional[float] = None
    paper_lfw_accuracy: Optional[float] = None  # what the paper reports (other data, other budget)
    threshold: Optional[float] = None           # cosine at which two faces are one person (chosen on LFW's folds)
    licence: str = ""
    notes: str = ""


@dataclass(frozen=True)
class ModelCfg:
    """What a registered variant is: the facts a user (and a checkpoint) needs besides the weights, and its
    shipped weights (``pretrained``) when it has some."""

    family: str
    embedding_size: int
    input_size: int = 112
    input_norm: str = "arcface"
    paper: str = ""
    description: str = ""
    reference_params: Optional[int] = None
    reference_mflops: Optional[float] = None
    pretrained: Optional[PretrainedCfg] = None
    tags: tuple = field(default_factory=tuple)


_MODELS: Registry[Callable[..., Any]] = Registry("model")
_CFGS: Dict[str, ModelCfg] = {}


def register_model(cfg: ModelCfg) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a model builder ``fn(**overrides) -> nn.Module`` under its function name."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        _MODELS.register(fn.__name__)(fn)
        _CFGS[fn.__name__] = cfg
        return fn

    return deco


def list_models(pattern: str = "*") -> List[str]:
    """Registered model names matching a shell-style ``pattern``, sorted."""
    return [n for n in _MODELS.names() if fnmatch.fnmatch(n, pattern)]


def model_cfg(name: str) -> ModelCfg:
    _MODELS.get(name)  # raises the friendly KeyError
    return _CFGS[name]


def is_model(name: str) -> bool:
    return name in _MODELS


def model_builder(name: str) -> Callable[..., Any]:
    """The registered function that builds ``name`` (an error listing close names if there is none)."""
    return _MODELS.get(name)
