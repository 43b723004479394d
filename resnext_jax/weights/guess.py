"""Which registered models a PyTorch state dict fits, for error messages and the CLI."""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from resnext_jax import zoo
from resnext_jax.weights.layouts import layout_family, model_layout, torch_name

_BLOCK_KEY = re.compile(r"^layer([1-9])\.(\d+)\.")


def depths(keys: list[str]) -> tuple[int, ...]:
    """Blocks per stage, read from ``layerS.I.`` keys."""
    found: dict[int, int] = {}
    for key in keys:
        if match := _BLOCK_KEY.match(key):
            stage, index = int(match[1]), int(match[2])
            found[stage] = max(found.get(stage, 0), index + 1)
    return tuple(found[s] for s in sorted(found))


def matching_models(tensors: Mapping[str, np.ndarray], layout: str) -> list[str]:
    """Registered names whose every backbone tensor has the file's name and shape (the
    classifier may differ), e.g. ``["seresnext50_32x4d"]``."""
    from resnext_jax.weights.mapping import _kind, flax_shapes, torch_shape

    family = layout_family(layout)
    stages = depths(list(tensors))
    shapes = {k: tuple(v.shape) for k, v in tensors.items()
              if not k.endswith("num_batches_tracked")}
    found = []
    for name in zoo.list_models():
        kwargs = zoo.get_entry(name).kwargs
        if tuple(kwargs.get("layers", ())) != stages:
            continue
        model = zoo.create_model(name, num_classes=0)
        if layout_family(model_layout(model)) != family:
            continue
        wanted = {torch_name(p, model, layout): torch_shape(s.shape, _kind(p, len(s.shape)))
                  for p, s in flax_shapes(model).items()}
        backbone = {k: v for k, v in shapes.items() if not k.startswith(("fc.", "last_linear."))}
        if wanted == backbone:
            found.append(name)
    return found
