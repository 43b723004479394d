"""ResNeXt and SE-ResNeXt for JAX / Flax: backbones, a model zoo, ported weights, training."""

from resnext_jax.flops import count_macs
from resnext_jax.model import ResNet, count_params
from resnext_jax.ops import compiler_options
from resnext_jax.parallel import parallel_apply
from resnext_jax.weights import (
    export_torch,
    get_pretrained_cfg,
    list_pretrained,
    load_model,
    load_pretrained,
    load_weights,
    save_weights,
)
from resnext_jax.zoo import create_model, get_entry, list_models, register

__version__ = "0.1.0"

__all__ = [
    "ResNet", "compiler_options", "count_macs", "count_params", "create_model", "get_entry",
    "list_models", "parallel_apply", "register", "export_torch", "get_pretrained_cfg",
    "list_pretrained", "load_model", "load_pretrained", "load_weights", "save_weights",
]
