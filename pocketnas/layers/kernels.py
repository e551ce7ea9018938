"""pocketnas's own CPU kernels, behind one switch.

Four modules keep torch's parameters, buffers, state-dict keys and values, and replace torch's CPU kernel where a
profile of a PocketNet training or search step showed it slow: :class:`PReLU` (backward), :class:`BatchNorm2d`
(narrow channels-last maps without affine parameters), :class:`DepthwiseConv2d` (weight gradient of kernels past
3x3) and :class:`AvgPool2d` (stride-1 windows on large channels-last maps). Their timings against torch's kernels
are printed by ``bench/kernels.py`` (with the torch version), not kept here.

The switch: every such module records ``own_kernel`` when it is built, from :func:`own_kernels_default` (set for a
block of code with :func:`own_kernels`), and :func:`set_own_kernels` changes it for a whole network afterwards.
Inference, CUDA, tracing, ``torch.compile`` and ONNX export always use torch's operations: that is a property of
the input, checked per call (:func:`eager_cpu`), not a second switch.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Iterator, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

_OWN_KERNELS = True


def own_kernels_default() -> bool:
    """Whether modules built now use pocketnas's kernels (True unless inside ``own_kernels(False)``)."""
    return _OWN_KERNELS


@contextlib.contextmanager
def own_kernels(enabled: bool) -> Iterator[None]:
    """Modules built inside the block use pocketnas's kernels (``True``) or torch's only (``False``)."""
    global _OWN_KERNELS
    before, _OWN_KERNELS = _OWN_KERNELS, bool(enabled)
    try:
        yield
    finally:
        _OWN_KERNELS = before


class OwnKernel:
    """Mixin of the four modules: ``own_kernel`` decided at construction."""

    own_kernel: bool

    def _init_switch(self) -> None:
        self.own_kernel = own_kernels_default()


def set_own_kernels(module: nn.Module, enabled: bool) -> nn.Module:
    """Switch every pocketnas kernel module in ``module`` to its own kernel (``True``) or torch's (``False``, the
    plain formulation benchmarks compare against): the same values up to float rounding. Returns ``module``."""
    for m in module.modules():
        if isinstance(m, OwnKernel):
            m.own_kernel = bool(enabled)
    return module


def use_torch_kernels(module: nn.Module) -> nn.Module:
    """``set_own_kernels(module, False)``."""
    return set_own_kernels(module, False)


@functools.lru_cache(maxsize=None)
def _onnx_export_flags():
    """The two flags ``torch.onnx.is_in_onnx_export()`` reads, imported once: that function imports both modules
    on every call (about 18 us, which came to a tenth of a small search step's Python time). None where a torch
    version keeps them elsewhere (the public function is used then)."""
    try:
        from torch.onnx._internal.exporter import _flags
        from torch.onnx._internal.torchscript_exporter._globals import GLOBALS
    except ImportError:
        return None
    return _flags, GLOBALS


def in_onnx_export() -> bool:
    flags = _onnx_export_flags()
    if flags is None:
        return torch.onnx.is_in_onnx_export()
    return bool(flags[1].in_onnx_export or flags[0]._is_onnx_exporting)


def eager_cpu(x: torch.Tensor) -> bool:
    """Whether pocketnas's own CPU kernels below may run on ``x``: eager CPU work, not tracing, ONNX export or
    ``torch.compile`` (which see torch's operations)."""
    # is_compiling() first: torch.compile traces it as a constant, while the ONNX-export flags are functions it
    # refuses to trace; asked first, they broke every compiled forward into 35 graphs and, past dynamo's recompile
    # limit, back into eager (tests/test_compile.py counts the graphs)
    return (not torch.compiler.is_compiling() and x.device.type == "cpu" and not torch.jit.is_tracing()
            and not in_onnx_export())



class _PReLUFunction(torch.autograd.Function):
    """PReLU (He et al., "Delving Deep into Rectifiers", ICCV 2015, eq. 1: f(x) = max(0, x) + a min(0, x)) with
    torch's forward kernel and a backward written in vectorised elementwise operations.

    Backward: dL/dx = g where x > 0, else a g; dL/da = sum over the non-channel axes of g x where x <= 0. The same
    values as torch's kernel (the input gradient bit for bit, the slope gradient up to summation order); torch's CPU
    ``_prelu_kernel_backward`` took many times its forward and a fifth of a profiled search step (bench/kernels.py
    times both)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return F.prelu(x, weight)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        g_pos = torch.ops.aten.threshold_backward(grad, x, 0)  # grad where x > 0, else 0
        g_neg = grad - g_pos                                    # grad where x <= 0, else 0 (exact)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.addcmul(g_pos, g_neg, weight.view(1, -1, *([1] * (x.dim() - 2))))
        if ctx.needs_input_grad[1]:
            dims = [0] + list(range(2, x.dim())) if weight.numel() > 1 else list(range(x.dim()))
            grad_w = (g_neg * x).sum(dims).view_as(weight)
        return grad_x, grad_w


class PReLU(OwnKernel, nn.PReLU):
    """``nn.PReLU`` (same parameter, same state-dict key, same values) whose backward pass on CPU is pocketnas's
    (see :class:`_PReLUFunction`). Inference, CUDA, tracing, compilation and export use torch's own
    operation."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_switch()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.own_kernel and torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
                and x.dim() >= 2 and eager_cpu(x)):
            return _PReLUFunction.apply(x, self.weight)
        return F.prelu(x, self.weight)


