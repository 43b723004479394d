"""The golden weight fixtures (made by tests/make_weight_fixtures.py) and their models."""

from __future__ import annotations

import json
import os

import numpy as np

import resnext_jax as rx
from resnext_jax.weights import read_state_dict

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "weights")
with open(os.path.join(FIXTURES, "manifest.json"), encoding="utf-8") as _stream:
    MANIFEST = json.load(_stream)


def fixture_model(name: str, **overrides: object) -> rx.ResNet:
    kwargs = {k: tuple(v) if isinstance(v, list) else v
              for k, v in MANIFEST["fixtures"][name]["resnet"].items()}
    return rx.ResNet(**{**kwargs, **overrides})


def fixture_state(name: str) -> dict[str, np.ndarray]:
    return read_state_dict(os.path.join(FIXTURES, f"{name}.safetensors"))
