"""JSON files that pocketnas reads back (its own results, a user's edited copy): a malformed file, or one whose
shape is not what was written, is an :class:`~pocketnas.errors.InputError` naming the file and the entry, never a
``KeyError`` or ``JSONDecodeError`` traceback. A leaf: it imports nothing of pocketnas but its errors."""
from __future__ import annotations

import json
from typing import Any, Dict, Sequence

from .errors import InputError, MissingFileError


def read_json_object(path: str, what: str) -> Dict[str, Any]:
    """The JSON object in ``path`` (``what`` names the kind of file in messages)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise MissingFileError(f"{path}: no such file") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise InputError(f"{path}: not a readable {what} (malformed JSON: {e})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: not a {what} (a JSON {type(data).__name__}, expected an object)")
    return data


def require(entry: Any, keys: Sequence[str], where: str, types: Sequence[type] = ()) -> Dict[str, Any]:
    """``entry`` as a dict holding ``keys`` (of ``types``, pairwise, where given); else an error naming ``where``."""
    if not isinstance(entry, dict):
        raise InputError(f"{where}: expected an object, found {type(entry).__name__}")
    for i, key in enumerate(keys):
        if key not in entry:
            raise InputError(f"{where}: lacks {key!r}")
        if i < len(types) and (not isinstance(entry[key], types[i]) or isinstance(entry[key], bool)):
            raise InputError(f"{where}: {key!r} is a {type(entry[key]).__name__}, not {types[i].__name__}")
    return entry
