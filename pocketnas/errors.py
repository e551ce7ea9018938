"""The root of pocketnas's own error types: what the command line reports as a message (every other exception is
a bug and keeps its traceback). A leaf module: it imports nothing of pocketnas."""
from __future__ import annotations


class PocketnasError(Exception):
    """Bad input or a refused operation, with a message that names the file, the record or the setting.

    Raised inside a DataLoader worker, it comes back to the training process rebuilt from one string that starts
    "Caught X in DataLoader worker process N. Original Traceback ..."; the message is then the original one (the
    last line of that traceback), and the worker's traceback is kept in ``worker_traceback``."""

    def __init__(self, *args: object):
        self.worker_traceback = None
        if len(args) == 1 and isinstance(args[0], str) and args[0].startswith("Caught ") \
                and "Original Traceback" in args[0]:
            self.worker_traceback = args[0]
            last = args[0].rstrip().splitlines()[-1]
            args = (last.split(": ", 1)[1] if ": " in last else last,)
        super().__init__(*args)


class InputError(PocketnasError, ValueError):
    """A file, an argument or a setting that pocketnas cannot use (and says why)."""


class MissingFileError(InputError, FileNotFoundError):
    """A file or folder that an input names and that does not exist (the message names it). A
    ``FileNotFoundError`` too, so callers that catch that keep working."""


class OutputError(InputError):
    """An output that must not be written: it is one of the command's inputs, it exists and ``--overwrite`` was
    not given, or its folder cannot be written (read-only, full, a file where a folder should be)."""


class UnknownNameError(PocketnasError, KeyError):
    """A name (model, operation, loss, genotype) that no registry holds; the message lists close names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DivergedError(PocketnasError, ArithmeticError):
    """Numbers that are no longer finite (NaN or inf): a training or search step whose loss, teacher targets or
    gradients diverged, or weights that would be written with them. The message names the step or the tensor;
    nothing non-finite is saved, and a run's last good checkpoint is kept."""
