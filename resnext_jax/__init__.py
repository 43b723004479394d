"""ResNeXt and SE-ResNeXt for JAX / Flax: backbones, a model zoo, ported weights, training."""

from resnext_jax import errors, nnx
from resnext_jax.flops import count_macs
from resnext_jax.model import ResNet, count_params
from resnext_jax.ops import compiler_options
from resnext_jax.parallel import parallel_apply
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

__all__ = [
    "Pretrained", "PretrainedCfg", "ResNet", "Transform", "WeightsError", "compiler_options",
    "count_macs", "count_params", "create_model", "errors", "get_entry", "get_pretrained_cfg",
    "list_models", "list_pretrained", "load", "load_image", "nnx", "parallel_apply",
    "push_to_hub", "register", "register_pretrained", "save_pretrained",
]
