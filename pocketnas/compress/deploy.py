"""Files a phone runtime loads: ONNX float32 checked against PyTorch on real face crops, int8 by ONNX Runtime
static quantisation calibrated on face crops (dynamic quantisation as the fallback), TorchScript, and the cost of
each exported file."""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from typing import Any, Dict, Optional

import numpy as np
import torch
import torch.nn as nn

from ..data.transforms import normalize
from ..errors import InputError, PocketnasError
from ..image_size import Size, as_hw, input_hw, shape_hw
from ..onnx_runtime import cpu_session
from ..models.export import export_onnx

logger = logging.getLogger(__name__)


class ExportError(PocketnasError, RuntimeError):
    """An exported model that does not reproduce the original within tolerance."""


def face_crops(path: Optional[str], count: int = 256, size: Size = 112, seed: int = 0) -> np.ndarray:
    """Up to ``count`` real face crops (uint8 N x 3 x H x W, ``size`` a side or (height, width)) from a folder,
    RecordIO pack or .bin; the bundled ORL faces when ``path`` is None (for a non-square size, their periocular
    band, as ``pocketnas data crop --region periocular`` cuts it, at that size)."""
    from ..data.bundled import orl_root
    from ..data.face_sets import open_face_dataset

    h, w = as_hw(size)
    if path is None and h != w:
        from ..data.crop import crop_face, make_crop

        crop = make_crop("periocular", size=(w, h))
        faces = open_face_dataset(orl_root(), 112)
        rng = np.random.default_rng(seed)
        pick = np.sort(rng.choice(len(faces), min(count, len(faces)), replace=False))
        logger.info("no calibration set given: the periocular band of %d bundled ORL faces", len(pick))
        return np.stack([crop_face(faces.sample_uint8(int(i))[0], crop) for i in pick])
    path = path or orl_root()
    if path.endswith(".bin"):
        from ..data.binfile import read_bin

        images, _ = read_bin(path, size=size, progress=False)
    else:
        faces = open_face_dataset(path, size)
        rng = np.random.default_rng(seed)
        pick = np.sort(rng.choice(len(faces), min(count, len(faces)), replace=False))
        return np.stack([faces.sample_uint8(int(i))[0] for i in pick])
    rng = np.random.default_rng(seed)
    return images[np.sort(rng.choice(len(images), min(count, len(images)), replace=False))]


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return np.sum(a * b, axis=1)


def compare_outputs(reference: np.ndarray, candidate: np.ndarray) -> Dict[str, float]:
    return {"max_abs_diff": float(np.abs(reference - candidate).max()),
            "max_rel_diff": float(np.abs(reference - candidate).max() / max(np.abs(reference).max(), 1e-12)),
            "min_cosine": float(_cosines(reference, candidate).min()),
            "mean_cosine": float(_cosines(reference, candidate).mean())}


def onnx_outputs(path: str, images: np.ndarray, norm: str, threads: int = 2, batch: int = 32) -> np.ndarray:
    session = cpu_session(path, threads)
    name = session.get_inputs()[0].name
    x = normalize(torch.as_tensor(images), norm).numpy()
    return np.concatenate([session.run(None, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)])


@torch.inference_mode()
def torch_outputs(model: nn.Module, images: np.ndarray, norm: str, batch: int = 32) -> np.ndarray:
    model.eval()
    x = normalize(torch.as_tensor(images), norm)
    return torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)]).float().numpy()


def export_checked(model: nn.Module, path: str, crops: np.ndarray, opset: int = 17, min_cosine: float = 0.9999,
                   max_rel_diff: float = 1e-3) -> Dict[str, Any]:
    """Export to ONNX and compare ONNX Runtime with PyTorch on ``crops``; raise past the tolerance."""
    from ..models.checkpoint import check_finite_state

    check_finite_state(model.state_dict(), f"exporting {path}")  # before anything is written
    norm = getattr(model, "pocketnas_cfg").input_norm if hasattr(model, "pocketnas_cfg") else "arcface"
    export_onnx(model, path, opset=opset, input_norm=norm)
    parity = compare_outputs(torch_outputs(model, crops, norm), onnx_outputs(path, crops, norm))
    parity["images"] = int(len(crops))
    logger.info("ONNX parity on %d face crops: max abs diff %.2e (relative %.2e), min cosine %.7f", len(crops),
                parity["max_abs_diff"], parity["max_rel_diff"], parity["min_cosine"])
    if not (parity["min_cosine"] >= min_cosine and parity["max_rel_diff"] <= max_rel_diff):  # NaN fails too
        raise ExportError(f"{path}: ONNX Runtime disagrees with PyTorch on real faces (min cosine "
                          f"{parity['min_cosine']:.6f} < {min_cosine} or relative difference "
                          f"{parity['max_rel_diff']:.2e} > {max_rel_diff})")
    return parity


