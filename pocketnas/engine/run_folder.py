"""One mechanism for every command that writes a run folder (``train``, ``search``, ``demo``, ``prune``):

* a folder that already holds a run is refused unless the run is continued (``--resume``) or replaced
  (``--overwrite``, which removes what pocketnas wrote there and nothing else);
* the folder is locked for the run's life (an ``flock`` on ``.pocketnas.lock``, which also records the holder's
  process id, host, start time and command): a second run into it is refused and told who holds it; a lock left
  by a process that is gone is taken over with a warning (the kernel drops an ``flock`` when its process dies,
  so a ``kill -9`` never leaves a folder locked);
* temporaries of an interrupted atomic write (``.tmp-*.pt``) are removed.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import sys
import time
from typing import List

from ..config import ConfigError

logger = logging.getLogger(__name__)

LOCK_NAME = ".pocketnas.lock"
# per command: (files whose presence means "a run lives here", everything that command writes there). --overwrite
# removes the second list and nothing else, so files of the user's own in the folder survive.
_TRAIN = ("checkpoint.pt", "model.pt", "config.yaml")
KINDS = {
    "train": (_TRAIN, _TRAIN + ("log.txt", "tb", "epochs", "teacher_cache")),
    "search": (("checkpoint.pt", "genotype.json", "config.yaml"),
               ("checkpoint.pt", "genotype.json", "best_genotype.json", "genotypes.jsonl", "config.yaml", "log.txt",
                "tb", "cells")),
    "demo": (("report.json", "cost.md"),
             ("report.json", "cost.md", "checkpoints", "cells", "search", "train", "eval", "ship", "data")),
    "prune": (("report.json", "sweep.json", "model.pt"),
              ("report.json", "sweep.json", "sweep.md", "sweep.png", "model.pt", "model.onnx", "finetune",
               "unpruned")),
}

RESUMABLE = ("train", "search")  # the commands that take --resume (demo and prune start over)
SETUP_FILES = ("config.yaml", "tb")  # written before a run's first result; removed when its set-up fails


class RunFolderError(ConfigError):
    """A run folder that is in use or holds a run that this command would destroy."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, belongs to someone else
        return True
    return True


