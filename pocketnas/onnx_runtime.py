"""One way to open an ONNX Runtime session on the CPU (thread count set, the exporter's notes silenced)."""
from __future__ import annotations

from typing import Optional, Union

from .errors import InputError


def cpu_session(path: Union[str, bytes], threads: Optional[int] = None, name: Optional[str] = None):
    """An ONNX Runtime CPU session of ``path`` (a file, or a serialised model's bytes, named ``name`` in errors)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ImportError("ONNX models need onnxruntime: pip install 'pocketnas[onnx]'") from None
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only (not the exporter's unused-initialiser notes)
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise InputError(f"{name or path}: not a loadable ONNX model ({type(e).__name__}: {e})") from None
