"""ResNeXt and SE-ResNeXt for JAX / Flax: backbones, a model zoo, ported weights, training."""

import importlib

from resnext_jax import errors
from resnext_jax.flops import count_macs
from resnext_jax.model import ResNet, count_params
from resnext_jax.ops import compiler_options
from resnext_jax.parallel import ParallelApply
from resnext_jax.transforms import Transform, load_image
from resnext_jax.weights import Pretrained, WeightsError, load, push_to_hub, save_pretrained
from resnext_jax.zoo import (
    PretrainedCfg,
    create_model,
    get_entry,
    get_pretrained_cfg,
    list_models,
    list_pretrained,
    register,
    register_pretrained,
)

__version__ = "0.2.0"


def __getattr__(name: str):
    # Flax NNX (and the optax it imports) load on first use of ``rx.nnx`` only.
    if name == "nnx":
        return importlib.import_module("resnext_jax.nnx")
    raise AttributeError(f"module 'resnext_jax' has no attribute {name!r}")

__all__ = [
    "ParallelApply", "Pretrained", "PretrainedCfg", "ResNet", "Transform", "WeightsError",
    "compiler_options", "count_macs", "count_params", "create_model", "errors", "get_entry",
    "get_pretrained_cfg", "list_models", "list_pretrained", "load", "load_image", "nnx",
    "push_to_hub", "register", "register_pretrained", "save_pretrained",
]
