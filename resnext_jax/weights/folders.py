"""Weights in a folder: one written by ``save_pretrained`` (or its Hub copy), or a training
workdir (its final weights, else its newest checkpoint, checked against the digest the trainer
saved with it)."""

from __future__ import annotations

import glob
import json
import os
import warnings
from typing import Any

import jax
import numpy as np

from resnext_jax import workdir
from resnext_jax.digest import tree_digest
from resnext_jax.weights import native
from resnext_jax.weights.errors import WeightsFileError
from resnext_jax.weights.hub import NATIVE_FILE


def read_folder(path: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """``(file, meta, variables)`` of a folder from save_pretrained, a training workdir's
    final weights, else its newest checkpoint."""
    for name in (NATIVE_FILE, workdir.FINAL_WEIGHTS):
        if os.path.isfile(final := os.path.join(path, name)):
            return (final, *native.read(final))
    spec = os.path.join(path, workdir.MODEL)
    steps = sorted((int(os.path.basename(d)) for d in glob.glob(
        os.path.join(path, workdir.CHECKPOINTS, "*")) if os.path.basename(d).isdigit()),
        reverse=True)
    if not os.path.isfile(spec) or not steps:
        raise WeightsFileError(f"{path} is a folder without weights: neither "
                               f"{NATIVE_FILE} (save_pretrained), {workdir.FINAL_WEIGHTS} nor a "
                               f"training workdir's {workdir.MODEL} and {workdir.CHECKPOINTS}/")
    try:
        with open(spec, encoding="utf-8") as f:
            meta = json.load(f)
    except (UnicodeDecodeError, ValueError) as err:
        raise WeightsFileError(f"{spec} is not JSON ({err}); nothing was loaded") from None
    native.check_meta(meta, spec)
    checkpoint = os.path.join(path, workdir.CHECKPOINTS, str(steps[0]))
    return checkpoint, meta, _checkpoint_variables(checkpoint)


def _checkpoint_variables(directory: str) -> dict[str, Any]:
    """``params`` and ``batch_stats`` (the EMA weights when the run kept them) of an orbax
    checkpoint, as numpy arrays on the host."""
    try:
        import orbax.checkpoint as ocp
    except ImportError as err:
        raise WeightsFileError(f"reading the checkpoint {directory} needs orbax-checkpoint: "
                               "pip install 'resnext_jax[train]'") from err
    item = os.path.join(directory, workdir.STATE)
    checkpointer = ocp.PyTreeCheckpointer()
    try:
        tree = checkpointer.metadata(item).item_metadata.tree
        as_numpy = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                                          tree)
        state = checkpointer.restore(item, restore_args=as_numpy)
    except Exception as err:  # noqa: BLE001 - TensorStore's many errors on a damaged file
        raise WeightsFileError(f"{directory} cannot be read (damaged?): "
                               f"{str(err).splitlines()[0] if str(err) else err!r}") from err
    # Weights and BatchNorm statistics, averaged together, when the run kept an average.
    weights = state.get("ema") or {"params": state["params"],
                                   "batch_stats": state.get("batch_stats", {})}
    expected = _saved_digest(directory)
    if expected is None:
        warnings.warn(f"{directory} has no digest of its weights (written by an older "
                      "version): they are loaded unverified", stacklevel=4)
    elif tree_digest(weights) != expected:
        raise WeightsFileError(f"{directory} is damaged: its arrays do not match the digest "
                               "saved with them; nothing was loaded (an earlier checkpoint or "
                               f"{workdir.FINAL_WEIGHTS} may be intact)")
    return weights


def _saved_digest(directory: str) -> str | None:
    """The weights' sha256 that the trainer saved with checkpoint ``directory``."""
    path = os.path.join(directory, workdir.DIGEST, "metadata")
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
    except (OSError, ValueError) as err:
        raise WeightsFileError(f"{path} cannot be read ({err}); nothing was loaded") from None
    value = saved.get(workdir.WEIGHTS_SHA256) if isinstance(saved, dict) else None
    return value if isinstance(value, str) else None
