"""Anything that turns face crops into embeddings, behind one interface: pocketnas models, original release
backbones, and ONNX face embedders run through onnxruntime. Each declares its own input normalisation, so a
caller always passes RGB uint8 crops. Used by evaluation and as distillation teachers."""
from __future__ import annotations

import logging
import os
from typing import Optional, Union

import numpy as np
import torch

from ..data.transforms import check_norm, normalize
from ..errors import InputError
from ..metrics.verification import check_finite

logger = logging.getLogger(__name__)

ArrayLike = Union[np.ndarray, torch.Tensor]


class Embedder:
    """Call with an N x 3 x S x S uint8 RGB batch; get N x D float32 embeddings (not normalised)."""

    name: str = "embedder"
    input_norm: str = "arcface"
    input_size: int = 112
    embedding_size: Optional[int] = None

    def __call__(self, images: ArrayLike) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError


class TorchEmbedder(Embedder):
    """A PyTorch model as an embedder: eval mode, inference mode, and channels-last memory (1.7-1.9x the images/s of
    NCHW for PocketNetS-128 on 2 CPU threads, the same embeddings to 1e-6 relative; ``channels_last=False`` keeps
    the model as it is). The model itself is switched (eval, device, memory format), as ``model.to`` does."""

    def __init__(self, model: torch.nn.Module, name: str = "", input_norm: Optional[str] = None,
                 device: Union[str, torch.device] = "cpu", channels_last: bool = True):
        self.model = model.eval().to(device)
        self.channels_last = channels_last
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.device = torch.device(device)
        self.name = name or getattr(model, "pocketnas_arch", type(model).__name__)
        cfg = getattr(model, "pocketnas_cfg", None)
        self.input_norm = check_norm(input_norm or getattr(model, "input_norm", None)
                                     or (cfg.input_norm if cfg else "arcface"))
        self.input_size = int(getattr(model, "input_size", 112))
        self.embedding_size = getattr(model, "embedding_size", None)

    @torch.inference_mode()
    def __call__(self, images: ArrayLike) -> np.ndarray:
        x = normalize(torch.as_tensor(images).to(self.device), self.input_norm)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x).float().cpu().numpy()


class OnnxEmbedder(Embedder):
    """An ONNX face embedder; its normalisation comes from metadata pocketnas wrote (``input_norm``) or is given."""

    def __init__(self, path: str, input_norm: Optional[str] = None, threads: Optional[int] = None):
        from ..onnx_runtime import cpu_session

        self.session = cpu_session(path, threads)
        meta = self.session.get_modelmeta().custom_metadata_map
        declared = meta.get("input_norm")
        if input_norm is None and declared is None:
            raise InputError(f"{path} does not declare its input normalisation; pass --input-norm arcface|raw255 "
                             f"(arcface: (x/255-0.5)/0.5, raw255: RGB 0..255)")
        if input_norm and declared and input_norm != declared:
            logger.warning("%s declares input_norm=%s; using %s as asked", path, declared, input_norm)
        self.input_norm = check_norm(input_norm or declared)
        self.path = path
        self.name = os.path.splitext(os.path.basename(path))[0]
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        shape = inp.shape
        self.input_size = shape[-1] if isinstance(shape[-1], int) else 112
        out = self.session.get_outputs()[0].shape
        self.embedding_size = out[-1] if isinstance(out[-1], int) else None
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None

    def __call__(self, images: ArrayLike) -> np.ndarray:
        x = normalize(torch.as_tensor(images), self.input_norm).numpy()
        if self.fixed_batch and len(x) != self.fixed_batch:
            return np.concatenate([self.session.run(None, {self.input_name: x[i:i + 1]})[0] for i in range(len(x))])
        return self.session.run(None, {self.input_name: x})[0].astype(np.float32)


def load_embedder(spec: str, arch: Optional[str] = None, pretrained: Optional[str] = None,
                  input_norm: Optional[str] = None, device: str = "cpu", threads: Optional[int] = None) -> Embedder:
    """A registry name (with ``pretrained``), a pocketnas checkpoint, a bare ``backbone.pth`` (with ``arch``), or an
    ``.onnx`` file (normalisation from its metadata or ``input_norm``)."""
    from .factory import load_model

    if str(spec).endswith(".onnx"):
        if not os.path.isfile(spec):
            raise FileNotFoundError(f"{spec}: no such ONNX model")
        return OnnxEmbedder(spec, input_norm, threads)
    name = os.path.basename(spec) if os.path.exists(spec) else spec
    model = load_model(spec, arch, pretrained)
    if input_norm and arch is None:  # a pocketnas checkpoint or registry model knows its own normalisation
        own = getattr(model, "input_norm", None) or model.pocketnas_cfg.input_norm
        if input_norm != own:
            raise InputError(f"{spec} records its input normalisation ({own}); the {input_norm!r} asked for would "
                             f"feed it inputs it was not trained on. Leave the normalisation out (it is for ONNX "
                             f"models and bare state dicts)")
    return TorchEmbedder(model, name=name, input_norm=input_norm, device=device)


def embed_images(embedder: Embedder, images: np.ndarray, batch_size: int = 64, flip: bool = True,
                 progress: bool = True, desc: str = "embedding") -> np.ndarray:
    """Embeddings of N x 3 x S x S uint8 images; with ``flip`` each is the sum of the image's and its mirror's
    (insightface's flip test). Not normalised."""
    from tqdm import tqdm

    out = []
    steps = range(0, len(images), batch_size)
    for start in tqdm(steps, desc=desc, unit="batch", disable=not progress or len(steps) < 4):
        batch = torch.as_tensor(np.ascontiguousarray(images[start:start + batch_size]))
        if flip:
            both = embedder(torch.cat([batch, batch.flip(-1)]))
            n = len(batch)
            out.append(both[:n] + both[n:])
        else:
            out.append(embedder(batch))
    emb = np.concatenate(out).astype(np.float32)
    check_finite(emb, f"model {embedder.name}")
    return emb