class _NarrowChannelsLastBatchNorm(torch.autograd.Function):
    """scale * BatchNorm(x): training-mode BatchNorm without affine parameters (Ioffe & Szegedy, ICML 2015,
    Algorithm 1, biased batch variance) of a channels-last map, times a scalar (a mixed operation's softmax weight,
    DARTS eq. 2), computed on the map's (N*H*W, C) matrix view: the per-channel sums are matrix products with a row
    of ones, the variance is taken about the mean (two passes, no cancellation).

    Backward (the same paper, section 3), with g the output gradient and xhat the normalised input:
    d scale = sum(g * xhat); dx = scale * invstd * (g - mean(g) - xhat * mean(g * xhat)), means per channel.
    torch's channels-last CPU BatchNorm was slow for channel counts that are not a multiple of 16 (bench/kernels.py
    times both; same values to 1e-5). Wider maps keep torch's kernel, which is faster from 16 channels on."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: torch.Tensor, eps: float):
        n, c, h, w = x.shape
        rows = x.permute(0, 2, 3, 1).reshape(-1, c)  # a view: x is channels-last
        ones = rows.new_ones(1, rows.shape[0])
        mean = (ones @ rows) / rows.shape[0]
        centred = rows - mean
        var = (ones @ (centred * centred)) / rows.shape[0]
        invstd = torch.rsqrt(var + eps)
        ctx.save_for_backward(centred, invstd, scale)
        ctx.mark_non_differentiable(mean, var)
        out = centred * (invstd * scale)
        return out.view(n, h, w, c).permute(0, 3, 1, 2), mean.view(c), var.view(c)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor, _mean, _var):
        centred, invstd, scale = ctx.saved_tensors
        n, c, h, w = grad.shape
        g = grad.permute(0, 2, 3, 1).reshape(-1, c)
        ones = g.new_ones(1, g.shape[0])
        xhat = centred * invstd
        g_sum = ones @ g
        gx_sum = ones @ (g * xhat)
        d_scale = gx_sum.sum().view_as(scale) if ctx.needs_input_grad[1] else None
        dx = None
        if ctx.needs_input_grad[0]:
            m = g.shape[0]
            dx = torch.addcmul(g - g_sum / m, xhat, gx_sum / m, value=-1) * (invstd * scale)
            dx = dx.view(n, h, w, c).permute(0, 3, 1, 2)
        return dx, d_scale, None


class BatchNorm2d(OwnKernel, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` (same buffers, same state-dict keys, same values) with two additions for the search:

    * ``forward(x, scale)`` returns ``scale * BatchNorm(x)`` for a scalar tensor ``scale`` (a mixed operation's
      softmax weight, DARTS eq. 2);
    * narrow (< 16 channels) channels-last CPU maps without affine parameters in training mode go through
      :class:`_NarrowChannelsLastBatchNorm`, which folds the scale into the normalisation (no multiplication of
      its own), with the running statistics updated as torch does.

    Everything else is torch's own operation (inference, export, tracing, compilation, CUDA)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_switch()

    def forward(self, x: torch.Tensor, scale: Optional[torch.Tensor] = None) -> torch.Tensor:
        batch_stats = self.training or not self.track_running_stats
        if (self.own_kernel and batch_stats and not self.affine and x.dim() == 4 and x.shape[1] < 16
                and x.dtype == torch.float32 and x.shape[0] * x.shape[2] * x.shape[3] > 1
                and x.is_contiguous(memory_format=torch.channels_last)
                and not x.is_contiguous() and eager_cpu(x)):
            y, mean, var = _NarrowChannelsLastBatchNorm.apply(x, x.new_ones(()) if scale is None else scale,
                                                             self.eps)
            if self.training and self.track_running_stats:
                with torch.no_grad():
                    self.num_batches_tracked.add_(1)
                    f = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                    m = x.shape[0] * x.shape[2] * x.shape[3]
                    self.running_mean.mul_(1 - f).add_(mean, alpha=f)
                    self.running_var.mul_(1 - f).add_(var * (m / (m - 1)), alpha=f)
            return y
        # torch's kernel: the scale as a multiplication after it (passed as its affine weight, torch's channels-last
        # backward was several times slower at 16 channels, and it misreads a stride-0 weight)
        return super().forward(x) if scale is None else scale * super().forward(x)


def _depthwise_weight_grad(x: torch.Tensor, grad: torch.Tensor, kernel, stride, padding, dilation) -> torch.Tensor:
    """The weight gradient of a depthwise convolution (Chollet, "Xception", CVPR 2017: one kxk filter per channel),
    itself computed as a depthwise convolution:

        dW[c, i, j] = sum_{n, h, w} g[n, c, h, w] x_pad[n, c, s*h + d*i, s*w + d*j]

    is, for each (sample, channel) plane, the cross-correlation of the padded input with the output gradient as
    the kernel (dilation s, stride d), summed over the samples: one grouped convolution over the N*C planes, for
    which torch's forward kernel is fast. Differentiable (double backward works)."""
    n, c, h, w = x.shape
    planes = x.contiguous().view(1, n * c, h, w)
    kernels = grad.contiguous().view(n * c, 1, grad.shape[2], grad.shape[3])
    out = F.conv2d(planes, kernels, None, stride=dilation, padding=padding, dilation=stride, groups=n * c)
    return out[..., :kernel[0], :kernel[1]].reshape(n, c, kernel[0], kernel[1]).sum(0).unsqueeze(1)


