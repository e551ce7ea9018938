"""Self-describing checkpoints, and loading of plain (original release) state dicts.

A pocketnas checkpoint is a dict of plain values and tensors (so ``torch.load(..., weights_only=True)`` reads it):

    format, format_version, pocketnas_version, arch, kwargs (constructor overrides, JSON-able), genotype,
    embedding_size, input_size, input_norm, weights_sha256, state_dict, meta

``pocketnas.load(path)`` rebuilds the model from that alone. An original release ``backbone.pth`` is a bare state
dict; it loads into a named architecture (``create_model(name, pretrained=path)``) after a key-and-shape check that
names the missing/unexpected keys or the first shape mismatch instead of PyTorch's long traceback.
"""
from __future__ import annotations

import hashlib
import logging
import os
import pickle
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn

from ..atomic import atomic_writer
from ..errors import PocketnasError
from ..genotype import Genotype
from ..image_size import is_size, recorded

logger = logging.getLogger(__name__)

FORMAT = "pocketnas.model"
FORMAT_VERSION = 1


class CheckpointError(PocketnasError, ValueError):
    """A checkpoint that cannot be read, is damaged, or does not fit the requested architecture."""


# ----------------------------------------------------------------------------- kwargs bookkeeping
def jsonable_kwargs(kwargs: Mapping[str, Any]) -> Dict[str, Any]:
    """Constructor overrides as plain values (a Genotype becomes its dict) so a checkpoint can record them."""

    def conv(key: str, v: Any) -> Any:
        if isinstance(v, Genotype):
            return v.to_dict()
        if isinstance(v, (list, tuple)):
            return [conv(key, e) for e in v]
        if isinstance(v, dict):
            return {str(k): conv(key, e) for k, e in v.items()}
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        raise TypeError(f"model argument {key}={v!r} cannot be recorded in a checkpoint "
                        f"(use plain values, lists, dicts or a Genotype)")

    return {k: conv(k, v) for k, v in kwargs.items()}


def builder_kwargs(kwargs: Mapping[str, Any]) -> Dict[str, Any]:
    return dict(kwargs)


def describe(model: nn.Module) -> Dict[str, Any]:
    """What a checkpoint records about ``model`` besides its weights."""
    arch = getattr(model, "pocketnas_arch", None)
    if arch is None:
        raise CheckpointError("this model was not built by pocketnas.create_model, so it cannot describe itself; "
                              "build it with create_model(name, ...)")
    cfg = getattr(model, "pocketnas_cfg", None)
    genotype = getattr(model, "genotype", None)
    return {
        "arch": arch,
        "kwargs": dict(getattr(model, "pocketnas_kwargs", {})),
        "genotype": genotype.to_dict() if isinstance(genotype, Genotype) else None,
        "embedding_size": int(getattr(model, "embedding_size", cfg.embedding_size if cfg else 0)),
        "input_size": recorded(getattr(model, "input_size", cfg.input_size if cfg else 112)),  # int or [h, w]
        "input_norm": getattr(model, "input_norm", cfg.input_norm if cfg else "arcface"),
    }


