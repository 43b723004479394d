"""The zoo as Flax NNX modules: the linen models through ``flax.nnx.bridge``, with the same
parameters, outputs and pretrained weights.

``ResNetNNX`` holds a linen :class:`~resnext_jax.model.ResNet` as a stateful NNX module and
switches BatchNorm and dropout as NNX users expect: ``model.train()`` (the default, like
``nnx.BatchNorm``) normalises with batch statistics and updates the running ones,
``model.eval()`` uses the running statistics. ::

    import resnext_jax as rx
    model = rx.nnx.load("seresnext50_32x4d.racm_in1k", num_classes=10)   # or create_model
    model.eval()
    logits = model(images)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from resnext_jax import zoo
from resnext_jax.model import ResNet
from resnext_jax.transforms import Transform
from resnext_jax.weights import load as load_weights

_COLLECTIONS = {nnx.Param: "params", nnx.BatchStat: "batch_stats"}


class ResNetNNX(nnx.Module):
    """A linen ``ResNet`` as an NNX module (``flax.nnx.bridge.ToNNX``)."""

    def __init__(self, module: ResNet, *, rngs: nnx.Rngs | None = None,
                 variables: dict[str, Any] | None = None,
                 cfg: zoo.PretrainedCfg | None = None) -> None:
        rngs = rngs or nnx.Rngs(params=0, dropout=1)
        self.module, self.cfg = module, cfg  # cfg: the weights' config, from load
        size = max(module.feature_info[-1]["reduction"], 32)
        x = jnp.zeros((1, size, size, module.in_chans))
        # The variables' structure from shapes alone, then their values: from ``variables``
        # or one compiled ``init`` (the bridge's own initialisation runs op by op).
        self.net = nnx.eval_shape(
            lambda: nnx.bridge.lazy_init(nnx.bridge.ToNNX(module, rngs=nnx.Rngs(0)), x))
        self.net.to_nnx__rngs = rngs.fork()
        if variables is None:
            variables = jax.jit(module.init)({"params": rngs.params()}, x)
        self.load_variables(variables)
        self.use_running_average = False  # nnx's convention: train mode until .eval()

    @property
    def transform(self) -> Transform | None:
        """How the loaded weights' inputs were made (None for a fresh model)."""
        return self.cfg.transform if self.cfg else None

    def __call__(self, images: jax.Array) -> jax.Array:
        """Logits, or the pooled features of a model with ``num_classes=0``."""
        return self._apply(images, "__call__")

    def forward_features(self, images: jax.Array) -> jax.Array:
        """The last stage's map, before pooling (``ResNet.forward_features``)."""
        return self._apply(images, "forward_features")

    def forward_intermediates(self, images: jax.Array) -> dict[str, jax.Array]:
        """The stem's and every stage's maps (``ResNet.forward_intermediates``)."""
        return self._apply(images, "forward_intermediates")

    def _apply(self, images: jax.Array, method: str) -> Any:
        if self.use_running_average:
            return self.net(images, train=False, method=method)
        return self.net(images, train=True, mutable=["batch_stats"], method=method)

    def load_variables(self, variables: dict[str, Any]) -> None:
        """Set the parameters and BatchNorm statistics from linen ``variables``."""
        state = nnx.state(self.net)

        def value(path: tuple, leaf: nnx.Variable) -> Any:
            tree = variables[_COLLECTIONS[type(leaf)]]
            for key in path:
                tree = tree[key]
            return jnp.asarray(tree, leaf.get_value().dtype)

        flat = [(path, leaf.replace(value(path, leaf))) for path, leaf in state.flat_state()
                if type(leaf) in _COLLECTIONS]  # not the random-number streams
        nnx.update(self.net, nnx.State.from_flat_path(flat))

    def variables(self) -> dict[str, Any]:
        """The linen variables (``params``, ``batch_stats``) of the current state."""
        out: dict[str, Any] = {}
        for path, leaf in nnx.state(self.net).flat_state():
            if type(leaf) not in _COLLECTIONS:
                continue
            tree = out.setdefault(_COLLECTIONS[type(leaf)], {})
            for key in path[:-1]:
                tree = tree.setdefault(key, {})
            tree[path[-1]] = leaf.get_value()
        return out


def create_model(name: str, *, rngs: nnx.Rngs | None = None, **overrides: Any) -> ResNetNNX:
    """A zoo model (``resnext_jax.create_model``'s arguments), initialised, as NNX."""
    return ResNetNNX(zoo.create_model(name, **overrides), rngs=rngs)


def load(source: Any, model: str | ResNet | None = None, *, rngs: nnx.Rngs | None = None,
         **overrides: Any) -> ResNetNNX:
    """Weights from anywhere ``resnext_jax.load`` reads, as an NNX module."""
    loaded = load_weights(source, model, **overrides)
    return ResNetNNX(loaded.model, rngs=rngs, variables=loaded.variables, cfg=loaded.cfg)
