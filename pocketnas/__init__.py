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

__all__ = ["create_model", "list_models", "model_cfg", "load", "save", "Genotype", "GenotypeError",
           "get_genotype", "CheckpointError", "evaluate_pairs", "__version__"]
