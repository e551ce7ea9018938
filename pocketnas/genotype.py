"""The one genotype type: an immutable description of a normal and a reduction cell.

A genotype lists, for each intermediate node of a cell, the (operation, input index) pairs it keeps; inputs 0 and
1 are the cell's two inputs (outputs of the two previous cells), 2.. the earlier nodes. This is the notation of
DARTS (Liu et al., ICLR 2019) and of PocketNet (Boutros et al., IEEE Access 2022).

Genotypes are read from JSON, or from the legacy text form the original code wrote
(``Genotype(normal=[[('dw_conv_3x3', 0), ...]], normal_concat=range(2, 6), ...)``) by a restricted parser that walks
the syntax tree and accepts only literals, lists/tuples, ``range(int, int)`` and the ``Genotype(...)`` call. Nothing
in the string is ever executed.
"""
from __future__ import annotations

import ast
import json
import os
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Optional, Sequence, Tuple, Union

from .errors import PocketnasError

Edge = Tuple[str, int]
Node = Tuple[Edge, ...]
CellSpec = Tuple[Node, ...]

FIELDS = ("normal", "normal_concat", "reduce", "reduce_concat")


class GenotypeError(PocketnasError, ValueError):
    """A genotype string, file or value that is malformed or invalid."""


@dataclass(frozen=True)
class Genotype:
    normal: CellSpec
    normal_concat: Tuple[int, ...]
    reduce: CellSpec
    reduce_concat: Tuple[int, ...]

    def __post_init__(self) -> None:
        for name in ("normal", "reduce"):
            object.__setattr__(self, name, _as_cell(getattr(self, name), name))
        for name in ("normal_concat", "reduce_concat"):
            object.__setattr__(self, name, _as_concat(getattr(self, name), name))

    # ----------------------------------------------------------------- validation
    def validate(self, ops: Optional[Iterable[str]] = None, inputs_per_node: int = 2) -> "Genotype":
        """Check op names (against ``ops``, default the operation registry), input indices and node arity."""
        if ops is None:
            from .layers.ops import OPS

            known = set(OPS.names())
        else:
            known = set(ops)
        for cell_name in ("normal", "reduce"):
            cell = getattr(self, cell_name)
            if not cell:
                raise GenotypeError(f"genotype {cell_name} cell has no nodes")
            for i, node in enumerate(cell):
                where = f"{cell_name} cell, node {i}"
                if inputs_per_node and len(node) != inputs_per_node:
                    raise GenotypeError(f"{where}: expected {inputs_per_node} inputs per node, got {len(node)}")
                for op, idx in node:
                    if op == "none":
                        raise GenotypeError(f"{where}: 'none' cannot be a kept edge of a derived genotype")
                    if op not in known:
                        raise GenotypeError(f"{where}: unknown operation {op!r} (known: {', '.join(sorted(known))})")
                    if not 0 <= idx < 2 + i:
                        raise GenotypeError(f"{where}: input index {idx} out of range 0..{1 + i}")
            concat = getattr(self, f"{cell_name}_concat")
            if not concat:
                raise GenotypeError(f"genotype {cell_name}_concat is empty")
            for idx in concat:
                if not 0 <= idx < 2 + len(cell):
                    raise GenotypeError(f"{cell_name}_concat index {idx} out of range 0..{1 + len(cell)}")
        return self

    @property
    def nodes(self) -> int:
        return len(self.normal)

    # ----------------------------------------------------------------- JSON
    def to_dict(self) -> Dict[str, Any]:
        return {
            "normal": [[[op, idx] for op, idx in node] for node in self.normal],
            "normal_concat": list(self.normal_concat),
            "reduce": [[[op, idx] for op, idx in node] for node in self.reduce],
            "reduce_concat": list(self.reduce_concat),
        }

    @classmethod
    def from_dict(cls, data: Any) -> "Genotype":
        if not isinstance(data, dict):
            raise GenotypeError(f"a genotype must be a JSON object, not {type(data).__name__}")
        missing = [f for f in FIELDS if f not in data]
        extra = sorted(set(data) - set(FIELDS))
        if missing or extra:
            raise GenotypeError(f"genotype object: missing fields {missing}, unexpected fields {extra}")
        return cls(**{f: data[f] for f in FIELDS})

    def to_json(self, indent: Optional[int] = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text_or_path: Union[str, os.PathLike]) -> "Genotype":
        """Parse JSON text, or read a ``.json`` file (e.g. a search's ``genotype.json``)."""
        text = str(text_or_path)
        source = "genotype JSON"
        if not text.lstrip().startswith("{"):
            source = text
            with open(text, encoding="utf-8") as f:
                text = f.read()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise GenotypeError(f"{source}: not valid JSON ({e})") from None
        if isinstance(data, dict) and "genotype" in data and isinstance(data["genotype"], dict):
            data = data["genotype"]  # a search result file may wrap it
        return cls.from_dict(data)

    # ----------------------------------------------------------------- legacy text form
    def to_legacy(self) -> str:
        """The DARTS/PocketNet text form (readable by the original code and by :meth:`from_legacy`)."""

        def cell(c: CellSpec) -> str:
            return "[" + ", ".join("[" + ", ".join(f"({op!r}, {idx})" for op, idx in node) + "]" for node in c) + "]"

        def concat(c: Tuple[int, ...]) -> str:
            if list(c) == list(range(c[0], c[-1] + 1)):
                return f"range({c[0]}, {c[-1] + 1})"
            return repr(list(c))

        return (f"Genotype(normal={cell(self.normal)}, normal_concat={concat(self.normal_concat)}, "
                f"reduce={cell(self.reduce)}, reduce_concat={concat(self.reduce_concat)})")

    @classmethod
    def from_legacy(cls, text: str) -> "Genotype":
        """Parse the legacy text form without evaluating it (see the module docstring)."""
        try:
            tree = ast.parse(text.strip(), mode="eval")
        except SyntaxError as e:
            raise GenotypeError(f"genotype string is not valid syntax: {e.msg} at column {e.offset}") from None
        call = tree.body
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "Genotype"):
            raise GenotypeError(f"genotype string must be a single Genotype(...) call, found {_describe(call)}")
        if call.args:
            if len(call.args) > len(FIELDS) or call.keywords and len(call.args) + len(call.keywords) > len(FIELDS):
                raise GenotypeError("Genotype(...) takes at most 4 arguments")
        values: Dict[str, Any] = {}
        for name, node in zip(FIELDS, call.args):
            values[name] = _literal(node)
        for kw in call.keywords:
            if kw.arg not in FIELDS:
                raise GenotypeError(f"Genotype(...) has no field {kw.arg!r} (fields: {', '.join(FIELDS)})")
            if kw.arg in values:
                raise GenotypeError(f"Genotype(...) field {kw.arg!r} given twice")
            values[kw.arg] = _literal(kw.value)
        missing = [f for f in FIELDS if f not in values]
        if missing:
            raise GenotypeError(f"Genotype(...) is missing {', '.join(missing)}")
        return cls(**values)

    def __str__(self) -> str:
        return self.to_legacy()


