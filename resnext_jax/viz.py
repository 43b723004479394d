"""What the network learned: SE excitations by class, grouped-conv filters, training curves.

Each ``plot_*`` function returns a matplotlib ``Figure`` (drawn without pyplot, so no GUI
backend is touched) and writes a PNG when given a path; the arrays behind every picture come
from separate functions that the tests check.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from matplotlib.figure import Figure

from resnext_jax.parallel import ParallelApply

# --------------------------------------------------------------------------------------------
# SE excitations


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


def default_blocks(blocks: Sequence[str]) -> list[str]:
    """The last SE block of every stage (depth increases left to right)."""
    last: dict[str, str] = {}
    for b in blocks:
        last[b.split("_")[0]] = b
    return list(last.values())


def plot_se_excitations(exc: SEExcitations, path: str | Path | None = None,
                        blocks: Sequence[str] | None = None,
                        classes: Sequence[int] | None = None,
                        class_names: Sequence[str] | None = None) -> Figure:
    """Mean gate against channel index, one line per class, one panel per block.

    The picture of Hu et al. (SENet, Fig. 6): the classes' lines coincide in early blocks and
    part in late ones. The last panel gives every block's class specificity. Defaults: the
    last block of each stage and the first five classes that have images.
    """
    blocks = list(blocks or default_blocks(exc.blocks))
    unknown = sorted(set(blocks) - set(exc.blocks))
    if unknown:
        raise ValueError(f"no SE block named {unknown}; the model has {list(exc.blocks)}")
    if classes is None:
        classes = [int(k) for k in np.flatnonzero(exc.counts > 0)[:5]]
    names = list(class_names) if class_names is not None else [str(k) for k in
                                                                 range(len(exc.counts))]
    fig = Figure(figsize=(3.2 * (len(blocks) + 1), 3.0), layout="constrained")
    axes = fig.subplots(1, len(blocks) + 1, squeeze=False)[0]
    for ax, block in zip(axes, blocks, strict=False):
        means = exc.class_means[block]
        for k in classes:
            ax.plot(means[k], lw=0.8, label=names[k])
        ax.plot(exc.overall_mean(block), "k--", lw=0.8, label="all")
        ax.set(title=f"{block}  (eps$^2$ = {exc.specificity[block]:.2f})",
               xlabel="channel index")
    axes[0].set_ylabel("mean excitation (gate)")
    axes[0].legend(fontsize=7, loc="lower left")
    ax = axes[-1]
    spec = [exc.specificity[b] for b in exc.blocks]
    ax.bar(range(len(spec)), spec, color="tab:gray")
    ax.set_xticks(range(len(spec)), exc.blocks, rotation=90, fontsize=6)
    ax.set(title="class specificity (adjusted eta$^2$)", ylim=(min(0.0, *spec), 1))
    _save(fig, path)
    return fig


# --------------------------------------------------------------------------------------------
# Filters


def grouped_filter_tiles(kernel: Any, groups: int) -> np.ndarray:
    """A grouped conv kernel ``(kh, kw, in/groups, out)`` as ``(groups, out/groups,
    in/groups, kh, kw)``: ``tiles[g, j, i]`` is the ``kh x kw`` filter from input channel
    ``g * in/groups + i`` to output channel ``g * out/groups + j``."""
    kernel = np.asarray(kernel, np.float32)
    kh, kw, in_per_group, out = kernel.shape
    if out % groups:
        raise ValueError(f"{out} output channels are not divisible by groups={groups}")
    return kernel.transpose(3, 2, 0, 1).reshape(groups, out // groups, in_per_group, kh, kw)


def group_connectivity(kernel: Any, groups: int) -> np.ndarray:
    """``(in, out)`` L2 norm of each input -> output filter of a grouped conv, zero between
    channels of different groups: the block-diagonal shape of the dense equivalent."""
    tiles = grouped_filter_tiles(kernel, groups)
    g, out_g, in_g = tiles.shape[:3]
    dense = np.zeros((g * in_g, g * out_g), np.float32)
    norms = np.sqrt((tiles**2).sum((-2, -1)))  # (g, out_g, in_g)
    for i in range(g):
        dense[i * in_g:(i + 1) * in_g, i * out_g:(i + 1) * out_g] = norms[i].T
    return dense


def mosaic(tiles: np.ndarray, pad: int = 1, fill: float = np.nan) -> np.ndarray:
    """Tile an ``(rows, cols, h, w[, 3])`` array into one image, ``pad`` pixels of ``fill``
    between tiles: tile ``(r, c)`` starts at ``(r * (h + pad), c * (w + pad))``."""
    rows, cols, h, w = tiles.shape[:4]
    out = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad, *tiles.shape[4:]), fill,
                  np.float32)
    for r in range(rows):
        for c in range(cols):
            out[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = tiles[r, c]
    return out


def grouped_filter_mosaic(kernel: Any, groups: int, max_groups: int = 8,
                          max_filters: int = 4) -> np.ndarray:
    """The first ``max_groups`` groups one per row; in each row the first ``max_filters``
    output filters of the group (3 pixels apart), each as its ``in/groups`` input-channel
    taps side by side (1 pixel apart)."""
    tiles = grouped_filter_tiles(kernel, groups)[:max_groups, :max_filters]
    filters = np.stack([[mosaic(f[None]) for f in group] for group in tiles])
    return mosaic(filters, pad=3)


def plot_grouped_filters(kernel: Any, groups: int, path: str | Path | None = None,
                         title: str = "grouped conv", max_groups: int = 8,
                         max_filters: int = 4) -> Figure:
    """Left: the block-diagonal input x output connectivity of a grouped conv; right: the
    filters of its first groups, a row per group (see :func:`grouped_filter_mosaic`)."""
    dense = group_connectivity(kernel, groups)
    tiles = grouped_filter_mosaic(kernel, groups, max_groups, max_filters)
    lim = float(np.nanmax(np.abs(tiles))) or 1.0
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=(1, 2))
    left.imshow(dense, cmap="viridis", interpolation="nearest")
    left.set(title=f"{title}: |filter|, {groups} groups",
             xlabel="output channel", ylabel="input channel")
    right.imshow(tiles, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    in_g = np.asarray(kernel).shape[2]
    right.set(title=f"first {min(groups, max_groups)} groups (rows); per output filter, "
                    f"its {in_g} input taps", xticks=[], yticks=[])
    _save(fig, path)
    return fig


def stem_filter_mosaic(kernel: Any, cols: int | None = None) -> np.ndarray:
    """First-layer filters ``(kh, kw, 3 or 1, out)`` as one RGB image in ``[0, 1]``.

    Each filter is scaled on its own, symmetrically (``0.5 + k / (2 max|k|)``), so grey is
    zero; one input channel is drawn grey; filters fill rows of ``cols`` (default
    ``ceil(sqrt(out))``); gaps are white.
    """
    kernel = np.asarray(kernel, np.float32)
    kh, kw, chans, out = kernel.shape
    if chans == 1:
        kernel = np.repeat(kernel, 3, axis=2)
    elif chans != 3:
        raise ValueError(f"stem filters are drawn as RGB or grey and need 3 or 1 input "
                         f"channels, got {chans}")
    cols = cols or math.ceil(math.sqrt(out))
    rows = math.ceil(out / cols)
    filters = kernel.transpose(3, 0, 1, 2)  # (out, kh, kw, 3)
    scale = np.abs(filters).reshape(out, -1).max(1)
    filters = 0.5 + filters / (2 * np.where(scale > 0, scale, 1.0))[:, None, None, None]
    tiles = np.ones((rows * cols, kh, kw, 3), np.float32)
    tiles[:out] = filters
    return mosaic(tiles.reshape(rows, cols, kh, kw, 3), fill=1.0)


def plot_stem_filters(kernel: Any, path: str | Path | None = None,
                      title: str = "stem conv1 filters") -> Figure:
    """The first convolution's filters as RGB tiles (see :func:`stem_filter_mosaic`)."""
    image = stem_filter_mosaic(kernel)
    fig = Figure(figsize=(5, 5), layout="constrained")
    ax = fig.subplots()
    ax.imshow(image, interpolation="nearest")
    ax.set(title=title, xticks=[], yticks=[])
    _save(fig, path)
    return fig


