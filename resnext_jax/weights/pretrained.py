"""``Pretrained``: a model, its variables, the config of their weight set and what loading
them did; the one shape ``resnext_jax.load`` returns."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import jax
from flax.traverse_util import unflatten_dict

from resnext_jax import zoo
from resnext_jax.model import ResNet
from resnext_jax.transforms import Transform
from resnext_jax.weights import native
from resnext_jax.weights.errors import WeightsError, tree_differences
from resnext_jax.weights.torch_files import write_safetensors
from resnext_jax.weights.torch_names import (
    LoadReport,
    flax_shapes,
    flax_to_torch,
    model_layout,
)
from resnext_jax.zoo import PretrainedCfg


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """A model and its variables, with where they came from and how inputs were made.

    ``model.apply(variables, images)`` runs it; ``cfg.transform`` is the preprocessing the
    weights were evaluated with; ``report`` says what was loaded and dropped.
    """

    model: ResNet
    variables: dict[str, Any]
    cfg: PretrainedCfg
    report: LoadReport

    @classmethod
    def from_variables(cls, model: ResNet, variables: Mapping[str, Any], *,
                       origin: str = "resnext_jax", transform: Transform | None = None
                       ) -> Pretrained:
        """``model``'s own ``variables`` (freshly initialised, fine-tuned in your code ...)
        as a :class:`Pretrained`, ready for ``save``, ``export_torch`` and
        ``save_pretrained``. Its config names the zoo architecture (when ``model`` is one)
        and ``origin``; it claims no published name or accuracy."""
        name = zoo_name(model) or "resnet"
        cfg = zoo.unpublished_cfg(name, origin, model.num_classes, transform)
        tree = {k: v for k, v in variables.items() if k in ("params", "batch_stats")}
        problems = tree_differences(unflatten_dict(flax_shapes(model)), tree)
        if problems:
            raise WeightsError(f"the variables do not fit the model: {'; '.join(problems)}")
        return cls(model, dict(tree), cfg,
                   LoadReport(origin, "resnext_jax (variables)",
                              loaded=len(jax.tree_util.tree_leaves(tree))))

    @property
    def transform(self) -> Transform:
        return self.cfg.transform

    def save(self, path: str | os.PathLike) -> None:
        """Our own file (variables, architecture, this config); ``resnext_jax.load(path)``
        reads it back."""
        native.write(path, self.variables, self.model, self.cfg,
                     model_name=self.cfg.model if self.cfg.model in zoo.list_models() else None)

    def export_torch(self, path: str | os.PathLike, layout: str | None = None) -> dict:
        """A PyTorch state dict in safetensors (``layout``: torchvision, timm or legacy;
        default the model's own) that the reference model loads with ``strict=True``."""
        layout = layout or model_layout(self.model)
        tensors = flax_to_torch(self.variables, self.model, layout=layout)
        meta = {"format": "pt", "layout": layout, "exported_by": "resnext_jax",
                "model": self.cfg.model}
        write_safetensors(path, tensors, meta)
        return tensors


def zoo_name(model: ResNet) -> str | None:
    """The registered name of ``model``'s architecture (any head), or None."""
    arch = native.architecture(model)
    for name in zoo.list_models():
        candidate = native.architecture(zoo.create_model(name, num_classes=model.num_classes))
        if candidate == arch:
            return name
    return None
