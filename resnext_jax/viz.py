"""What the network learned: SE excitations by class, grouped-conv filters, training curves.

Each ``plot_*`` function returns a matplotlib ``Figure`` (drawn without pyplot, so no GUI
backend is touched) and writes a PNG when given a path; the arrays behind every picture come
from separate functions that the tests check (the SE statistics from
:mod:`resnext_jax.se_statistics`).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

# se_excitations is documented (docs/user-guide.md, notebook 03) as viz.se_excitations.
from resnext_jax.se_statistics import SEExcitations
from resnext_jax.se_statistics import se_excitations as se_excitations

# --------------------------------------------------------------------------------------------
# SE excitations


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
