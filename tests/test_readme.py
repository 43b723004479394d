"""The README's snippets, run verbatim (tests/readme_snippets.py extracts them), offline:
random weights in a local Hugging Face cache stand in for the Hub."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from readme_snippets import snippet
from test_weights_io import _hub_cache, go_offline

import resnext_jax as rx


def _run(name: str) -> dict:
    scope: dict = {}
    exec(snippet(name), scope)  # noqa: S102 - the README's own code
    return scope


def _random_hub_weights(offline_cache: str, weight_set: str, tmp_path) -> None:
    """A local Hub copy of ``weight_set`` with random values (BN variances positive)."""
    cfg = rx.get_pretrained_cfg(weight_set)
    model = rx.create_model(cfg.model)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    rng = np.random.default_rng(0)
    variables = jax.tree_util.tree_map_with_path(
        lambda path, s: np.ones(s.shape, np.float32) if "var" in str(path[-1])
        else rng.normal(0, 0.02, s.shape).astype(np.float32), shapes)
    path = os.path.join(str(tmp_path), "weights.safetensors")
    rx.Pretrained(model, variables, cfg, None).export_torch(path)
    _hub_cache(offline_cache, cfg.hf_hub_id, path)


def test_quickstart():
    scope = _run("quickstart")
    assert scope["features"]["layer4"].shape == (2, 7, 7, 2048)
    assert scope["features"]["pre_logits"].shape == (2, 2048)


def test_pretrained(tmp_path, monkeypatch):
    _random_hub_weights(go_offline(tmp_path, monkeypatch), "seresnext50_32x4d.racm_in1k",
                        tmp_path)
    with pytest.warns(UserWarning, match="new classifier head for 10 classes"):
        scope = _run("pretrained")
    assert scope["features"]["pre_logits"].shape == (2, 2048)
    assert scope["transform"].interpolation == "bicubic"
    assert scope["ten"].model.num_classes == 10


@pytest.mark.e2e
def test_finetune(tmp_path, monkeypatch):
    _random_hub_weights(go_offline(tmp_path, monkeypatch), "seresnext26d_32x4d.bt_in1k",
                        tmp_path)
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        os.makedirs(f"my_images/{label}")
        for i in range(10):
            Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(
                f"my_images/{label}/{i}.png")
    scope = _run("finetune")
    finetuned = scope["finetuned"]
    assert finetuned.model.num_classes == 2 and finetuned.cfg.model == "seresnext26d_32x4d"
    assert finetuned.transform.size == 128 and finetuned.transform.interpolation == "bicubic"
    assert finetuned.cfg.top1 is not None
