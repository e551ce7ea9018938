"""The bottom layer: the operations cells are made of and pocketnas's own CPU kernels (timm's ``layers``).

Nothing here imports from pocketnas's models, search, engine or evaluation.
"""
from .checkpointing import GradCheckpointing, checkpoint_block
from .kernels import (AvgPool2d, BatchNorm2d, DepthwiseConv2d, PReLU, own_kernels, set_own_kernels,
                      use_torch_kernels)
from .ops import (ACTIVATIONS, OPS, DwConv, FactorizedReduce, PoolBN, SepConv, Zero, activation, is_parameter_free,
                  make_op, preprocess_op)

__all__ = ["ACTIVATIONS", "OPS", "AvgPool2d", "BatchNorm2d", "DepthwiseConv2d", "DwConv", "FactorizedReduce",
           "GradCheckpointing", "PReLU", "PoolBN", "SepConv", "Zero", "activation", "checkpoint_block",
           "is_parameter_free", "make_op", "own_kernels", "preprocess_op", "set_own_kernels", "use_torch_kernels"]
