"""pocketnas: search, build, distil, compress and evaluate extremely compact face recognition networks.

    import pocketnas
    model = pocketnas.create_model("pocketnet_s_128")                 # a PocketNetS-128 (random weights)
    model = pocketnas.create_model("pocketnet_s_128", pretrained="backbone.pth")  # an original release file
    pocketnas.save(model, "model.pt"); model = pocketnas.load("model.pt")          # self-describing checkpoints
"""
from .metrics.verification import evaluate_pairs
from .models.checkpoint import CheckpointError, save
from .models.factory import load
from .genotype import Genotype, GenotypeError, get_genotype
from .models import create_model, list_models, model_cfg

from .version import __version__

# subpackages reached as attributes (``pocketnas.data.normalize``) are imported on first use, not by
# ``import pocketnas`` (PEP 562): the CLI's and the data pipeline's imports stay off the library's import time
_SUBPACKAGES = ("compress", "data", "detection", "engine", "evaluation", "layers", "losses", "metrics", "models",
                "nas")


def __getattr__(name: str):
    if name in _SUBPACKAGES:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["create_model", "list_models", "model_cfg", "load", "save", "Genotype", "GenotypeError",
           "get_genotype", "CheckpointError", "evaluate_pairs", "__version__"]
