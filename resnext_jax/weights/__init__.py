"""Weights: ``load`` from any source into a :class:`Pretrained`; PyTorch layouts (torchvision,
timm, legacy SENet) <-> Flax variables; safetensors / ``.pth`` files; Hub ids; our own files."""

from resnext_jax.weights.errors import WeightsError, WeightsFileError
from resnext_jax.weights.load import load
from resnext_jax.weights.pretrained import Pretrained
from resnext_jax.weights.publish import push_to_hub, save_pretrained
from resnext_jax.weights.torch_files import read_state_dict, write_safetensors
from resnext_jax.weights.torch_names import (
    LAYOUTS,
    LoadReport,
    detect_layout,
    flax_to_torch,
    model_layout,
    torch_to_flax,
)

__all__ = ["LAYOUTS", "LoadReport", "Pretrained", "WeightsError", "WeightsFileError",
           "detect_layout", "flax_to_torch", "load", "model_layout", "push_to_hub",
           "read_state_dict", "save_pretrained",
           "torch_to_flax", "write_safetensors"]
