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
from ..errors import InputError, MissingFileError
from ..image_size import Size, input_hw, recorded, shape_hw
from ..metrics.verification import check_finite

logger = logging.getLogger(__name__)

ArrayLike = Union[np.ndarray, torch.Tensor]


class Embedder:
    """Call with an N x 3 x H x W uint8 RGB batch; get N x D float32 embeddings (not normalised). ``input_size``
    is a side (faces: 112) or [height, width] (periocular bands); read it with ``image_size.input_hw``."""

    name: str = "embedder"
    engine: str = "?"  # what computes the embeddings: torch, onnxruntime
    input_norm: str = "arcface"
    input_size: Size = 112
    embedding_size: Optional[int] = None

    def __call__(self, images: ArrayLike) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError


class TorchEmbedder(Embedder):
    """A PyTorch model as an embedder: eval mode, inference mode, and channels-last memory (1.7-1.9x the images/s of
    NCHW for PocketNetS-128 on 2 CPU threads, the same embeddings to 1e-6 relative; ``channels_last=False`` keeps
    the model as it is). The model itself is switched (eval, device, memory format), as ``model.to`` does."""

    def __init__(self, model: torch.nn.Module, name: str = "", input_norm: Optional[str] = None,
                 device: Union[str, torch.device] = "cpu", channels_last: bool = True):
        self.engine = "torch"
        self.model = model.eval().to(device)
        self.channels_last = channels_last
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.device = torch.device(device)
        self.name = name or getattr(model, "pocketnas_arch", type(model).__name__)
        cfg = getattr(model, "pocketnas_cfg", None)
        self.input_norm = check_norm(input_norm or getattr(model, "input_norm", None)
                                     or (cfg.input_norm if cfg else "arcface"))
        self.input_size = recorded(input_hw(model))
        self.embedding_size = getattr(model, "embedding_size", None)

    @torch.inference_mode()
    def __call__(self, images: ArrayLike) -> np.ndarray:
        x = normalize(torch.as_tensor(images).to(self.device), self.input_norm)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x).float().cpu().numpy()


class MicroBatchRunner:
    """Runs an ONNX Runtime session over a batch as micro-batches of ``micro_batch`` images, ``threads`` of them at
    a time, each on one thread of the one session (``run`` is thread-safe and releases the GIL). On 2 CPU threads
    PocketNetS-128 embeds 2.1x the images/s of one two-thread session at batch 64 this way: a batch-1 forward pass
    keeps its feature maps in cache, and parallel runs of whole passes avoid the per-operator synchronisation of
    intra-op threads (``bench/eval.py``)."""

    def __init__(self, session, threads: int, micro_batch: int = 1):
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.threads = max(1, int(threads))
        self.micro_batch = max(1, int(micro_batch))
        self._pool = None

    def _one(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        chunks = [x[i:i + self.micro_batch] for i in range(0, len(x), self.micro_batch)]
        if self.threads == 1 or len(chunks) == 1:
            outs = [self._one(c) for c in chunks]
        else:
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="pocketnas-ort")
            outs = list(self._pool.map(self._one, chunks))
        return np.concatenate(outs).astype(np.float32, copy=False)


class ExportedEmbedder(TorchEmbedder):
    """A PyTorch model run by ONNX Runtime: exported once (in memory, PReLU in its fast form) and checked against
    the PyTorch path on the first batch it embeds; where the two disagree by more than ``tolerance`` (largest
    relative L2 difference of an embedding) or the model does not export, the PyTorch path runs instead, with a
    warning. ``engine`` says which ran. Batches run through :class:`MicroBatchRunner` on ``threads`` threads
    (default: torch's): PocketNetS-128 at 5.8x the images/s of the channels-last PyTorch path on 2 CPU threads,
    11x the NCHW model's (``bench/eval.py``)."""

    tolerance = 1e-4

    def __init__(self, model: torch.nn.Module, name: str = "", input_norm: Optional[str] = None,
                 threads: Optional[int] = None, channels_last: bool = True, micro_batch: int = 1):
        self.runner: Optional[MicroBatchRunner] = None
        self.max_rel_diff: Optional[float] = None
        try:
            session = _exported_session(model, 1)
            self.runner = MicroBatchRunner(session, threads or torch.get_num_threads(), micro_batch)
        except Exception as e:  # an op the exporter or ONNX Runtime lacks: the PyTorch path is still exact
            logger.warning("%s does not run in ONNX Runtime (%s: %s); embedding with PyTorch",
                           name or type(model).__name__, type(e).__name__, e)
        super().__init__(model, name=name, input_norm=input_norm, device="cpu", channels_last=channels_last)
        self.engine = "onnxruntime" if self.runner is not None else "torch"

    def __call__(self, images: ArrayLike) -> np.ndarray:
        if self.runner is None:
            return super().__call__(images)
        out = self.runner(np.ascontiguousarray(normalize(torch.as_tensor(images), self.input_norm).numpy()))
        if self.max_rel_diff is None:
            reference = super().__call__(images)
            norms = np.maximum(np.linalg.norm(reference, axis=1), 1e-12)
            self.max_rel_diff = float(np.max(np.linalg.norm(out - reference, axis=1) / norms))
            if not self.max_rel_diff <= self.tolerance:
                logger.warning("%s: ONNX Runtime's embeddings differ from PyTorch's by %.2e (relative, more than "
                               "%.0e); embedding with PyTorch", self.name, self.max_rel_diff, self.tolerance)
                self.runner, self.engine = None, "torch"
                return reference
        return out


