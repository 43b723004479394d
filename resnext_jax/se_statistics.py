"""What the SE gates of a model do per class: the mean gate of every channel of every SE block
for each class over a dataset, and how much of the gates' variation the class explains.

The statistics only; :mod:`resnext_jax.viz` draws them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import numpy as np

from resnext_jax.parallel import ParallelApply


@dataclasses.dataclass(frozen=True)
class SEExcitations:
    """Per-class statistics of the SE gates of every SE block, accumulated over a dataset.

    ``blocks`` are the block names in network order (``layer3_1``); ``class_means[b]`` is the
    ``(num_classes, channels)`` mean gate of block ``b`` per class (NaN for a class with no
    image); ``counts`` the images per class; ``specificity[b]`` the block's class specificity
    (see :func:`class_specificity`).
    """

    blocks: tuple[str, ...]
    class_means: dict[str, np.ndarray]
    counts: np.ndarray
    specificity: dict[str, float]

    def overall_mean(self, block: str) -> np.ndarray:
        """The ``(channels,)`` mean gate of ``block`` over every image."""
        seen = self.counts > 0
        return (self.counts[seen, None] * self.class_means[block][seen]).sum(0) \
            / self.counts.sum()


@dataclasses.dataclass
class _GateMoments:
    """Running per-class sums of the gates and of their squares (float64)."""

    total: np.ndarray  # (K, C)
    squares: np.ndarray  # (K, C)


def class_specificity(total: np.ndarray, squares: np.ndarray, counts: np.ndarray) -> float:
    """How much of a block's gate variation the class explains: adjusted eta squared.

    From per-class sums of the gates ``total`` (K, C), of their squares ``squares`` (K, C)
    and the image ``counts`` (K,), pooled over channels: with ``SS_t`` the spread of the gates
    of all images around the overall channel means, ``SS_b`` the part due to the class means
    (one-way ANOVA) and ``SS_w = SS_t - SS_b``,

        eps^2 = (SS_b - (K - 1) * SS_w / (N - K)) / SS_t

    over the ``K`` classes that have images and ``N`` images. Plain ``SS_b / SS_t`` would be
    about ``(K - 1) / (N - 1)`` for class-blind gates (class means differ by chance); the
    adjustment removes that, so a block whose gates do not depend on the class scores about 0
    (slightly negative values are chance), and one whose gates are set by the class scores
    near 1. A block with constant gates scores 0.
    """
    seen = counts > 0
    k, n = int(seen.sum()), float(counts.sum())
    if k < 2 or n <= k:
        raise ValueError(f"class specificity needs at least 2 classes with images and more "
                         f"images than classes; got {k} classes and {int(n)} images")
    total, squares, counts = total[seen], squares[seen], counts[seen].astype(np.float64)
    grand = total.sum(0) / n
    ss_total = float((squares.sum(0) - n * grand**2).sum())
    class_means = total / counts[:, None]
    ss_between = float((counts[:, None] * (class_means - grand) ** 2).sum())
    # Gates in (0, 1) summed in float64: cancellation is far below the chance level.
    if ss_total <= 1e-12 * n * total.shape[1]:
        return 0.0
    ss_within = max(ss_total - ss_between, 0.0)
    return (ss_between - (k - 1) * ss_within / (n - k)) / ss_total


def _gate_paths(intermediates: Mapping[str, Any]) -> dict[str, jax.Array]:
    """``{block name: (N, C) gates}`` from the sown ``intermediates`` collection."""
    flat = jax.tree_util.tree_flatten_with_path(intermediates)[0]
    gates = {}
    for path, value in flat:
        keys = [getattr(p, "key", getattr(p, "idx", None)) for p in path]
        if "gate" in keys:
            gates["/".join(str(k) for k in keys[:keys.index("gate")] if k != "se")] = value
    return gates


def se_excitations(model: Any, variables: Mapping[str, Any],
                   batches: Iterable[tuple[Any, Any]], num_classes: int) -> SEExcitations:
    """Mean SE gate per class and per SE block over ``batches`` of ``(images, labels)``.

    ``images`` are model inputs (NHWC, normalised), ``labels`` integer classes in
    ``[0, num_classes)``; a label ``< 0`` marks a padding row and is ignored, so padding the
    last batch to the common shape keeps the compiled function to one. Runs in eval mode.
    """
    if getattr(model, "se", None) is None:
        raise ValueError("the model has no SE blocks (se=None), so it sows no 'gate'; use an "
                         "SE model such as seresnext50_32x4d")

    forward = ParallelApply(model, train=False, mutable=["intermediates"])

    def gates_of(variables, images):
        _, state = forward(variables, images)
        return _gate_paths(state.get("intermediates", {}))

    moments: dict[str, _GateMoments] = {}
    counts = np.zeros(num_classes, np.int64)
    for images, labels in batches:
        labels = np.asarray(labels).astype(np.int64).reshape(-1)
        pad = -len(labels) % forward.devices  # rows split evenly; label -1 is ignored
        images = np.concatenate([images, np.zeros((pad, *np.shape(images)[1:]),
                                                  np.asarray(images).dtype)])
        labels = np.concatenate([labels, np.full(pad, -1)])
        if labels.max(initial=-1) >= num_classes:
            raise ValueError(f"label {labels.max()} out of range for num_classes={num_classes}")
        keep = labels >= 0
        onehot = np.eye(num_classes)[labels[keep]]  # (n, K)
        counts += onehot.sum(0).astype(np.int64)
        for name, gate in gates_of(variables, images).items():
            g = np.asarray(gate, np.float64)[keep]
            m = moments.setdefault(name, _GateMoments(
                np.zeros((num_classes, g.shape[1])), np.zeros((num_classes, g.shape[1]))))
            m.total += onehot.T @ g
            m.squares += onehot.T @ g**2
    if not moments:
        raise ValueError("no batches were given")
    order = [f"layer{s + 1}_{i}" for s, depth in enumerate(model.layers) for i in range(depth)]
    blocks = tuple(sorted(moments, key=order.index))
    with np.errstate(invalid="ignore", divide="ignore"):
        means = {b: moments[b].total / counts[:, None] for b in blocks}
    spec = {b: class_specificity(moments[b].total, moments[b].squares, counts) for b in blocks}
    return SEExcitations(blocks, means, counts, spec)
