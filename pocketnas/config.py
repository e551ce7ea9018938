"""Run configurations: flat dataclasses read from YAML (``yaml.safe_load``) with ``--set key=value`` overrides.

Values are checked against the field types; an unknown key or a wrong type is an error naming the key, the file
and what was expected (with close names suggested), never a silent default.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import typing
from typing import Any, Dict, Iterable, List, Optional, Type, TypeVar

import yaml

from .errors import PocketnasError

C = TypeVar("C")

_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


class ConfigError(PocketnasError, ValueError):
    """A configuration file or override that is malformed."""


def _check(value: Any, tp: Any, key: str, source: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check(value, a, key, source)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer() and abs(value) < 2 ** 53:  # 1e3
            return int(value)
    elif tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str) and _FLOAT.match(value.strip()):  # YAML 1.1 reads 1e-3 (no dot) as a string
            number = float(value)
        if number is not None:
            if not math.isfinite(number):  # .nan, .inf: a run would diverge (or never stop) on it
                raise ConfigError(f"{source}: {key} must be a finite number, got {value!r}")
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    elif origin in (list, tuple) or tp in (list, tuple):
        if isinstance(value, (list, tuple)):
            inner = args[0] if args else Any
            return [_check(v, inner, f"{key}[{i}]", source) for i, v in enumerate(value)]
    elif origin is dict or tp is dict:
        if isinstance(value, dict):
            return dict(value)
    else:  # pragma: no cover - field types used here are the ones above
        return value
    name = getattr(tp, "__name__", str(tp))
    raise ConfigError(f"{source}: {key} must be {name}, got {value!r}")


def _fields(cls: Type[Any]) -> Dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def config_from_dict(cls: Type[C], data: Dict[str, Any], source: str = "config") -> C:
    fields = _fields(cls)
    values = {}
    for key, value in data.items():
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"{source}: unknown key {key!r}{hint}")
        values[key] = _check(value, fields[key], key, source)
    obj = cls(**values)
    validate = getattr(obj, "validate", None)
    if validate:
        validate(source)
    return obj


def parse_overrides(overrides: Iterable[str]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, text = item.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: value is not valid YAML ({e})") from None
    return out


# the declarative configurations, by kind: top-level folders of the project (train/, eval/, search_spaces/), which
# setup.py maps into the wheel as pocketnas/train/, pocketnas/eval/, pocketnas/search_spaces/
CONFIG_FOLDERS = {"train": "train", "eval": "eval", "search_spaces": "search_spaces",
                  "search": os.path.join("search_spaces", "recipes")}


def packaged_yaml_dir(kind: str) -> str:
    """The folder of the YAML files of ``kind``: ``train`` (training recipes), ``search`` (search recipes),
    ``eval`` (evaluation sets), ``search_spaces``. Installed from the wheel they sit inside the package; in a
    checkout, at the project's top level (where they are edited)."""
    sub = CONFIG_FOLDERS[kind]
    here = os.path.dirname(os.path.abspath(__file__))
    for base in (here, os.path.dirname(here)):
        folder = os.path.join(base, sub)
        if os.path.isdir(folder):
            return folder
    return os.path.join(here, sub)


def packaged_yaml_names(kind: str) -> List[str]:
    folder = packaged_yaml_dir(kind)
    return sorted(f[:-5] for f in os.listdir(folder) if f.endswith(".yaml")) if os.path.isdir(folder) else []


def resolve_yaml(spec: str, kind: Optional[str] = "train") -> str:
    """``spec`` if it is a file, else the packaged ``kind`` file of that name (``cpu_celeba295`` or
    ``cpu_celeba295.yaml``: see :func:`packaged_yaml_dir`)."""
    if os.path.isfile(spec):
        return spec
    if kind and os.sep not in spec and "/" not in spec:
        name = spec[:-5] if spec.endswith(".yaml") else spec
        candidate = os.path.join(packaged_yaml_dir(kind), f"{name}.yaml")
        if os.path.isfile(candidate):
            return candidate
        known = packaged_yaml_names(kind)
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"{spec}: no such configuration file, and no packaged {kind} configuration of that "
                          f"name{hint} (packaged: {', '.join(known)})")
    raise ConfigError(f"{spec}: no such configuration file")


def load_config(cls: Type[C], path: Optional[str] = None, overrides: Iterable[str] = (),
                extra: Optional[Dict[str, Any]] = None, defaults: Optional[Dict[str, Any]] = None,
                packaged: Optional[str] = "train") -> C:
    """``cls`` from ``defaults``, then the YAML file ``path`` (optional: a file, or the name of a configuration
    of kind ``packaged``, see :func:`packaged_yaml_dir`), then ``extra`` values (command-line options; None means
    not given), then
    ``--set`` overrides: each later source wins."""
    data: Dict[str, Any] = dict(defaults or {})
    if path:
        path = resolve_yaml(path, packaged)
    source = path or "defaults"
    if path:
        with open(path, encoding="utf-8") as f:
            try:
                loaded = yaml.safe_load(f)
            except yaml.YAMLError as e:
                raise ConfigError(f"{path}: not valid YAML ({e})") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of keys to values, got {type(loaded).__name__}")
        data.update(loaded)
    data.update({k: v for k, v in (extra or {}).items() if v is not None})
    parsed = parse_overrides(overrides)
    data.update(parsed)
    if parsed:
        source = f"{source} (with --set {', '.join(parsed)})"
    return config_from_dict(cls, data, source)


def check_device(device: str, source: str) -> None:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``, available on this machine."""
    import torch

    if device == "auto":
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"{source}: device must be auto, cpu, cuda, cuda:N or mps, got {device!r}") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"{source}: device must be auto, cpu, cuda, cuda:N or mps, got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{source}: device {device!r}, but this machine has no CUDA device (use auto or cpu)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"{source}: device {device!r}, but there are {torch.cuda.device_count()} CUDA devices")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{source}: device 'mps' is not available on this machine")


def resolve_device(device: str, cuda_index: int = 0) -> str:
    """``auto`` -> ``cuda:N`` when CUDA is there (N: this process's local rank under torchrun), else ``cpu``; any
    other name as given (check it first with :func:`check_device`)."""
    if device != "auto":
        return device
    import torch

    return f"cuda:{cuda_index}" if torch.cuda.is_available() else "cpu"


def config_to_yaml(obj: Any) -> str:
    return yaml.safe_dump(dataclasses.asdict(obj), sort_keys=False)
