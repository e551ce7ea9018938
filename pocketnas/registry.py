"""Name -> object tables, and the model registry (``register_model`` / ``create_model`` / ``list_models``).

The model half follows timm's pattern: one short registration function per variant, a frozen pretrained-config
dataclass describing the variant (no download links: pocketnas never fetches weights), and a single
``create_model`` entry point that builds, records how it was built, and optionally loads weights.
"""
from __future__ import annotations

import difflib
import fnmatch
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Generic, Iterator, List, Optional, TypeVar

from .errors import UnknownNameError

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Registry(Generic[T]):
    """A small table from names to builders (operations, losses, normalisations, models)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: Dict[str, T] = {}

    def register(self, name: Optional[str] = None) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            key = name or getattr(obj, "__name__")
            if key in self._items:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._items[key] = obj
            return obj

        return deco

    def add(self, name: str, obj: T) -> None:
        self.register(name)(obj)

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def unknown_message(self, name: object) -> str:
        close = difflib.get_close_matches(str(name), list(self._items), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        return f"unknown {self.kind} {name!r}{hint} (known: {', '.join(sorted(self._items))})"

    def names(self) -> List[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)


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


def _ensure_builtin_models() -> None:
    # Importing the model modules runs their @register_model decorators (nothing else happens at import).
    from .models import iresnet, mobilefacenet, pocketnet  # noqa: F401


def list_models(pattern: str = "*") -> List[str]:
    """Registered model names matching a shell-style ``pattern``, sorted."""
    _ensure_builtin_models()
    return [n for n in _MODELS.names() if fnmatch.fnmatch(n, pattern)]


def model_cfg(name: str) -> ModelCfg:
    _ensure_builtin_models()
    _MODELS.get(name)  # raises the friendly KeyError
    return _CFGS[name]


def is_model(name: str) -> bool:
    _ensure_builtin_models()
    return name in _MODELS


def create_model(name: str, pretrained: Any = None, **overrides: Any):
    """Build registered model ``name``; ``overrides`` change its constructor arguments.

    ``pretrained`` may be a path to a pocketnas checkpoint (its recorded constructor arguments are used unless
    overridden here), a path to an original release ``backbone.pth`` state dict, or ``True`` for the weights that
    ship with the package (``model_cfg(name).pretrained``; sha256-checked). Loading never unpickles arbitrary objects (``weights_only=True``), and a
    checkpoint of another architecture is refused with the missing/unexpected keys or the first shape mismatch.
    """
    from .models import checkpoint as ckpt

    _ensure_builtin_models()
    builder = _MODELS.get(name)
    cfg = _CFGS[name]
    state = None
    if pretrained is True:
        pretrained = ckpt.registered_weights_path(name, cfg)
    if pretrained:
        state, recorded = ckpt.read_weights(pretrained, expect_arch=name)
        overrides = {**recorded, **overrides}
    model = builder(**ckpt.builder_kwargs(overrides))
    record = getattr(model, "recorded_kwargs", None)  # a model may resolve names (e.g. a genotype) to values
    model.pocketnas_arch = name
    model.pocketnas_kwargs = ckpt.jsonable_kwargs(record(overrides) if record else overrides)
    model.pocketnas_cfg = cfg
    if state is not None:
        ckpt.load_state_dict_checked(model, state, source=str(pretrained))
        logger.info("loaded %s weights from %s", name, pretrained)
    return model
