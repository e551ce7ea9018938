"""What every run folder gets on its main process: ``log.txt`` (the pocketnas loggers), ``tb/`` (TensorBoard) and
``config.yaml`` (the final configuration)."""
from __future__ import annotations

import logging
import os
from typing import Any, Optional, Tuple

from ..config import config_to_yaml


DETAIL = "pocketnas.detail"  # messages for a run's log.txt only (e.g. every alpha of every edge)


def open_run_log(out_dir: str, config: Any) -> Tuple[Any, logging.Handler]:
    os.makedirs(out_dir, exist_ok=True)
    handler = logging.FileHandler(os.path.join(out_dir, "log.txt"))
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger("pocketnas")
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    detail = logging.getLogger(DETAIL)  # the run's log keeps it; the console does not (it does not propagate)
    detail.propagate = False
    detail.setLevel(logging.INFO)
    detail.addHandler(handler)
    from torch.utils.tensorboard import SummaryWriter

    tb = SummaryWriter(os.path.join(out_dir, "tb"))
    with open(os.path.join(out_dir, "config.yaml"), "w", encoding="utf-8") as f:
        f.write(config_to_yaml(config))
    return tb, handler


def close_run_log(tb: Optional[Any], handler: Optional[logging.Handler]) -> None:
    if tb is not None:
        tb.close()
    if handler is not None:
        logging.getLogger("pocketnas").removeHandler(handler)
        logging.getLogger(DETAIL).removeHandler(handler)
        handler.close()


def log_run_failure(error: BaseException) -> None:
    """Put what ended a run into its log (``log.txt`` while the run's handler is attached): pocketnas's own
    errors as their message, anything else (a bug) with its traceback."""
    from ..errors import PocketnasError

    log = logging.getLogger("pocketnas")
    if isinstance(error, KeyboardInterrupt):
        log.error("run interrupted (KeyboardInterrupt)")
    elif isinstance(error, PocketnasError):
        log.error("run failed: %s", error)
    else:
        log.error("run failed", exc_info=(type(error), error, error.__traceback__))