# --------------------------------------------------------------------------------------------
# Training curves


def read_metrics(path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{name: (steps, values)}`` from a JSON-lines metrics file.

    Each line is an object with a ``step`` and numeric metrics; a string field ``split``
    (``train`` / ``eval``), when present, prefixes its metrics (``eval/loss``). A metric has
    one value per step (the last line wins, as the trainer rewrites steps it redoes after a
    restart). Lines that do not parse (a line cut short when a run was killed) are skipped
    with a warning.
    """
    series: dict[str, dict[float, float]] = {}
    bad = 0
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            step = float(record["step"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            bad += 1
            continue
        prefix = f"{record['split']}/" if isinstance(record.get("split"), str) else ""
        for key, value in record.items():
            if key == "step" or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            series.setdefault(prefix + key, {})[step] = float(value)
    if bad:
        warnings.warn(f"{path}: skipped {bad} line(s) that are not JSON objects with a "
                      "'step'", stacklevel=2)
    return {k: (np.asarray(sorted(v)), np.asarray([v[s] for s in sorted(v)]))
            for k, v in series.items()}


def curve_panels(names: Iterable[str]) -> dict[str, list[str]]:
    """Group metric names by what they measure: ``train/loss`` and ``eval/loss`` share the
    panel ``loss``; names without a split prefix get their own panel."""
    panels: dict[str, list[str]] = {}
    for name in sorted(names):
        panels.setdefault(name.split("/", 1)[-1], []).append(name)
    return panels


def plot_training_curves(metrics: Mapping[str, tuple[np.ndarray, np.ndarray]] | str | Path,
                         path: str | Path | None = None,
                         panels: Sequence[str] | None = None) -> Figure:
    """One panel per measured quantity (``loss``, ``top1`` ...), train and eval together.

    ``metrics`` is :func:`read_metrics`'s result or the metrics file itself; ``panels``
    picks and orders the panels (default: all).
    """
    if not isinstance(metrics, Mapping):
        metrics = read_metrics(metrics)
    groups = curve_panels(metrics)
    chosen = list(panels or groups)
    missing = sorted(set(chosen) - set(groups))
    if missing:
        raise ValueError(f"no metric for panel(s) {missing}; the file has {sorted(groups)}")
    if not chosen:
        raise ValueError("the metrics hold no numeric series to plot")
    cols = min(3, len(chosen))
    rows = math.ceil(len(chosen) / cols)
    fig = Figure(figsize=(4 * cols, 3 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False).ravel())
    for ax, panel in zip(axes, chosen, strict=False):
        for name in groups[panel]:
            steps, values = metrics[name]
            ax.plot(steps, values, marker="." if len(steps) < 30 else None, label=name)
        ax.set(title=panel, xlabel="step")
        ax.legend(fontsize=7)
    for ax in axes[len(chosen):]:
        ax.set_visible(False)
    _save(fig, path)
    return fig


def _save(fig: Figure, path: str | Path | None) -> None:
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