def _describe(node: ast.AST) -> str:
    if isinstance(node, ast.Call):
        return f"a call to {ast.unparse(node.func)!r}"
    if isinstance(node, ast.Attribute):
        return f"an attribute access {ast.unparse(node)!r}"
    if isinstance(node, ast.Name):
        return f"the name {node.id!r}"
    return f"{type(node).__name__} {ast.unparse(node)[:60]!r}"


def _literal(node: ast.AST) -> Any:
    """Turn an allowed expression node into a value; refuse everything else (nothing is ever evaluated)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, int)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(e) for e in node.elts]
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range"
            and not node.keywords and 1 <= len(node.args) <= 2):
        bounds = [_literal(a) for a in node.args]
        if not all(isinstance(b, int) for b in bounds) or any(abs(b) > 1000 for b in bounds):
            raise GenotypeError("range(...) in a genotype takes small integer bounds only")
        return list(range(*bounds))
    line = getattr(node, "lineno", "?")
    col = getattr(node, "col_offset", "?")
    raise GenotypeError(
        f"genotype string may contain only strings, integers, lists, tuples and range(a, b); "
        f"found {_describe(node)} at line {line}, column {col}: refused, nothing was executed")


def _as_cell(value: Any, name: str) -> CellSpec:
    if not isinstance(value, (list, tuple)):
        raise GenotypeError(f"genotype {name} must be a list of nodes, not {type(value).__name__}")
    items = list(value)
    # The original DARTS form is a flat list of (op, index) pairs, two per node.
    if items and all(_is_edge(e) for e in items):
        if len(items) % 2:
            raise GenotypeError(f"genotype {name}: a flat edge list needs two edges per node, got {len(items)}")
        items = [items[i:i + 2] for i in range(0, len(items), 2)]
    cell = []
    for i, node in enumerate(items):
        if not isinstance(node, (list, tuple)) or not all(_is_edge(e) for e in node):
            raise GenotypeError(f"genotype {name}, node {i}: expected a list of (operation, input) pairs, "
                                f"got {node!r}")
        cell.append(tuple((str(op), int(idx)) for op, idx in node))
    return tuple(cell)


def _is_edge(e: Any) -> bool:
    return (isinstance(e, (list, tuple)) and len(e) == 2 and isinstance(e[0], str)
            and isinstance(e[1], int) and not isinstance(e[1], bool))


def _as_concat(value: Any, name: str) -> Tuple[int, ...]:
    if isinstance(value, range):
        value = list(value)
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                        for v in value):
        raise GenotypeError(f"genotype {name} must be a list of node indices, got {value!r}")
    return tuple(value)


# ----------------------------------------------------------------------------- published genotypes
PUBLISHED: Dict[str, Genotype] = {
    # PocketNet's cells, searched with DARTS on CASIA-WebFace; every released PocketNet uses them.
    "pocketnet_casia": Genotype(
        normal=[[("dw_conv_3x3", 0), ("dw_conv_1x1", 1)], [("dw_conv_3x3", 2), ("dw_conv_5x5", 0)],
                [("dw_conv_3x3", 3), ("dw_conv_3x3", 0)], [("dw_conv_3x3", 4), ("skip_connect", 0)]],
        normal_concat=range(2, 6),
        reduce=[[("dw_conv_3x3", 1), ("dw_conv_7x7", 0)], [("skip_connect", 2), ("dw_conv_5x5", 1)],
                [("max_pool_3x3", 0), ("skip_connect", 2)], [("max_pool_3x3", 0), ("max_pool_3x3", 1)]],
        reduce_concat=range(2, 6)),
    # The release's comparison genotype, searched on CIFAR-10 ("softmax_cifar10").
    "pocketnet_cifar10": Genotype(
        normal=[[("dw_conv_7x7", 0), ("dw_conv_3x3", 1)], [("dw_conv_1x1", 1), ("dw_conv_1x1", 2)],
                [("max_pool_3x3", 2), ("dw_conv_7x7", 3)], [("dw_conv_5x5", 4), ("max_pool_3x3", 0)]],
        normal_concat=range(2, 6),
        reduce=[[("max_pool_3x3", 0), ("dw_conv_7x7", 1)], [("max_pool_3x3", 0), ("max_pool_3x3", 1)],
                [("max_pool_3x3", 0), ("max_pool_3x3", 2)], [("max_pool_3x3", 0), ("max_pool_3x3", 1)]],
        reduce_concat=range(2, 6)),
}


def genotype_agreement(a: "Genotype", b: "Genotype") -> Dict[str, Dict[str, float]]:
    """How far two genotypes of one space differ, per cell and overall (the search-reproducibility question of Li
    and Talwalkar, "Random Search and Reproducibility for NAS", UAI 2019: does the same search with another seed
    derive the same cell?). Each figure is the fraction of the first genotype's edges kept by the second:

    * ``edges``: the same operation on the same input of the same node;
    * ``inputs``: the same input of the same node, whatever the operation (the cell's wiring);
    * ``ops``: the operations as a multiset over the cell, wherever they sit (the histogram intersection).

    1.0 for identical cells; where the first cell has nodes the second lacks, their edges count as not kept."""
    from collections import Counter

    out: Dict[str, Dict[str, float]] = {}
    for cell in ("normal", "reduce"):
        ca, cb = getattr(a, cell), getattr(b, cell)
        total = sum(len(node) for node in ca)
        edges = inputs = 0
        for na, nb in zip(ca, cb):
            edges += sum((Counter(na) & Counter(nb)).values())
            inputs += sum((Counter(i for _, i in na) & Counter(i for _, i in nb)).values())
        shared = Counter(op for node in ca for op, _ in node) & Counter(op for node in cb for op, _ in node)
        ops = sum(shared.values())
        out[cell] = {"edges": edges / total, "inputs": inputs / total, "ops": ops / total}
    out["both"] = {k: (out["normal"][k] + out["reduce"][k]) / 2 for k in ("edges", "inputs", "ops")}
    return out


def list_genotypes() -> Sequence[str]:
    return sorted(PUBLISHED)


def get_genotype(spec: Union[str, os.PathLike, Dict[str, Any], Genotype]) -> Genotype:
    """A genotype from a published name, a ``.json`` file, a text file or string in the legacy form, or a dict."""
    if isinstance(spec, Genotype):
        return spec
    if isinstance(spec, dict):
        return Genotype.from_dict(spec)
    text = str(spec)
    if text in PUBLISHED:
        return PUBLISHED[text]
    stripped = text.lstrip()
    if stripped.startswith("{"):
        return Genotype.from_json(text)
    if stripped.startswith("Genotype"):
        return Genotype.from_legacy(text)
    if os.path.isfile(text):
        with open(text, encoding="utf-8") as f:
            content = f.read()
        try:
            if content.lstrip().startswith("{"):
                return Genotype.from_json(content)
            return Genotype.from_legacy(content)
        except GenotypeError as e:
            raise GenotypeError(f"{text}: {e}") from None
    if "(" in text:  # something code-like: the restricted parser explains what it refuses
        return Genotype.from_legacy(text)
    raise GenotypeError(f"{text!r} is neither a published genotype ({', '.join(PUBLISHED)}), a genotype file, "
                        f"JSON, nor a Genotype(...) string")
