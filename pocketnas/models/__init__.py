"""Final (discrete) networks: PocketNets built from genotypes, and the teachers (iResNet, MobileFaceNet).

Importing this package registers every built-in variant (each model module's ``@register_model`` functions).
"""
from . import iresnet, mobilefacenet, pocketnet  # noqa: F401  (registration)
from .factory import create_model, load, load_model
from .registry import ModelCfg, PretrainedCfg, is_model, list_models, model_cfg, register_model

__all__ = ["ModelCfg", "PretrainedCfg", "create_model", "is_model", "list_models", "load", "load_model",
           "model_cfg", "register_model"]