def _copy_metadata(src: str, dst: str, extra: Dict[str, str]) -> None:
    import onnx

    meta = {p.key: p.value for p in onnx.load(src).metadata_props}
    meta.update(extra)
    proto = onnx.load(dst)
    del proto.metadata_props[:]
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(proto, dst)


def quantize_int8(fp32_path: str, out_path: str, calib: Optional[np.ndarray], norm: str,
                  mode: str = "static") -> str:
    """int8 ONNX: static (QDQ, per-channel weights, activations calibrated on ``calib`` face crops) or dynamic."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_dynamic, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    tmp = tempfile.mkdtemp()
    root = logging.getLogger()
    level = root.level
    # onnxruntime.quantization logs a line per unfolded BatchNorm through the root logger ("Axis 1 is
    # out-of-range for weight ... bn.weight"): per-channel quantisation leaves those 1-d tensors per-tensor, as it
    # should; the notes are not news to a user
    root.setLevel(max(level, logging.ERROR))
    try:
        pre = os.path.join(tmp, "pre.onnx")
        quant_pre_process(fp32_path, pre, skip_symbolic_shape=True)
        if mode == "static":
            if calib is None or not len(calib):
                raise InputError("static int8 quantisation needs calibration face crops")
            x = normalize(torch.as_tensor(calib), norm).numpy()

            class Reader(CalibrationDataReader):
                def __init__(self):
                    self.batches = iter([x[i:i + 16] for i in range(0, len(x), 16)])

                def get_next(self):
                    b = next(self.batches, None)
                    return None if b is None else {"data": b}

            quantize_static(pre, out_path, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)
        elif mode == "dynamic":
            quantize_dynamic(pre, out_path, weight_type=QuantType.QInt8)
        else:
            raise InputError(f"int8 mode must be static or dynamic, not {mode!r}")
        _copy_metadata(fp32_path, out_path, {"quantization": f"int8 {mode}"})
    finally:
        root.setLevel(level)
        shutil.rmtree(tmp, ignore_errors=True)
    return out_path


def onnx_file_latency(path: str, threads: int, repeats: int = 30) -> float:
    from ..evaluation.cost import median_seconds

    session = cpu_session(path, threads)
    inp = session.get_inputs()[0]
    x = np.random.rand(1, 3, *shape_hw(inp.shape)).astype(np.float32)
    return 1000 * median_seconds(lambda: session.run(None, {inp.name: x}), 5, repeats)


def file_sizes(path: str) -> Dict[str, float]:
    """Size on disk and gzip size (what sparse weights save in transit), in MiB."""
    import gzip

    with open(path, "rb") as f:
        raw = f.read()
    return {"size_mb": len(raw) / 2 ** 20, "gzip_mb": len(gzip.compress(raw, 6)) / 2 ** 20}


def file_cost(path: str) -> Dict[str, Any]:
    """:func:`file_sizes` and ONNX Runtime batch-1 latency at 1 and 2 threads."""
    return {"path": path, **file_sizes(path), "latency_ms_1thread": onnx_file_latency(path, 1),
            "latency_ms_2threads": onnx_file_latency(path, 2)}


def export_torchscript(model: nn.Module, path: str, crops: np.ndarray) -> Dict[str, Any]:
    norm = model.pocketnas_cfg.input_norm if hasattr(model, "pocketnas_cfg") else "arcface"
    model.eval()
    with torch.no_grad():
        traced = torch.jit.trace(model, torch.zeros(1, 3, *input_hw(model)), check_trace=False)
    traced.save(path)
    loaded = torch.jit.load(path)
    parity = compare_outputs(torch_outputs(model, crops, norm), torch_outputs(loaded, crops, norm))
    if not parity["min_cosine"] >= 0.9999:  # NaN fails too
        raise ExportError(f"{path}: TorchScript disagrees with the eager model (min cosine {parity['min_cosine']})")
    return parity
