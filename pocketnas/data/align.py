"""Five-point face alignment onto the ArcFace 112x112 template (similarity transform, Umeyama 1991:
"Least-squares estimation of transformation parameters between two point patterns", IEEE TPAMI)."""
from __future__ import annotations

import numpy as np

ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2 x 3 matrix M of the similarity (rotation, uniform scale, translation) best mapping ``src`` onto ``dst``."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1
    rot = u @ sign @ vt
    scale = np.trace(np.diag(sig) @ sign) / s.var(0).sum()
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    # remove SVD round-off: an exact shift must stay exact, or bilinear sampling at x - 1e-9 truncates a level
    near = np.abs(m - np.round(m)) < 1e-6
    m[near] = np.round(m[near])
    return m


def align_face(image_hwc: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """Warp an H x W x 3 uint8 image so its five landmarks land on the ArcFace template; returns 3 x S x S uint8."""
    from PIL import Image

    template = ARCFACE_TEMPLATE * (size / 112.0)
    m = similarity_transform(np.asarray(landmarks, dtype=np.float64).reshape(5, 2), template)
    full = np.vstack([m, [0, 0, 1]])
    inv = np.linalg.inv(full)[:2].ravel()  # PIL maps output pixels back to input pixels
    out = Image.fromarray(image_hwc).transform((size, size), Image.AFFINE, tuple(inv), resample=Image.BILINEAR)
    return np.ascontiguousarray(np.asarray(out.convert("RGB")).transpose(2, 0, 1))
