"""PyTorch state dicts as numpy arrays: reading ``.safetensors`` / ``.pth``, writing safetensors.

``.safetensors`` needs only the ``safetensors`` package. ``.pth`` / ``.bin`` / ``.pt`` need
torch (optional) and are untrusted input. A ``.pth`` file is a pickle (inside a zip since
torch 1.6), and a pickle can name any Python callable (``os.system``) and call it. Before
torch sees the file, its pickle is replayed by an unpickler whose ``find_class`` only
resolves the names a plain state dict uses (tensor rebuilders, storage types,
``OrderedDict``) to inert stand-ins, so a file naming anything else is refused; then it is
read with ``torch.load(weights_only=True)``, the second, independent guard.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from resnext_jax.weights.errors import WeightsFileError

SAFETENSORS = (".safetensors",)
TORCH_PICKLES = (".pth", ".pt", ".bin", ".ckpt")
_WRAPPERS = ("state_dict", "model", "model_state_dict", "module")


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The tensors of a PyTorch checkpoint as numpy arrays, keyed by state-dict name."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise WeightsFileError(f"no such checkpoint file: {path}")
    if path.endswith(SAFETENSORS):
        return _read_safetensors(path)
    if path.endswith(TORCH_PICKLES):
        return _read_torch(path)
    raise WeightsFileError(f"{path}: unknown checkpoint type; expected one of "
                           f"{SAFETENSORS + TORCH_PICKLES} (or our own .msgpack)")


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise WeightsFileError(f"{path} is not a readable safetensors file (truncated or "
                               f"corrupted?): {err}") from err


def _read_torch(path: str) -> dict[str, np.ndarray]:
    check_torch_pickle(path)
    try:
        import torch
    except ImportError as err:
        raise WeightsFileError(
            f"{path} is a PyTorch pickle checkpoint, and reading it needs torch, which is not "
            "installed: `pip install torch`, or convert it once to .safetensors where torch is "
            "available (safetensors.torch.save_file(torch.load(path, weights_only=True), "
            "'model.safetensors'))") from err
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for bad or unsafe files
        raise WeightsFileError(f"torch.load(weights_only=True) refused {path}: {err}; "
                               "if you trust the file, re-save it as .safetensors") from err
    return {k: _torch_to_numpy(v) for k, v in _unwrap(obj, path).items()
            if isinstance(v, torch.Tensor)}


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


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray],
                      metadata: Mapping[str, str] | None = None) -> None:
    """Save numpy ``tensors`` as safetensors (loadable by ``safetensors.torch.load_file``)."""
    from safetensors.numpy import save_file

    # np.ascontiguousarray would turn 0-d counters into shape (1,); copy keeps the shape.
    save_file({k: np.asarray(v).copy(order="C") for k, v in tensors.items()}, os.fspath(path),
              metadata=dict(metadata) if metadata else None)


_TORCH_UTILS = {"_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_parameter",
                "_rebuild_parameter_with_state"}
_TORCH_NAMES = re.compile(r"^(\w*Storage|Size|device|u?int\d+|float\d+|bfloat16|half|bool)$")
_LEGACY_PICKLES = 4  # magic number, protocol, sys_info, then the object (torch's legacy format)


class _Inert:
    """Stand-in for every allowed callable: accepts anything, does nothing."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        del args, kwargs

    def __setstate__(self, state: object) -> None:
        del state


class _Refused(Exception):
    pass


class _Replay(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> type:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module == "torch._utils" and name in _TORCH_UTILS) or (
                module in ("torch", "torch.storage") and _TORCH_NAMES.match(name)):
            return _Inert
        raise _Refused(f"{module}.{name}")

    def persistent_load(self, pid: object) -> None:  # tensor storages live outside the pickle
        del pid


def check_torch_pickle(path: str) -> None:
    """Raise :class:`WeightsFileError` unless ``path`` is a pickle of tensors and containers."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.endswith("data.pkl")]
                if not names:
                    raise WeightsFileError(f"{path} is a zip file without data.pkl: not a "
                                           "PyTorch checkpoint")
                for name in names:
                    _replay(io.BytesIO(archive.read(name)), 1)
        else:
            with open(path, "rb") as stream:
                _replay(stream, _LEGACY_PICKLES)
    except WeightsFileError:
        raise
    except _Refused as refused:
        raise WeightsFileError(
            f"refusing {path}: its pickle references {refused}, which a plain state dict "
            "never needs, so loading it could run arbitrary code. Ask for the weights as "
            ".safetensors, or, only if you trust the file, convert it where torch is "
            "installed: torch.load(path, weights_only=False), then save its state dict with "
            "safetensors.torch.save_file") from None
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ValueError, TypeError,
            IndexError, KeyError, AttributeError) as err:
        raise WeightsFileError(f"{path} is not a readable PyTorch checkpoint (truncated or "
                               f"corrupted?): {type(err).__name__}: {err}") from err


def _replay(stream: io.BufferedIOBase, count: int) -> None:
    for _ in range(count):
        _Replay(stream).load()
