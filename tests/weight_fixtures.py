"""The golden weight fixtures (made by tests/make_weight_fixtures.py) and their models, and
random variables for zoo models."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict

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


def random_model(name: str) -> tuple[rx.ResNet, dict]:
    """A zoo model with random variables (drawn directly: model.init would compile)."""
    model = rx.create_model(name)
    shapes = jax.eval_shape(model.init, jax.random.key(1), jnp.zeros((1, 32, 32, 3)))
    rng = np.random.default_rng(1)
    return model, jax.tree_util.tree_map(
        lambda s: jnp.asarray(np.abs(rng.standard_normal(s.shape)).astype(s.dtype)), shapes)


def flat_variables(variables: dict) -> dict:
    return {k: np.asarray(v) for k, v in flatten_dict(variables).items()}


def assert_same_variables(a: dict, b: dict) -> None:
    fa, fb = flat_variables(a), flat_variables(b)
    assert fa.keys() == fb.keys()
    for key in fa:
        np.testing.assert_array_equal(fa[key], fb[key], err_msg="/".join(key))
