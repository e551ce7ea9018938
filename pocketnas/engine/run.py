"""What every long run (``Trainer``, ``Searcher``) shares, written once: the process environment (torchrun), the
claimed run folder (:mod:`.run_folder`), the run log (``log.txt``, ``tb/``, ``config.yaml``), an error that ends the
run written to that log, and the close that releases all of it."""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict

from . import distributed as dist_utils
from .run_folder import RunFolder
from .runlog import close_run_log, log_run_failure, open_run_log

logger = logging.getLogger(__name__)


class Run:
    """Base of a run writing into ``out_dir``: subclasses set ``kind`` (``train``, ``search``) and implement
    ``_init(resume)``, which calls :meth:`_setup_logging` once it has checked what can be checked."""

    kind = "train"

    def _start(self, cfg: Any, out_dir: str, resume: bool, overwrite: bool) -> None:
        self.cfg, self.out_dir = cfg, out_dir
        self.tb, self._log_handler = None, None
        self.env = dist_utils.setup(cfg.device)
        self.folder = RunFolder(out_dir, resume, overwrite, self.kind)
        if self.env.is_main:
            self.folder.acquire()
        try:
            self._init(resume)
        except BaseException as e:
            if self._log_handler is not None:
                log_run_failure(e)
            self.close(abandon=True)
            raise

    def _init(self, resume: bool) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def _setup_logging(self) -> None:
        if self.env.is_main:
            self.tb, self._log_handler = open_run_log(self.out_dir, self.cfg)
            if self.env.process_group:
                import torch.distributed as dist

                logger.info("torch.distributed: %s process group of %d on %s", dist.get_backend(),
                            self.env.world_size, self.env.device)

    def close(self, abandon: bool = False) -> None:
        """Close the log and release the folder; ``abandon``: the set-up failed, so remove what it wrote (see
        :meth:`RunFolder.abandon_setup`) once the log is closed."""
        close_run_log(self.tb, self._log_handler)
        self.tb, self._log_handler = None, None
        if abandon and self.env.is_main:
            self.folder.abandon_setup()
        self.folder.release()
        dist_utils.teardown(self.env)


def run_to_end(run: Run, work: Callable[[], Dict[str, Any]]) -> Dict[str, Any]:
    """``work()`` (the run's loop); an error that ends it goes to the run's log, and the run is closed."""
    failed = True
    try:
        result = work()
        failed = False
        return result
    except BaseException as e:
        if run.env.is_main:
            log_run_failure(e)
        raise
    finally:
        run.close(abandon=failed)  # a run that failed before its first checkpoint leaves nothing blocking a retry
