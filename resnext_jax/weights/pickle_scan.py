"""Refuse PyTorch pickles that would run code, without torch and without running it.

A ``.pth`` file is a pickle (inside a zip since torch 1.6). A pickle can name any Python
callable (``os.system``) and call it. We replay the pickle with an unpickler whose
``find_class`` only resolves the names a plain state dict uses (tensor rebuilders, storage
types, ``OrderedDict``) to inert stand-ins, so a file naming anything else is refused before
any real loader sees it. ``torch.load(weights_only=True)`` is the second, independent guard.
"""

from __future__ import annotations

import collections
import io
import pickle
import re
import zipfile

from resnext_jax.weights.errors import WeightsFileError

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
