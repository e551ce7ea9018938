"""Margin-head class centres imprinted from a network's own embeddings.

Qi, Brown and Lowe, "Low-Shot Learning with Imprinted Weights", CVPR 2018, eq. 2: the weight of class c is the
normalised mean of the normalised embeddings of its images, w_c = normalise(sum_i e_i / |e_i|). A network that
already verifies faces (a shipped model, an earlier stage whose ``checkpoint.pt`` is gone) then starts training
with a head whose logits mean something, instead of N(0, 0.01) centres whose gradients would push the backbone
at random until the head catches up.
"""
from __future__ import annotations

import copy
import logging
from typing import Optional, Union

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from ..data.transforms import fit_size
from ..image_size import input_hw
from ..models.embedders import embed_images, model_embedder

logger = logging.getLogger(__name__)


class _Images(Dataset):
    """(uint8 image, label) of each face: the aligned image as the dataset gives it, no augmentation."""

    def __init__(self, faces):
        self.faces = faces

    def __len__(self) -> int:
        return len(self.faces)

    def __getitem__(self, index: int):
        image, label = self.faces.sample_uint8(index)
        return torch.from_numpy(image), int(label)


def class_centres(backbone: nn.Module, faces, num_classes: int, input_norm: Optional[str] = None,
                  batch_size: int = 64, workers: int = 0, device: Union[str, torch.device] = "cpu",
                  flip: bool = True, progress: bool = True) -> torch.Tensor:
    """num_classes x D unit class centres of ``faces`` (``sample_uint8(i) -> (3 x H x W uint8, label)``) under
    ``backbone`` (not modified: a copy embeds, in eval mode; each image resized to the network's input as the
    trainer resizes a view; with ``flip`` each embedding is the image's plus its mirror's). A class without images
    keeps a zero row (its logit is 0 until training moves it)."""
    from tqdm import tqdm

    size = input_hw(backbone)
    embedder = model_embedder(copy.deepcopy(backbone), input_norm=input_norm, device=device)
    sums: Optional[np.ndarray] = None
    counts = np.zeros(num_classes, np.int64)
    loader = DataLoader(_Images(faces), batch_size=batch_size, shuffle=False, num_workers=workers)
    for images, labels in tqdm(loader, desc="imprinting class centres", unit="batch", disable=not progress):
        emb = embed_images(embedder, fit_size(images, size).numpy(), len(images), flip=flip, progress=False)
        emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        if sums is None:
            sums = np.zeros((num_classes, emb.shape[1]), np.float64)
        np.add.at(sums, labels.numpy(), emb)
        np.add.at(counts, labels.numpy(), 1)
    if sums is None:
        raise ValueError("class_centres: no images")
    centres = torch.nn.functional.normalize(torch.from_numpy(sums).float(), dim=1)
    logger.info("class centres imprinted from %d images (%d of %d identities have images; embedded by %s)",
                int(counts.sum()), int((counts > 0).sum()), num_classes, getattr(embedder, "engine", "torch"))
    return centres


def imprint_head(head: nn.Module, backbone: nn.Module, faces, **kwargs) -> None:
    """Set ``head.fc.weight`` (a :class:`~pocketnas.losses.heads.MarginHead`) to the imprinted class centres."""
    weight = head.fc.weight
    centres = class_centres(backbone, faces, int(weight.shape[0]), **kwargs)
    if centres.shape != weight.shape:
        raise ValueError(f"imprinted centres {tuple(centres.shape)} do not fit the head's {tuple(weight.shape)}")
    with torch.no_grad():
        weight.copy_(centres.to(weight.device, weight.dtype))
