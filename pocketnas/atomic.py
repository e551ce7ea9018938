"""Whole-file writes that a crash never leaves half done: a temporary file in the same folder, fsync, rename.
A leaf module: it imports nothing of pocketnas."""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from typing import Any, BinaryIO, Iterator, Optional, Union


@contextmanager
def atomic_writer(path: str, suffix: Optional[str] = None) -> Iterator[BinaryIO]:
    """A binary file to write ``path`` through: ``.tmp-*<suffix>`` beside it (default: the path's extension),
    fsynced and renamed into place when the block ends without an error, removed otherwise. The temporary name is
    unique, so several processes may write the same file (the last rename wins, never a mix)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1] if suffix is None else suffix,
                               dir=folder)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.fchmod(fd, 0o666 & ~umask)  # as open() would create it, not mkstemp's 0600
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write(path: str, data: Union[bytes, str]) -> None:
    """Write ``data`` (bytes, or text as UTF-8) to ``path`` atomically."""
    with atomic_writer(path) as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)


def atomic_write_json(path: str, obj: Any, sort_keys: bool = True, default: Any = None) -> None:
    atomic_write(path, json.dumps(obj, indent=1, sort_keys=sort_keys, default=default) + "\n")


def atomic_savefig(fig: Any, path: str, **kwargs: Any) -> str:
    """A matplotlib figure saved atomically (the format from the path's extension, as ``savefig`` would)."""
    fmt = os.path.splitext(path)[1].lstrip(".").lower() or "png"
    with atomic_writer(path) as f:
        fig.savefig(f, format=fmt, **kwargs)
    return path


def atomic_save_image(image: Any, path: str) -> str:
    """A Pillow image saved atomically (the format from the path's extension)."""
    fmt = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "bmp": "BMP"}.get(
        os.path.splitext(path)[1].lstrip(".").lower(), "PNG")
    with atomic_writer(path) as f:
        image.save(f, format=fmt)
    return path
