"""Two photos, one question: the same person? Detect and align each face (:mod:`pocketnas.detection`), embed both
with the flip test, and compare their cosine with the threshold recorded with the model (chosen on LFW's folds)."""
from __future__ import annotations

import os
from typing import Any, Dict, Optional, Tuple

import numpy as np

from ..data.transforms import fit_size
from ..detection import align_photo, read_photo
from ..errors import InputError
from ..image_size import Size, as_hw, hw_text
from ..models.embedders import Embedder, embed_images


def recorded_threshold(spec: str, pretrained: Any = None) -> Optional[Tuple[float, str]]:
    """(cosine threshold, where it comes from) recorded with a model: a pocketnas checkpoint's
    ``meta["verification"]`` (written by training with ``val_bins`` and by ``pocketnas eval verify
    --record-threshold``), or a registered variant's shipped weights; None where nothing is recorded."""
    from ..models import is_model, model_cfg
    from ..models.checkpoint import load_weights_file, is_pocketnas_checkpoint, read_checkpoint

    if os.path.isfile(spec) and not spec.endswith(".onnx"):
        if not is_pocketnas_checkpoint(load_weights_file(spec)):  # a bare state dict records nothing
            return None
        meta = read_checkpoint(spec).get("meta", {})  # a damaged header or threshold is an error, not "none"
        v = meta.get("verification")
        if v and "cosine_threshold" in v:
            return float(v["cosine_threshold"]), (f"recorded in {os.path.basename(spec)}: {v['set']}, "
                                                  f"{100 * v['accuracy']:.2f} % over {v.get('pairs', '?')} pairs")
        return None
    if is_model(spec) and pretrained in (True, None):  # a bare registry name loads its shipped weights
        pre = model_cfg(spec).pretrained
        if pre is not None and pre.threshold is not None:
            return float(pre.threshold), f"shipped with {spec}'s weights (LFW)"
    return None


MIN_ALIGNED_SIDE = 32


def face_of(path: str, size: Size, aligned: bool = False) -> Tuple[np.ndarray, int]:
    """(3 x H x W uint8 aligned face, faces found) of a photo; ``aligned`` photos are only resized, after a
    check that they can be a face crop at all (at least :data:`MIN_ALIGNED_SIDE` pixels a side, not one flat
    colour): a blank or 1 x 1 image would otherwise be embedded and judged like a face. A network of non-square
    input (a periocular band) takes only ``aligned`` crops: the detector aligns whole faces."""
    hw = as_hw(size)
    if not aligned and hw[0] != hw[1]:
        raise InputError(f"{path}: this network takes {hw_text(hw)} crops (not a whole face), so the photo cannot be "
                         f"aligned for it here; pass crops made with `pocketnas data crop` and --aligned")
    image = read_photo(path)
    if aligned:
        h, w = image.shape[:2]
        if min(h, w) < MIN_ALIGNED_SIDE:
            raise InputError(f"{path}: {w} x {h} pixels is too small for an aligned face crop (at least "
                             f"{MIN_ALIGNED_SIDE} a side; pocketnas align makes {hw[1]} x {hw[0]})")
        if float(image.std()) < 2.0:
            raise InputError(f"{path}: one flat colour (pixel standard deviation {float(image.std()):.2f}): not a "
                             f"face crop")
        import torch

        chw = torch.from_numpy(image.transpose(2, 0, 1).copy())[None]
        return fit_size(chw, hw)[0].round().clamp(0, 255).to(torch.uint8).numpy(), 1
    face, faces = align_photo(image, hw[0])
    if face is None:
        raise InputError(f"{path}: no face found (MTCNN, smallest face 20 px); pass an aligned crop with --aligned")
    return face, len(faces)


def verify_photos(embedder: Embedder, a: str, b: str, threshold: float, aligned: bool = False,
                  flip: bool = True) -> Dict[str, Any]:
    """Cosine of the two photos' faces and the decision at ``threshold``."""
    fa, na = face_of(a, embedder.input_size, aligned)
    fb, nb = face_of(b, embedder.input_size, aligned)
    emb = embed_images(embedder, np.stack([fa, fb]), batch_size=2, flip=flip, progress=False)
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    cosine = float(emb[0] @ emb[1])
    return {"a": a, "b": b, "cosine": cosine, "threshold": float(threshold), "same": cosine >= threshold,
            "faces_found": [na, nb], "faces": [fa, fb]}
