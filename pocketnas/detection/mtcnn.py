"""Face detection with five landmarks: MTCNN (Zhang, Zhang, Li and Qiao, "Joint Face Detection and Alignment Using
Multitask Cascaded Convolutional Networks", IEEE Signal Processing Letters 2016), the detector insightface aligned
its training sets with.

Three networks in cascade: P-Net proposes windows over an image pyramid (12x12 cells, stride 2), R-Net rejects
most of them on 24x24 crops, O-Net scores 48x48 crops and regresses the box and five landmarks (eyes, nose tip,
mouth corners, in image order: the eye on the image's left first). The weights ship in the package
(``pocketnas/assets/detector/``, MIT, see its LICENSE.txt) and load with ``weights_only=True``; their sha256 are
checked before loading. Everything runs on the CPU in float32; nothing is downloaded.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import InputError, MissingFileError

logger = logging.getLogger(__name__)

WEIGHTS = {  # file -> sha256
    "mtcnn_pnet.pt": "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f",
    "mtcnn_rnet.pt": "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86",
    "mtcnn_onet.pt": "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d",
}


class _PNet(nn.Module):
    """Proposal network: fully convolutional, one 12x12 window per output cell."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1, self.conv4_2 = nn.Conv2d(32, 2, 1), nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 2, 2, ceil_mode=True)
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), F.softmax(self.conv4_1(x), dim=1)[:, 1]


def _flatten_caffe(x: torch.Tensor) -> torch.Tensor:
    # the Caffe models were trained on transposed images: their dense layers read (width, height, channel) order
    return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)


class _RNet(nn.Module):
    """Refinement network on 24x24 crops."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1, self.dense5_2 = nn.Linear(128, 2), nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = self.prelu4(self.dense4(_flatten_caffe(self.prelu3(self.conv3(x)))))
        return self.dense5_2(x), F.softmax(self.dense5_1(x), dim=1)[:, 1]


class _ONet(nn.Module):
    """Output network on 48x48 crops: score, box regression and five landmarks."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1, self.dense6_2, self.dense6_3 = nn.Linear(256, 2), nn.Linear(256, 4), nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu3(self.conv3(x)), 2, 2, ceil_mode=True)
        x = self.prelu5(self.dense5(_flatten_caffe(self.prelu4(self.conv4(x)))))
        return self.dense6_2(x), self.dense6_3(x), F.softmax(self.dense6_1(x), dim=1)[:, 1]


@dataclass
class Face:
    """One detected face: box (x1, y1, x2, y2) in pixels, detector score, landmarks 5 x 2 (x, y)."""

    box: np.ndarray
    score: float
    landmarks: np.ndarray


def weights_dir() -> str:
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "detector")


def _load(net: nn.Module, name: str) -> nn.Module:
    path = os.path.join(weights_dir(), name)
    if not os.path.isfile(path):
        raise MissingFileError(f"{path}: the detector's weights are missing from the package (reinstall it)")
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    if digest != WEIGHTS[name]:
        raise InputError(f"{path}: sha256 {digest} is not the shipped file's; refusing to load it")
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return net.eval()


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = "union") -> np.ndarray:
    """Greedy non-maximum suppression; overlap as intersection over union, or over the smaller box (``min``).
    Box areas count pixels inclusively, as MTCNN does."""
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        denom = np.minimum(areas[i], areas[rest]) if mode == "min" else areas[i] + areas[rest] - inter
        order = rest[inter / denom <= threshold]
    return np.asarray(keep, dtype=np.int64)


def _square(boxes: np.ndarray) -> np.ndarray:
    out = boxes.copy()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    out[:, 0] = boxes[:, 0] + 0.5 * (w - side)
    out[:, 1] = boxes[:, 1] + 0.5 * (h - side)
    out[:, 2:4] = out[:, 0:2] + side[:, None]
    return out


def _regress(boxes: np.ndarray, reg: np.ndarray, inclusive: bool) -> np.ndarray:
    out = boxes.copy()
    extra = 1.0 if inclusive else 0.0
    w = boxes[:, 2] - boxes[:, 0] + extra
    h = boxes[:, 3] - boxes[:, 1] + extra
    out[:, :4] = boxes[:, :4] + reg[:, :4] * np.stack([w, h, w, h], 1)
    return out


def _crops(image: torch.Tensor, boxes: np.ndarray, size: int) -> Tuple[torch.Tensor, np.ndarray]:
    """Each box's pixels (clipped to the image) resized to size x size (area averaging), normalised as MTCNN
    expects; and which boxes were non-empty."""
    _, h, w = image.shape
    b = np.trunc(boxes[:, :4]).astype(np.int64)
    x1, y1 = np.maximum(b[:, 0], 1), np.maximum(b[:, 1], 1)
    x2, y2 = np.minimum(b[:, 2], w), np.minimum(b[:, 3], h)
    ok = (x2 > x1 - 1) & (y2 > y1 - 1)
    out = [F.interpolate(image[None, :, y1[k] - 1:y2[k], x1[k] - 1:x2[k]], size=(size, size), mode="area")
           for k in np.flatnonzero(ok)]
    batch = torch.cat(out) if out else image.new_zeros(0, 3, size, size)
    return (batch - 127.5) * 0.0078125, ok


