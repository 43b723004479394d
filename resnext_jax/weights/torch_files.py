"""PyTorch state dicts as numpy arrays: reading ``.safetensors`` / ``.pth``, writing safetensors.

``.pth`` / ``.bin`` / ``.pt`` files are pickles, and a pickle can name any Python callable
(``os.system``) and call it, so they are untrusted input. They are read here without torch
and without running the pickle: an unpickler whose ``find_class`` resolves only what a state
dict of tensors needs (tensor rebuilders, storage types, ``OrderedDict``, ``torch.Size``) to
functions of this module, which build numpy arrays from the storages' bytes; anything else is
refused (:mod:`resnext_jax.weights.torch_pth`). Both of torch's formats are read: the zip
archive (torch >= 1.6) and the legacy stream (older releases, such as Cadene's SENet
weights). The whole file is read once, and what is parsed is exactly what is returned;
ambiguous containers (bytes before a zip, duplicate or unexpected members, compressed
members) are refused, and every size a file declares is checked against the bytes it has,
so a file cannot make the loader allocate more than a small multiple of its own size. Before
anything is built, the pickle's opcodes run on placeholders
(:mod:`resnext_jax.weights.torch_pickle`): only a state dict's opcodes, string keys, bounded
size and depth, no self-references. Where a torch without known ``weights_only`` bypasses
(>= 2.10) is installed and reads the same in-memory bytes, the two readings must agree; a
file torch refuses gets the same outcome as without torch.

Safetensors files written here carry a sha256 of their tensors in their metadata, checked
when they are read back.
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from resnext_jax.digest import tree_digest
from resnext_jax.files import atomic_write
from resnext_jax.weights.errors import WeightsFileError
from resnext_jax.weights.torch_pth import read_pth

SAFETENSORS = (".safetensors",)
TORCH_PICKLES = (".pth", ".pt", ".bin", ".ckpt")
DIGEST_KEY = "resnext_jax_sha256"
TORCH_WITHOUT_KNOWN_BYPASSES = (2, 10)
_WRAPPERS = ("state_dict", "model", "model_state_dict", "module")


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The tensors of a PyTorch checkpoint as numpy arrays, keyed by state-dict name."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise WeightsFileError(f"no such checkpoint file: {path}")
    if path.endswith(SAFETENSORS):
        return _read_safetensors(path)
    if path.endswith(TORCH_PICKLES):
        return _read_pth(path)
    raise WeightsFileError(f"{path}: unknown checkpoint type; expected one of "
                           f"{SAFETENSORS + TORCH_PICKLES} (or our own .msgpack)")


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load

    try:
        with open(path, "rb") as stream:
            data = stream.read()
        tensors = load(data)  # checks the header against the bytes
        (length,) = struct.unpack("<Q", data[:8])
        metadata = json.loads(data[8:8 + length]).get("__metadata__") or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise WeightsFileError(f"{path} is not a readable safetensors file (truncated or "
                               f"damaged?): {err}") from err
    if DIGEST_KEY in metadata and metadata[DIGEST_KEY] != tree_digest(tensors):
        raise WeightsFileError(f"{path} is damaged: its tensors do not match the sha256 "
                               "written with them; nothing was loaded")
    return tensors


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray],
                      metadata: Mapping[str, str] | None = None) -> None:
    """Save numpy ``tensors`` as safetensors (loadable by ``safetensors.torch.load_file``),
    with their digest in the metadata; atomically."""
    from safetensors.numpy import save

    # np.ascontiguousarray would turn 0-d counters into shape (1,); copy keeps the shape.
    tensors = {k: np.asarray(v).copy(order="C") for k, v in tensors.items()}
    atomic_write(path, save(tensors, metadata={**(metadata or {}),
                                               DIGEST_KEY: tree_digest(tensors)}))


def _read_pth(path: str) -> dict[str, np.ndarray]:
    with open(path, "rb") as stream:
        data = stream.read()
    try:
        obj = read_pth(data)
    except WeightsFileError as err:
        raise WeightsFileError(
            f"refusing {path}: {err}. Ask for the weights as .safetensors, or, only if you "
            "trust the file, convert it where torch is installed: torch.load(path, "
            "weights_only=False), then save its state dict with safetensors.torch.save_file"
        ) from None
    tensors = {k: v for k, v in _unwrap(obj, path).items() if isinstance(v, np.ndarray)}
    torch = _trusted_torch()
    if torch is not None:
        _check_torch_agrees(torch, data, tensors, path)
    return tensors


def _trusted_torch() -> Any:
    """torch, where it is installed in a release without known weights_only bypasses."""
    try:
        import torch
    except ImportError:
        return None
    version = tuple(int(p) for p in re.findall(r"\d+", torch.__version__)[:2])
    return torch if version >= TORCH_WITHOUT_KNOWN_BYPASSES else None


def _check_torch_agrees(torch: Any, data: bytes, tensors: dict[str, np.ndarray],
                        path: str) -> None:
    """Where torch reads the same bytes too, it must find the same tensors (a difference is
    a file built to be read two ways); where it refuses one, the outcome is ours, the same
    as without torch."""
    try:
        with warnings.catch_warnings():  # its notes on protocols it did not default to
            warnings.simplefilter("ignore")
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - torch refuses some files it wrote (other protocols)
        return  # our reading stands alone, as where torch is not installed
    if not isinstance(obj, Mapping):
        return
    theirs = {k: _torch_to_numpy(v) for k, v in _unwrap(obj, path).items()
              if isinstance(v, torch.Tensor)}
    if theirs.keys() != tensors.keys() or any(
            theirs[k].dtype != v.dtype or not np.array_equal(theirs[k], v, equal_nan=True)
            for k, v in tensors.items()):
        raise WeightsFileError(f"refusing {path}: torch reads other tensors from it than "
                               "its pickle declares")


def _unwrap(obj: Any, path: str) -> Mapping[str, Any]:
    """The state dict inside training checkpoints such as ``{"state_dict": ..., "epoch": 3}``."""
    for key in _WRAPPERS:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            return _unwrap(obj[key], path)
    if not isinstance(obj, Mapping):
        raise WeightsFileError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return obj


def _torch_to_numpy(tensor: Any) -> np.ndarray:
    import torch

    tensor = tensor.detach().cpu().contiguous()
    if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16: reinterpret the bits
        import ml_dtypes

        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()