# ----------------------------------------------------------------------------- hashing and writing
def weights_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor in key order: independent of pickling details."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key]
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"state dict entry {key!r} is not a tensor ({type(t).__name__})")
        t = t.detach().to("cpu").contiguous()
        h.update(key.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def atomic_torch_save(obj: Any, path: str) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: a crash never leaves half a file (the
    temporary is a ``.tmp-*.pt``, which a run folder's next claim removes)."""
    try:
        with atomic_writer(path, suffix=".pt") as f:
            torch.save(obj, f)
    except RuntimeError as e:  # torch's writer reports a full or failing disk as "PytorchStreamWriter failed ..."
        if "PytorchStreamWriter" in str(e) or "write" in str(e).lower():
            from ..errors import OutputError

            raise OutputError(f"{path}: cannot be written ({_first_line(e)}): is the disk full?") from None
        raise


def plain_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The state dict with pruning masks folded in (``weight_orig * weight_mask`` saved as ``weight``), so a pruned
    model saves with the same keys as its architecture."""
    state = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    for key in [k for k in state if k.endswith(".weight_orig")]:
        base = key[: -len("_orig")]
        mask = state.pop(base + "_mask", None)
        orig = state.pop(key)
        state[base] = orig * mask if mask is not None else orig
    own_order = [k.replace("weight_orig", "weight") for k in model.state_dict() if not k.endswith("weight_mask")]
    return {k: state[k].clone() for k in own_order}


def check_finite_state(state: Dict[str, Any], what: str) -> None:
    """Refuse (``DivergedError``) a state dict holding NaN or inf in any floating-point tensor: nothing
    non-finite is ever written as a model, a checkpoint, an export or a release."""
    from ..errors import DivergedError

    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise DivergedError(f"{what}: {key} holds {bad} non-finite value(s) (NaN or inf): the network diverged; "
                                f"nothing was written")


def save(model: nn.Module, path: str, meta: Optional[Dict[str, Any]] = None,
         storage_dtype: Optional[torch.dtype] = None) -> Dict[str, Any]:
    """Save ``model`` as a self-describing pocketnas checkpoint (atomically); returns the record written.

    ``storage_dtype`` (e.g. ``torch.float16``) stores the floating-point tensors at that precision (half the file
    for shipped weights); loading casts them back into the model's own parameters."""
    from ..version import __version__

    state = plain_state_dict(model)
    check_finite_state(state, f"saving {path}")
    if storage_dtype is not None:
        state = {k: v.to(storage_dtype) if v.is_floating_point() else v for k, v in state.items()}
        check_finite_state(state, f"saving {path} as {storage_dtype}")  # beyond float16's range
    record = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "pocketnas_version": __version__,
        **describe(model),
        "weights_sha256": weights_sha256(state),
        "state_dict": state,
        "meta": dict(meta or {}),
    }
    atomic_torch_save(record, path)
    return record


def update_meta(path: str, **values: Any) -> Dict[str, Any]:
    """Add or replace entries of a pocketnas checkpoint's ``meta`` (e.g. the verification threshold chosen on LFW),
    rewriting the file atomically; the weights and their sha256 are untouched. Returns the new meta."""
    record = read_checkpoint(path)
    record["meta"] = {**record.get("meta", {}), **values}
    atomic_torch_save(record, path)
    return record["meta"]


def save_release_state_dict(model: nn.Module, path: str) -> None:
    """Write a bare state dict in the original release's key layout (what its ``backbone.pth`` files are)."""
    state = plain_state_dict(model)
    check_finite_state(state, f"saving {path}")
    atomic_torch_save(state, path)


# ----------------------------------------------------------------------------- reading
def load_weights_file(path: str) -> Any:
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes): an interrupted copy or download?")
    with open(path, "rb") as f:
        head = f.read(64)
    if _looks_like_onnx(head):
        raise CheckpointError(f"{path}: an ONNX model, not a PyTorch file; give it a .onnx name (pocketnas reads "
                              f"ONNX models by their extension)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower() or "weights_only" in str(e):
            raise CheckpointError(f"{path}: holds Python objects besides tensors and plain values; pocketnas never "
                                  f"unpickles those, since unpickling can run code. Where the file comes from a "
                                  f"source you trust, save its state dict alone (torch.save(model.state_dict(), "
                                  f"...)) and load that") from None
        raise CheckpointError(f"{path}: not a readable PyTorch weights file ({_first_line(e)})") from None
    except Exception as e:  # a truncated zip, a foreign file: torch raises several types
        raise CheckpointError(f"{path}: not a readable PyTorch weights file; truncated, or another format "
                              f"({_first_line(e)})") from None


def _looks_like_onnx(head: bytes) -> bool:
    """An ONNX ModelProto starts with its ir_version (field 1 as a varint: 0x08, then a small number) followed by
    another of its fields (producer, domain, doc string, graph, opsets, metadata); PyTorch files start as a zip
    (``PK``) or a pickle (0x80)."""
    return len(head) > 3 and head[0] == 0x08 and 1 <= head[1] <= 15 and \
        head[2] in (0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42, 0x72, 0x7A)


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__


def read_state(path: str, expected_format: str, what: str) -> Dict[str, Any]:
    """A run's resumable state (``checkpoint.pt`` of train or search), refused with a message when it is empty,
    truncated, of another kind or not pocketnas's."""
    obj = load_weights_file(path)
    found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
    if found != expected_format:
        raise CheckpointError(f"{path}: not a {what} (its format is {found!r}, expected {expected_format!r})")
    for key in ("config", "epoch"):
        if key not in obj:
            raise CheckpointError(f"{path}: {what} lacks {key!r}; the file is damaged")
    return obj


def is_pocketnas_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def state_dict_of(obj: Any, path: str) -> Dict[str, torch.Tensor]:
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path}: expected a state dict (name -> tensor), found {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entry {bad[0]!r} is not a tensor; not a state dict")
    if all(k.startswith("module.") for k in obj):  # saved from DistributedDataParallel
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def read_checkpoint(path: str) -> Dict[str, Any]:
    """Read and verify a pocketnas checkpoint record (sha256 of the weights included)."""
    path = os.fspath(path)
    obj = load_weights_file(path)
    if not is_pocketnas_checkpoint(obj):
        raise CheckpointError(f"{path}: not a pocketnas checkpoint (no architecture recorded)")
    check_header(obj, path)
    if obj.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {obj['format_version']} is newer than this pocketnas "
                              f"reads ({FORMAT_VERSION}); upgrade pocketnas")
    for key in ("arch", "kwargs", "state_dict", "weights_sha256"):
        if key not in obj:
            raise CheckpointError(f"{path}: pocketnas checkpoint lacks {key!r}")
    state = state_dict_of(obj["state_dict"], path)
    digest = weights_sha256(state)
    if digest != obj["weights_sha256"]:
        raise CheckpointError(f"{path}: weights sha256 {digest[:16]}... does not match the recorded "
                              f"{str(obj['weights_sha256'])[:16]}...: the file is damaged")
    obj["state_dict"] = state
    return obj


