"""One interface for every search method (NASLib's idea): a registered function ``(cfg, out_dir, options) ->
SearchOutcome`` that the command line calls by name, so a new method is one registered function (and its test)
and ``pocketnas search --method`` offers it at once.

* ``darts``: the differentiable cell search (:mod:`pocketnas.engine.search`), a run folder with ``genotype.json``;
* ``random``: genotypes drawn uniformly from the space, within the budget window when one is given (Li and
  Talwalkar, UAI 2019: the baseline a searched cell must beat at equal size);
* ``zero-cost``: the best of N random genotypes by a training-free proxy (Abdelfattah et al., ICLR 2021).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from ..errors import InputError
from ..registry import Registry
from ..nas.baselines import CANDIDATES
from .search import SearchConfig


@dataclass
class SearchOptions:
    """What a method may use besides the search configuration (the command line's options)."""

    resume: bool = False
    overwrite: bool = False
    count: int = 5                     # genotypes written (random, zero-cost)
    candidates: int = 100              # random genotypes scored (zero-cost)
    proxy: str = "naswot"              # the proxy that picks (zero-cost)
    budget_tolerance: float = 0.05     # the budget window, a fraction of the target (random, zero-cost)


@dataclass
class SearchOutcome:
    """``genotypes``: the files written (one per genotype, or the searched one); ``entries``: their names, costs
    and scores (random, zero-cost); ``history``: the DARTS run's history; ``budget``: the window used."""

    method: str
    genotypes: List[str] = field(default_factory=list)
    entries: List[Dict[str, Any]] = field(default_factory=list)
    history: Dict[str, Any] = field(default_factory=dict)
    budget: Optional[Any] = None
    summary: str = ""


SearchMethod = Callable[[SearchConfig, str, SearchOptions], SearchOutcome]
SEARCH_METHODS: Registry[SearchMethod] = Registry("search method")


def run_search(method: str, cfg: SearchConfig, out_dir: str, options: Optional[SearchOptions] = None) -> SearchOutcome:
    """The registered ``method`` on ``cfg`` into ``out_dir``."""
    return SEARCH_METHODS.get(method)(cfg, out_dir, options or SearchOptions())


@SEARCH_METHODS.register("darts")
def darts(cfg: SearchConfig, out_dir: str, options: SearchOptions) -> SearchOutcome:
    from .search import search

    history = search(cfg, out_dir, resume=options.resume, overwrite=options.overwrite)
    return SearchOutcome("darts", [os.path.join(out_dir, "genotype.json")], history=history)


def budget_window(cfg: SearchConfig, tolerance: float):
    """The budget a random or zero-cost search draws within (None without one): the configuration's params or
    FLOPs target at the final network's size, within ``tolerance``."""
    from ..nas.budget import parse_amount
    from ..nas.random_search import Budget

    if not (cfg.budget_params or cfg.budget_flops):
        return None
    return Budget("params" if cfg.budget_params else "flops", parse_amount(cfg.budget_params or cfg.budget_flops),
                  tolerance, cfg.final_channels, cfg.final_layers, cfg.input_size, cfg.embedding_size)


def _claim_candidates(out_dir: str, method: str, overwrite: bool) -> None:
    if os.path.isfile(os.path.join(out_dir, CANDIDATES)) and not overwrite:
        raise InputError(f"{out_dir}: holds an earlier {method} search ({CANDIDATES}); add --overwrite")


def _outcome(method: str, path: str, budget) -> SearchOutcome:
    from ..jsonfile import read_json_object

    entries = read_json_object(path, CANDIDATES)["entries"]
    folder = os.path.dirname(path)
    return SearchOutcome(method, [os.path.join(folder, f"{e['name']}.json") for e in entries
                                  if os.path.isfile(os.path.join(folder, f"{e['name']}.json"))],
                         entries=entries, budget=budget, summary=path)


@SEARCH_METHODS.register("random")
def random(cfg: SearchConfig, out_dir: str, options: SearchOptions) -> SearchOutcome:
    from ..nas.space import load_space
    from ..nas.baselines import random_search

    budget = budget_window(cfg, options.budget_tolerance)
    _claim_candidates(out_dir, "random", options.overwrite)
    return _outcome("random", random_search(load_space(cfg.space), out_dir, options.count, cfg.seed, budget), budget)


@SEARCH_METHODS.register("zero-cost")
def zero_cost(cfg: SearchConfig, out_dir: str, options: SearchOptions) -> SearchOutcome:
    from ..nas.space import load_space
    from ..nas.baselines import zero_cost_search

    if not cfg.data:
        raise InputError("--method zero-cost scores networks on faces: give --data")
    budget = budget_window(cfg, options.budget_tolerance)
    _claim_candidates(out_dir, "zero-cost", options.overwrite)
    path = zero_cost_search(load_space(cfg.space), out_dir, cfg.data, options.candidates, options.count,
                            options.proxy, cfg.seed, budget, cfg.input_size)
    return _outcome("zero-cost", path, budget)
