"""Weights as a Hugging Face Hub folder that timm, PyTorch and this project all read.

``save_pretrained(pretrained, folder)`` writes ``model.safetensors`` (the PyTorch state dict in
the model's torchvision / timm / legacy layout: ``timm.create_model("hf-hub:USER/REPO",
pretrained=True)`` loads it for models timm has), ``model.msgpack`` (our file: architecture,
transform, digest), ``config.json`` (timm's: architecture, classes, pretrained config) and a
model card ``README.md`` (the transform, the metrics and the training config, when given).
``resnext_jax.load(folder)`` reads it back, as it reads the repository once pushed with
``push_to_hub``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from resnext_jax.files import atomic_write
from resnext_jax.weights.hub import NATIVE_FILE, SAFETENSORS_FILE
from resnext_jax.weights.pretrained import Pretrained
from resnext_jax.weights.torch_names import model_layout

CONFIG, CARD = "config.json", "README.md"


def save_pretrained(pretrained: Pretrained, folder: str | os.PathLike, *,
                    training_config: Mapping[str, Any] | None = None,
                    metrics: Mapping[str, float] | None = None) -> str:
    """Write the Hub folder; returns its path."""
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    model, cfg, t = pretrained.model, pretrained.cfg, pretrained.transform
    pretrained.save(os.path.join(folder, NATIVE_FILE))
    pretrained.export_torch(os.path.join(folder, SAFETENSORS_FILE))
    timm_config = {
        "architecture": cfg.model, "num_classes": model.num_classes,
        "num_features": model.num_features,
        "pretrained_cfg": {
            "tag": cfg.name.partition(".")[2], "input_size": [model.in_chans, t.size, t.size],
            "interpolation": t.interpolation, "crop_pct": t.crop_pct, "crop_mode": "center",
            "mean": list(t.mean), "std": list(t.std), "num_classes": model.num_classes,
            "first_conv": "layer0.conv1" if model_layout(model) == "legacy" else "conv1",
            "classifier": "last_linear" if model_layout(model) == "legacy" else "fc"}}
    atomic_write(os.path.join(folder, CONFIG), json.dumps(timm_config, indent=2).encode())
    atomic_write(os.path.join(folder, CARD),
                 _card(pretrained, training_config, metrics).encode())
    return folder


def _card(pretrained: Pretrained, training_config: Mapping[str, Any] | None,
          metrics: Mapping[str, float] | None) -> str:
    cfg, t = pretrained.cfg, pretrained.transform
    lines = ["---", "library_name: timm", "tags:", "- image-classification", "- resnext_jax",
             "- jax", "- flax", "license: apache-2.0", "---", "",
             f"# {cfg.name}", "",
             f"`{cfg.model}` weights written by resnext_jax (JAX / Flax). Load them with",
             "", "```python", "import resnext_jax as rx",
             'pretrained = rx.load("hf-hub:USER/REPO")  # or a local copy of this folder',
             "```", "",
             "`model.safetensors` holds the same tensors in the PyTorch layout of the model "
             f"({model_layout(pretrained.model)}).", "",
             "## Preprocessing", "",
             f"Resize the shorter side to {t.resize_size} ({t.interpolation}), center-crop "
             f"{t.size}x{t.size}, scale to [0, 1], normalise with mean {list(t.mean)} and "
             f"std {list(t.std)}; NHWC input with {t.channels} channel(s).", ""]
    if cfg.top1 is not None or metrics:
        lines += ["## Results", ""]
        if cfg.top1 is not None:
            lines.append(f"- top-1: {cfg.top1:.3f} %")
        lines += [f"- {k}: {v:.6g}" for k, v in sorted((metrics or {}).items())
                  if isinstance(v, int | float)]
        lines.append("")
    if training_config:
        lines += ["## Training config", "", "```json",
                  json.dumps(training_config, indent=2, sort_keys=True), "```", ""]
    return "\n".join(lines)


def push_to_hub(folder: str | os.PathLike, repo_id: str, *, private: bool = False,
                token: str | None = None) -> str:
    """Upload a folder written by :func:`save_pretrained` to the Hub; returns its URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, folder_path=os.fspath(folder),
                             commit_message="resnext_jax weights")
    return str(getattr(info, "commit_url", repo_id))