class _DepthwiseConvFunction(torch.autograd.Function):
    """A depthwise convolution with torch's forward and input gradient and :func:`_depthwise_weight_grad` for the
    weight gradient: torch's CPU weight gradient is fast for 3x3 kernels only (bench/kernels.py times both at 5x5
    and 7x7); undilated 3x3 stays with torch, whose kernel is faster there."""

    @staticmethod
    def forward(ctx, x, weight, stride, padding, dilation):
        ctx.save_for_backward(x, weight)
        ctx.conf = (stride, padding, dilation)
        return F.conv2d(x, weight, None, stride, padding, dilation, x.shape[1])

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        stride, padding, dilation = ctx.conf
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(grad, x, weight, None, stride, padding, dilation, False,
                                                         [0, 0], x.shape[1], [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            grad_w = _depthwise_weight_grad(x, grad, weight.shape[2:], stride, padding, dilation)
        return grad_x, grad_w, None, None, None


class DepthwiseConv2d(OwnKernel, nn.Conv2d):
    """``nn.Conv2d`` with one filter per channel and no bias (same parameter, same state-dict key, same values)
    whose weight gradient on CPU comes from :class:`_DepthwiseConvFunction` when the kernel reaches past 3x3
    (5x5, 7x7, dilated 3x3). Inference, CUDA, tracing, compilation and export use torch's own operation."""

    def __init__(self, channels: int, kernel: int, stride: int, padding: int, dilation: int = 1):
        super().__init__(channels, channels, kernel, stride, padding, dilation=dilation, groups=channels, bias=False)
        self._init_switch()
        # torch's weight gradient is the faster one up to 3x3: the own kernel is for wider reaches only
        self.own_kernel = self.own_kernel and dilation * (kernel - 1) + 1 > 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.own_kernel and torch.is_grad_enabled() and self.weight.requires_grad and x.dim() == 4
                and self.padding_mode == "zeros" and eager_cpu(x)):
            return _DepthwiseConvFunction.apply(x, self.weight, self.stride, self.padding, self.dilation)
        return super().forward(x)


class AvgPool2d(OwnKernel, nn.AvgPool2d):
    """``nn.AvgPool2d`` (same values up to float rounding, no state) whose stride-1 windows over maps of 14x14 and
    more, channels-last on CPU, are computed as a depthwise convolution with a constant all-ones kernel followed by
    a multiplication with the reciprocal window counts (padding excluded when ``count_include_pad`` is False), which
    was several times faster than torch's CPU average pool there (bench/kernels.py). Smaller maps, strides above 1,
    NCHW, tracing, compilation and export use torch's operation (faster there, or what an exporter sees)."""

    _counts: Optional[torch.Tensor] = None  # reciprocal window counts of the last map size seen

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_switch()

    def _box(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        k, s, p = self.kernel_size, self.stride, self.padding
        if not (self.own_kernel and isinstance(k, int) and s in (1, (1, 1)) and isinstance(p, int)
                and not self.ceil_mode and self.divisor_override is None and x.dim() == 4
                and x.shape[2] * x.shape[3] >= 196
                and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
                and x.dtype == torch.float32 and eager_cpu(x)):
            return None
        c, h, w = x.shape[1:]
        ones = x.new_ones(1, 1, k, k).expand(c, 1, k, k)
        total = F.conv2d(x, ones, None, 1, p, 1, c)
        if self.count_include_pad:
            return total * (1.0 / (k * k))
        counts = self._counts
        if counts is None or counts.shape[2:] != (h, w) or counts.dtype != x.dtype or counts.device != x.device:
            counts = F.conv2d(x.new_ones(1, 1, h, w), x.new_ones(1, 1, k, k), None, 1, p).reciprocal_()
            self._counts = counts
        return total * counts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._box(x)
        return super().forward(x) if out is None else out
