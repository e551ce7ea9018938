"""Building models (timm's ``_factory``): :func:`create_model` from the registry, optionally with weights, and
:func:`load` of a pocketnas checkpoint or an original release ``backbone.pth``."""
from __future__ import annotations

import logging
import os
from typing import Any, List, Mapping, Optional

import torch
import torch.nn as nn

from . import checkpoint as ckpt
from .checkpoint import (CheckpointError, state_dict_of, load_weights_file, file_digest, is_pocketnas_checkpoint,
                         read_checkpoint, state_dict_mismatch)
from .registry import is_model, list_models, model_builder, model_cfg
from ..errors import MissingFileError

logger = logging.getLogger(__name__)


def create_model(name: str, pretrained: Any = None, **overrides: Any):
    """Build the registered model ``name`` (see ``list_models()``).

    Args:
        name: a registry name, e.g. ``pocketnet_s_128``.
        pretrained: None for fresh weights; ``True`` for the weights that ship with the package
            (``model_cfg(name).pretrained``, sha256-checked, never downloaded); or a path to a pocketnas checkpoint
            (its recorded constructor arguments apply unless overridden here) or to an original release
            ``backbone.pth`` state dict.
        **overrides: constructor arguments (``genotype``, ``embedding_size``, ``input_size``, ...).

    Returns:
        The ``nn.Module``, describing itself (``pocketnas_arch``, ``pocketnas_cfg``) for checkpoints and exports.

    Loading never unpickles arbitrary objects (``weights_only=True``); a checkpoint of another architecture is
    refused with the missing/unexpected keys or the first shape mismatch.
    """
    builder = model_builder(name)
    cfg = model_cfg(name)
    state = None
    if pretrained is True:
        pretrained = registered_weights_path(name, cfg)
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


def matching_architectures(state: Mapping[str, torch.Tensor]) -> List[str]:
    """Registered models whose default build has exactly these keys and shapes (built on the meta device)."""
    found = []
    for name in list_models():
        if "generic" in model_cfg(name).tags:
            continue
        with torch.device("meta"):
            try:
                model = create_model(name)
            except Exception:  # pragma: no cover - a builder that cannot run on meta
                continue
        if state_dict_mismatch(model, state) is None:
            found.append(name)
    return found


def load(path: str, arch: Optional[str] = None, **overrides: Any) -> nn.Module:
    """Rebuild a model from a file.

    Args:
        path: a pocketnas checkpoint (``pocketnas.save``, a run's ``model.pt``), or a bare state dict (an original
            release ``backbone.pth``) when ``arch`` is given.
        arch: the registry name of a bare state dict's network (a checkpoint records its own).
        **overrides: constructor arguments that replace the recorded ones.

    Returns:
        The network in eval mode, with its weights (sha256-checked for a checkpoint; loaded ``weights_only``).
    """
    path = os.fspath(path)
    obj = load_weights_file(path)
    if is_pocketnas_checkpoint(obj):
        record = read_checkpoint(path)
        return create_model(arch or record["arch"], pretrained=path, **overrides).eval()
    if arch is None:
        state = state_dict_of(obj, path)
        fits = matching_architectures(state)
        hint = (f"its keys and shapes fit: {', '.join(fits)}" if fits
                else "its keys and shapes fit no registered model with default settings")
        raise CheckpointError(f"{path} is a bare state dict with no architecture recorded ({hint}); load it with "
                              f"pocketnas.load(path, arch=NAME) or create_model(NAME, pretrained=path); on the "
                              f"command line, add --arch NAME")
    return create_model(arch, pretrained=path, **overrides).eval()


def require_trained(spec: str, pretrained: Optional[str], role: str) -> None:
    """Refuse a registry name that would come with random weights (none ship, none given) where trained weights
    are what the job needs (``role``: "its verdict", "distilling from it"): the result would look like one and mean
    nothing. Files and names with shipped weights pass."""
    from ..errors import InputError

    if os.path.exists(spec) or not is_model(spec) or pretrained or model_cfg(spec).pretrained is not None:
        return
    shipped = [n for n in list_models() if model_cfg(n).pretrained is not None]
    raise InputError(f"{spec}: no weights ship for it, so {role} would come from random weights; give a trained "
                     f"model: a checkpoint (pocketnas train writes model.pt), an .onnx file, --pretrained FILE, or "
                     f"a variant with shipped weights ({', '.join(shipped) or 'none'})")


def load_model(spec: str, arch: Optional[str] = None, pretrained: Optional[str] = None) -> nn.Module:
    """A model from a file (pocketnas checkpoint, or a bare state dict with ``arch``) or a registry name, in eval
    mode. A registry name loads ``pretrained`` weights when given, else the weights shipped with the package when
    the variant has some (what a command line user evaluating ``pocketnet_s_128`` means), else random weights (said
    in the log: only cost measurements make sense then)."""
    if os.path.exists(spec):
        return load(spec, arch=arch)
    if is_model(spec):
        if pretrained is None and model_cfg(spec).pretrained is not None:
            pretrained = True
        if not pretrained:
            logger.warning("%s: no weights given and none ship with the package: random initial weights", spec)
        return create_model(spec, pretrained=pretrained).eval()
    raise MissingFileError(f"{spec}: neither a file nor a registered model (see `pocketnas models`)")


def registered_weights_path(name: str, cfg: Any) -> str:
    """The local file of a variant's shipped weights (package assets, or the ``POCKETNAS_WEIGHTS`` folder first),
    after checking its sha256 against the variant's pretrained configuration."""
    pre = getattr(cfg, "pretrained", None)
    if pre is None:
        have = [n for n in list_models() if model_cfg(n).pretrained is not None]
        raise CheckpointError(f"no pretrained weights ship for {name} (models with weights: "
                              f"{', '.join(have) or 'none'}); pass pretrained=PATH to a pocketnas checkpoint or an "
                              f"original backbone.pth")
    folders = [os.environ.get("POCKETNAS_WEIGHTS", ""),
               os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "weights")]
    for folder in folders:
        candidate = os.path.join(folder, pre.file) if folder else ""
        if candidate and os.path.isfile(candidate):
            digest = file_digest(candidate)
            if digest != pre.sha256:
                raise CheckpointError(f"{candidate}: sha256 {digest} differs from the one registered for {name} "
                                      f"({pre.sha256}): the file was altered or replaced; refusing to load it "
                                      f"(reinstall pocketnas to restore it)")
            return candidate
    raise CheckpointError(f"weights file {pre.file} for {name} not found in the package or $POCKETNAS_WEIGHTS")
