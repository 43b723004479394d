"""Pretrained weights: PyTorch layouts (torchvision, timm, legacy SENet) <-> Flax variables,
file and Hub I/O, known weight sets, and our own weight files with architecture metadata."""

from resnext_jax.weights.api import export_torch, load_pretrained, new_head, resolve_source
from resnext_jax.weights.errors import WeightsError, WeightsFileError
from resnext_jax.weights.hub import resolve_hub
from resnext_jax.weights.io import read_state_dict, write_safetensors
from resnext_jax.weights.layouts import LAYOUTS, detect_layout, model_layout
from resnext_jax.weights.mapping import LoadReport, flax_to_torch, torch_to_flax
from resnext_jax.weights.native import load_model, load_weights, read_weights, save_weights
from resnext_jax.weights.pretrained import (
    PRETRAINED,
    PretrainedCfg,
    get_pretrained_cfg,
    list_pretrained,
)

__all__ = [
    "LAYOUTS", "PRETRAINED", "LoadReport", "PretrainedCfg", "WeightsError", "WeightsFileError",
    "detect_layout", "export_torch", "flax_to_torch", "get_pretrained_cfg", "list_pretrained",
    "load_model", "load_pretrained", "load_weights", "model_layout", "new_head",
    "read_state_dict", "read_weights", "resolve_hub", "resolve_source", "save_weights",
    "torch_to_flax", "write_safetensors",
]