# the header's fields and their types: a wrong type is a damaged or forged file, refused with its name
_HEADER_TYPES = {"arch": str, "kwargs": dict, "weights_sha256": str, "format_version": int, "meta": dict,
                 "embedding_size": int, "input_size": (int, list), "input_norm": str,
                 "genotype": (dict, type(None))}
INPUT_NORMS = ("arcface", "raw255")


def _type_name(tp: Any) -> str:
    return " or ".join(t.__name__ for t in tp if t is not type(None)) if isinstance(tp, tuple) else tp.__name__


def check_header(obj: Dict[str, Any], path: str) -> None:
    """Types of a checkpoint's header fields and the values its ``meta`` records (a decision threshold must be a
    finite cosine in [-1, 1]; sizes positive; the input normalisation one pocketnas knows)."""
    for key, tp in _HEADER_TYPES.items():
        if key in obj and (not isinstance(obj[key], tp) or isinstance(obj[key], bool)):
            raise CheckpointError(f"{path}: header field {key!r} is a {type(obj[key]).__name__}, not "
                                  f"{_type_name(tp)}: the file is damaged or not pocketnas's")
    if "embedding_size" in obj and obj["embedding_size"] < 1:
        raise CheckpointError(f"{path}: header field 'embedding_size' is {obj['embedding_size']}; must be positive")
    if "input_size" in obj and not is_size(obj["input_size"]):
        raise CheckpointError(f"{path}: header field 'input_size' is {obj['input_size']!r}; must be a positive side "
                              f"or [height, width]")
    if "input_norm" in obj and obj["input_norm"] not in INPUT_NORMS:
        raise CheckpointError(f"{path}: input_norm {obj['input_norm']!r} is none of {', '.join(INPUT_NORMS)}")
    verification = obj.get("meta", {}).get("verification")
    if verification is not None:
        value = verification.get("cosine_threshold") if isinstance(verification, dict) else None
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not -1.0 <= float(value) <= 1.0:
            raise CheckpointError(f"{path}: the recorded verification threshold {value!r} is not a cosine in "
                                  f"[-1, 1]; record a measured one (pocketnas eval verify --model {path} --bin "
                                  f"SET.bin --record-threshold) or pass --threshold")


def read_weights(path: Any, expect_arch: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """State dict and recorded constructor kwargs from a pocketnas checkpoint or a bare state dict."""
    path = os.fspath(path)
    obj = load_weights_file(path)
    if is_pocketnas_checkpoint(obj):
        record = read_checkpoint(path)
        if record["arch"] != expect_arch:
            logger.warning("%s holds a %s; loading its weights into %s", path, record["arch"], expect_arch)
            return record["state_dict"], {}
        return record["state_dict"], dict(record["kwargs"])
    return state_dict_of(obj, path), {}


def state_dict_mismatch(model: nn.Module, state: Mapping[str, torch.Tensor]) -> Optional[str]:
    """None when ``state`` fits ``model`` exactly, else a message naming missing/unexpected keys / shape mismatch."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    parts: List[str] = []

    def listing(keys: List[str]) -> str:
        shown = ", ".join(keys[:8])
        return shown + (f", ... ({len(keys) - 8} more)" if len(keys) > 8 else "")

    if missing:
        parts.append(f"{len(missing)} missing keys: {listing(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys: {listing(unexpected)}")
    for k, v in own.items():
        if k in state and tuple(state[k].shape) != tuple(v.shape):
            parts.append(f"first shape mismatch at {k}: checkpoint {tuple(state[k].shape)}, "
                         f"model {tuple(v.shape)}")
            break
    return "; ".join(parts) or None


def load_state_dict_checked(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    problem = state_dict_mismatch(model, state)
    if problem:
        arch = getattr(model, "pocketnas_arch", type(model).__name__)
        raise CheckpointError(f"{source} does not fit {arch}: {problem}")
    model.load_state_dict(state, strict=True)


def file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