class MTCNN:
    """The three networks, built once; ``detect(image)`` for any H x W x 3 uint8 RGB array."""

    def __init__(self, min_size: int = 20, thresholds: Sequence[float] = (0.6, 0.7, 0.7), factor: float = 0.709):
        if min_size < 12:
            raise InputError(f"min_size must be at least 12 pixels (MTCNN's smallest window), got {min_size}")
        self.min_size, self.thresholds, self.factor = int(min_size), tuple(thresholds), float(factor)
        self.pnet, self.rnet, self.onet = (_load(_PNet(), "mtcnn_pnet.pt"), _load(_RNet(), "mtcnn_rnet.pt"),
                                           _load(_ONet(), "mtcnn_onet.pt"))

    def _scales(self, h: int, w: int) -> List[float]:
        m = 12.0 / self.min_size
        side, scales = min(h, w) * m, []
        while side >= 12:
            scales.append(m * self.factor ** len(scales))
            side *= self.factor
        return scales

    @torch.no_grad()
    def detect(self, image_hwc: np.ndarray) -> List[Face]:
        """Every face found, most confident first."""
        arr = np.asarray(image_hwc)
        if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
            raise InputError(f"expected an H x W x 3 uint8 RGB image, got {arr.dtype} of shape {arr.shape}")
        image = torch.from_numpy(np.array(arr, copy=True)).permute(2, 0, 1).float()
        _, h, w = image.shape
        t1, t2, t3 = self.thresholds
        # stage 1: proposals over the pyramid
        found = []
        for scale in self._scales(h, w):
            level = F.interpolate(image[None], size=(int(h * scale + 1), int(w * scale + 1)), mode="area")
            reg, prob = self.pnet((level - 127.5) * 0.0078125)
            prob, reg = prob[0].numpy(), reg[0].numpy()
            ys, xs = np.nonzero(prob >= t1)
            if not len(ys):
                continue
            cells = np.stack([xs, ys], 1).astype(np.float64)
            boxes = np.concatenate([np.floor((2 * cells + 1) / scale), np.floor((2 * cells + 12) / scale),
                                    prob[ys, xs][:, None], reg[:, ys, xs].T], 1)
            found.append(boxes[nms(boxes[:, :4], boxes[:, 4], 0.5)])
        if not found:
            return []
        boxes = np.concatenate(found)
        boxes = boxes[nms(boxes[:, :4], boxes[:, 4], 0.7)]
        boxes = _square(_regress(boxes[:, :5], boxes[:, 5:9], inclusive=False))
        # stage 2: refine
        crops, ok = _crops(image, boxes, 24)
        boxes = boxes[ok]
        if not len(boxes):
            return []
        reg, prob = (t.numpy() for t in self.rnet(crops))
        keep = prob > t2
        boxes, reg = np.concatenate([boxes[keep, :4], prob[keep, None]], 1), reg[keep]
        pick = nms(boxes[:, :4], boxes[:, 4], 0.7)
        boxes = _square(_regress(boxes[pick], reg[pick], inclusive=True))
        if not len(boxes):
            return []
        # stage 3: output, with landmarks
        crops, ok = _crops(image, boxes, 48)
        boxes = boxes[ok]
        if not len(boxes):
            return []
        reg, marks, prob = (t.numpy() for t in self.onet(crops))
        keep = prob > t3
        boxes, reg, marks = np.concatenate([boxes[keep, :4], prob[keep, None]], 1), reg[keep], marks[keep]
        bw = boxes[:, 2] - boxes[:, 0] + 1
        bh = boxes[:, 3] - boxes[:, 1] + 1
        points = np.stack([bw[:, None] * marks[:, :5] + boxes[:, :1] - 1,
                           bh[:, None] * marks[:, 5:] + boxes[:, 1:2] - 1], 2)
        boxes = _regress(boxes, reg, inclusive=True)
        pick = nms(boxes[:, :4], boxes[:, 4], 0.7, mode="min")
        pick = pick[np.argsort(-boxes[pick, 4], kind="stable")]
        return [Face(boxes[i, :4].astype(np.float32), float(boxes[i, 4]), points[i].astype(np.float32))
                for i in pick]


_DETECTOR: Optional[MTCNN] = None


def default_detector() -> MTCNN:
    """One MTCNN with the standard settings, built on first use."""
    global _DETECTOR
    if _DETECTOR is None:
        _DETECTOR = MTCNN()
    return _DETECTOR