def _exported_session(model: torch.nn.Module, threads: int):
    import tempfile

    from ..onnx_runtime import cpu_session
    from .export import export_onnx

    with tempfile.TemporaryDirectory(prefix="pocketnas-export-") as tmp:
        path = export_onnx(model, os.path.join(tmp, "model.onnx"))
        with open(path, "rb") as f:
            data = f.read()
    return cpu_session(data, threads, name=f"{type(model).__name__} exported")


def onnxruntime_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))


ENGINES = ("auto", "torch", "onnxruntime")


def model_embedder(model: torch.nn.Module, name: str = "", input_norm: Optional[str] = None,
                   engine: str = "auto", device: Union[str, torch.device] = "cpu",
                   threads: Optional[int] = None, channels_last: bool = True) -> TorchEmbedder:
    """The embedder of a PyTorch model for ``engine``: ``torch`` (:class:`TorchEmbedder`), ``onnxruntime``
    (:class:`ExportedEmbedder`, CPU only), or ``auto``: ONNX Runtime on the CPU when it is installed, else torch."""
    if engine not in ENGINES:
        raise InputError(f"engine {engine!r}: one of {', '.join(ENGINES)}")
    on_cpu = torch.device(device).type == "cpu"
    if engine == "onnxruntime":
        if not on_cpu:
            raise InputError(f"engine onnxruntime runs on the CPU, not on {device}; use engine torch")
        if not onnxruntime_available():
            raise ImportError("engine onnxruntime needs onnx and onnxruntime: pip install 'pocketnas[onnx]'")
    if engine == "onnxruntime" or (engine == "auto" and on_cpu and onnxruntime_available()):
        return ExportedEmbedder(model, name=name, input_norm=input_norm, threads=threads, channels_last=channels_last)
    return TorchEmbedder(model, name=name, input_norm=input_norm, device=device, channels_last=channels_last)


class OnnxEmbedder(Embedder):
    """An ONNX face embedder; its normalisation comes from metadata pocketnas wrote (``input_norm``) or is given.
    Batches run through :class:`MicroBatchRunner` on ``threads`` threads (default: torch's); ``micro_batch=0``
    runs each batch whole on one session of ``threads`` intra-op threads instead (ONNX Runtime's usual way)."""

    def __init__(self, path: str, input_norm: Optional[str] = None, threads: Optional[int] = None,
                 micro_batch: int = 1):
        from ..onnx_runtime import cpu_session

        self.engine = "onnxruntime"
        threads = max(1, int(threads or torch.get_num_threads()))
        self.session = cpu_session(path, 1 if micro_batch else threads)
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
        if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != 3):
            raise InputError(f"{path}: its input is {list(shape)}; a face embedder takes N x 3 x H x W images")
        self.input_size = recorded(shape_hw(shape))
        out = self.session.get_outputs()[0].shape
        if out and len(out) != 2:  # an undeclared shape (None, or no rank) is probed by those that need to know
            raise InputError(f"{path}: its output is {list(out)}; a face embedder gives N x D embeddings")
        self.embedding_size = out[-1] if out and isinstance(out[-1], int) else None
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        if self.fixed_batch not in (None, 1):
            raise InputError(f"{path}: its input has a fixed batch of {self.fixed_batch}; pocketnas runs models "
                             f"with a dynamic batch or a batch of 1")
        self.runner = MicroBatchRunner(self.session, threads if micro_batch else 1,
                                       1 if self.fixed_batch else (micro_batch or 1 << 30))  # 0: whole batches

    def __call__(self, images: ArrayLike) -> np.ndarray:
        return self.runner(np.ascontiguousarray(normalize(torch.as_tensor(images), self.input_norm).numpy()))


def load_embedder(spec: str, arch: Optional[str] = None, pretrained: Optional[str] = None,
                  input_norm: Optional[str] = None, device: str = "cpu", threads: Optional[int] = None,
                  engine: str = "torch") -> Embedder:
    """A registry name (with ``pretrained``), a pocketnas checkpoint, a bare ``backbone.pth`` (with ``arch``), or an
    ``.onnx`` file (normalisation from its metadata or ``input_norm``). A PyTorch model runs on ``engine`` (see
    :func:`model_embedder`; ``auto`` is what ``pocketnas eval`` uses)."""
    if engine not in ENGINES:
        raise InputError(f"engine {engine!r}: one of {', '.join(ENGINES)}")
    from .factory import load_model

    if str(spec).endswith(".onnx"):
        if not os.path.isfile(spec):
            raise MissingFileError(f"{spec}: no such ONNX model")
        return OnnxEmbedder(spec, input_norm, threads)
    name = os.path.basename(spec) if os.path.exists(spec) else spec
    model = load_model(spec, arch, pretrained)
    if input_norm and arch is None:  # a pocketnas checkpoint or registry model knows its own normalisation
        own = getattr(model, "input_norm", None) or model.pocketnas_cfg.input_norm
        if input_norm != own:
            raise InputError(f"{spec} records its input normalisation ({own}); the {input_norm!r} asked for would "
                             f"feed it inputs it was not trained on. Leave the normalisation out (it is for ONNX "
                             f"models and bare state dicts)")
    return model_embedder(model, name=name, input_norm=input_norm, engine=engine, device=device, threads=threads)


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