def _read_holder(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.loads(f.read() or "{}")
    except (OSError, ValueError):
        return {}


def _describe(holder: dict) -> str:
    if not holder:
        return "another process"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return (f"process {holder.get('pid')} on {holder.get('host')} (started {started}: "
            f"{holder.get('command', '?')})")


class RunFolder:
    """Claim ``path`` for one run; use as a context manager or call :meth:`release`.

    ``kind``: the command (a key of :data:`KINDS`), which says what a run of it leaves behind."""

    def __init__(self, path: str, resume: bool = False, overwrite: bool = False, kind: str = "train"):
        if resume and overwrite:
            raise RunFolderError(f"{path}: --resume continues the run there and --overwrite replaces it; "
                                 f"give one of them")
        self.path, self.resume, self.overwrite, self.kind = path, resume, overwrite, kind
        self.markers, self.artefacts = KINDS[kind]
        self._file = None

    # ------------------------------------------------------------------ the lock
    @property
    def lock_path(self) -> str:
        return os.path.join(self.path, LOCK_NAME)

    def _lock(self) -> None:
        os.makedirs(self.path, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: exclusive creation, stale by process id
            self._lock_by_creation()
            return
        while True:
            f = open(self.lock_path, "a+", encoding="utf-8")
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(self.lock_path)
                f.close()
                raise RunFolderError(f"{self.path} is in use by {_describe(holder)}; wait for it to finish, or "
                                     f"choose another --out") from None
            # the file may have been removed (by the holder's release) between our open and our lock: retry
            try:
                same = os.path.samestat(os.fstat(f.fileno()), os.stat(self.lock_path))
            except FileNotFoundError:
                same = False
            if same:
                break
            f.close()
        f.seek(0)
        previous = f.read().strip()
        if previous:
            holder = _read_holder(self.lock_path)
            logger.warning("%s: taking over a stale lock of %s (that process is gone)", self.path,
                           _describe(holder))
        self._write_holder(f)
        self._file = f

    def _lock_by_creation(self) -> None:  # pragma: no cover - non-POSIX fallback
        for _ in range(2):
            try:
                fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_RDWR)
            except FileExistsError:
                holder = _read_holder(self.lock_path)
                if holder.get("pid") and not _pid_alive(int(holder["pid"])):
                    logger.warning("%s: taking over a stale lock of %s (that process is gone)", self.path,
                                   _describe(holder))
                    os.unlink(self.lock_path)
                    continue
                raise RunFolderError(f"{self.path} is in use by {_describe(holder)}") from None
            self._file = os.fdopen(fd, "w+", encoding="utf-8")
            self._write_holder(self._file)
            return
        raise RunFolderError(f"{self.path}: could not take its lock")

    @staticmethod
    def _write_holder(f) -> None:
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                            "command": " ".join(os.path.basename(a) if i == 0 else a
                                                for i, a in enumerate(sys.argv))[:300]}))
        f.flush()

    # ------------------------------------------------------------------ claim / release
    def existing_run(self) -> List[str]:
        return [m for m in self.markers if os.path.exists(os.path.join(self.path, m))]

    def acquire(self) -> "RunFolder":
        self._lock()
        try:
            found = self.existing_run()
            if found and not (self.resume or self.overwrite):
                options = ("pass --resume to continue it or --overwrite to replace it" if self.kind in RESUMABLE
                           else "pass --overwrite to replace it")
                raise RunFolderError(f"{self.path} already holds a {self.kind} run ({', '.join(found)}); {options}, "
                                     f"or choose another --out")
            if self.overwrite and found:
                removed = self._remove_artefacts()
                logger.warning("%s: --overwrite removed the previous run (%s)", self.path, ", ".join(removed))
            self._clean_temporaries()
            self.fresh = not found or self.overwrite
        except BaseException:
            self.release()
            raise
        return self

    def _remove_artefacts(self, names=None) -> List[str]:
        """Remove what pocketnas wrote here (``names``, default every artefact of the kind); a link is removed
        itself, never followed. Returns the names removed."""
        removed = []
        for name in self.artefacts if names is None else names:
            p = os.path.join(self.path, name)
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p)
            elif os.path.lexists(p):
                os.unlink(p)
            else:
                continue
            removed.append(name)
        return removed

    def _clean_temporaries(self) -> None:
        """Remove ``.tmp-*`` files of interrupted atomic writes below the folder. The walk never follows a symbolic
        link (a linked folder may lie outside the run), and a link named like a temporary is removed itself, never
        what it points to."""
        stale = []
        for folder, dirs, files in os.walk(self.path, followlinks=False):
            stale += [os.path.join(folder, f) for f in files if f.startswith(".tmp-")]
            stale += [os.path.join(folder, d) for d in dirs if d.startswith(".tmp-")
                      and os.path.islink(os.path.join(folder, d))]
        for p in stale:
            os.unlink(p)
        if stale:
            logger.warning("%s: removed %d temporary file(s) of an interrupted write (%s)", self.path, len(stale),
                           ", ".join(os.path.relpath(p, self.path) for p in stale[:3]))

    def abandon_setup(self) -> List[str]:
        """After a run that failed before it produced anything (no checkpoint, model or result): remove the set-up
        files it wrote (``config.yaml``, ``tb/``), so that a corrected retry is not refused as "already holds a
        run". ``log.txt`` stays, with the error. A folder that held a run before (``--resume``) is left alone."""
        if not (self.held and getattr(self, "fresh", False)):
            return []
        progress = [m for m in self.existing_run() if m not in SETUP_FILES]
        if progress:
            return []
        removed = self._remove_artefacts(SETUP_FILES)
        if removed:
            logger.info("%s: the run stopped before it produced anything; removed its set-up files (%s)", self.path,
                        ", ".join(removed))
        return removed

    def release(self) -> None:
        f, self._file = self._file, None
        if f is None:
            return
        try:
            os.unlink(self.lock_path)  # before unlocking: a waiting process then sees the file is gone and retries
        except FileNotFoundError:
            pass
        f.close()

    @property
    def held(self) -> bool:
        return self._file is not None

    def __enter__(self) -> "RunFolder":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
