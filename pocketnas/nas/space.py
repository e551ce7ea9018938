"""Search spaces as data: ``search_spaces/*.yaml`` read with ``yaml.safe_load`` and checked against the one
operation registry, with messages that name the file and the bad key."""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

import yaml

from ..layers import ACTIVATIONS, OPS
from ..errors import InputError, MissingFileError

KEYS = ("name", "operations", "activation", "nodes", "inputs_per_node", "defaults")
# what a space does not choose: the network frame around its cells is PocketNet's (pocketnas.models.pocketnet:
# reductions at n//3, 2n//3 and n-1, MobileFaceNet's tail), for the supernet and the final network alike
FRAME_KEYS = ("reductions", "tail")


class SearchSpaceError(InputError):
    """A search-space file that is malformed or names unknown operations."""


@dataclass(frozen=True)
class SearchSpace:
    name: str
    operations: Tuple[str, ...]
    activation: str = "prelu"
    nodes: int = 4
    inputs_per_node: int = 2
    defaults: Dict[str, Any] = field(default_factory=dict)
    path: str = ""

    def reduction_layers(self, layers: int) -> List[int]:
        from ..models.pocketnet import reduction_layers

        return reduction_layers(layers)

    @property
    def edges_per_cell(self) -> int:
        return sum(2 + i for i in range(self.nodes))


def search_space_dirs() -> List[str]:
    """Where named spaces live: the project's ``search_spaces/`` (inside the package once installed)."""
    from ..config import packaged_yaml_dir

    return [packaged_yaml_dir("search_spaces")]


def resolve_space(spec: str) -> str:
    if os.path.isfile(spec):
        return spec
    for folder in search_space_dirs():
        candidate = os.path.join(folder, f"{spec}.yaml")
        if os.path.isfile(candidate):
            return candidate
    raise MissingFileError(f"{spec}: no such search-space file, and no built-in space of that name "
                            f"(built in: pocketnet, darts)")


def load_space(spec: str) -> SearchSpace:
    path = resolve_space(spec)
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise SearchSpaceError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise SearchSpaceError(f"{path}: expected a mapping of keys to values")
    for key in data:
        if key in FRAME_KEYS:
            raise SearchSpaceError(f"{path}: {key!r} is not a space's choice: every space sits in PocketNet's frame "
                                   f"(reductions at n//3, 2n//3 and n-1, MobileFaceNet's tail); remove the key")
        if key not in KEYS:
            close = difflib.get_close_matches(str(key), KEYS, n=2)
            raise SearchSpaceError(f"{path}: unknown key {key!r}" + (f"; did you mean {', '.join(close)}?"
                                                                      if close else ""))
    ops = data.get("operations")
    if not isinstance(ops, list) or not ops or not all(isinstance(o, str) for o in ops):
        raise SearchSpaceError(f"{path}: operations must be a non-empty list of operation names")
    for i, op in enumerate(ops):
        if op not in OPS:
            raise SearchSpaceError(f"{path}: operations[{i}]: {OPS.unknown_message(op)}")
    if len(set(ops)) != len(ops):
        raise SearchSpaceError(f"{path}: operations lists an operation twice")
    if [o for o in ops if o != "none"] == []:
        raise SearchSpaceError(f"{path}: operations needs at least one operation besides none")
    act = data.get("activation", "prelu")
    if act not in ACTIVATIONS:
        raise SearchSpaceError(f"{path}: activation must be one of {', '.join(ACTIVATIONS)}, got {act!r}")
    for key in ("nodes", "inputs_per_node"):
        value = data.get(key, 4 if key == "nodes" else 2)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise SearchSpaceError(f"{path}: {key} must be a positive integer, got {value!r}")
    if data.get("inputs_per_node", 2) > 2:
        raise SearchSpaceError(f"{path}: inputs_per_node must be 1 or 2 (the first node has only two inputs)")
    defaults = data.get("defaults", {}) or {}
    if not isinstance(defaults, dict):
        raise SearchSpaceError(f"{path}: defaults must be a mapping")
    return SearchSpace(name=str(data.get("name", os.path.splitext(os.path.basename(path))[0])),
                       operations=tuple(ops), activation=act, nodes=data.get("nodes", 4),
                       inputs_per_node=data.get("inputs_per_node", 2), defaults=dict(defaults), path=path)
