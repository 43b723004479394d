"""PyTorch state dicts as numpy arrays: reading ``.safetensors`` / ``.pth``, writing safetensors.

``.pth`` / ``.bin`` / ``.pt`` files are pickles, and a pickle can name any Python callable
(``os.system``) and call it, so they are untrusted input. They are read here without torch
and without running the pickle: an unpickler whose ``find_class`` resolves only what a state
dict of tensors needs (tensor rebuilders, storage types, ``OrderedDict``, ``torch.Size``) to
functions of this module, which build numpy arrays from the storages' bytes; anything else is
refused. Both of torch's formats are read: the zip archive (torch >= 1.6) and the legacy
stream (older releases, such as Cadene's SENet weights). The whole file is read once, and
what is parsed is exactly what is returned; ambiguous containers (bytes before a zip,
duplicate or unexpected members, compressed members) are refused, and every size a file
declares is checked against the bytes it has, so a file cannot make the loader allocate
more than its own size. Where a torch without known ``weights_only`` bypasses (>= 2.10) is
installed, ``torch.load(weights_only=True)`` reads the same in-memory bytes too, and the two
readings must agree.

Safetensors files written here carry a sha256 of their tensors in their metadata, checked
when they are read back.
"""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import pickletools
import re
import struct
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from resnext_jax.digest import tree_digest
from resnext_jax.files import atomic_write
from resnext_jax.weights.errors import WeightsFileError

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
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for bad or unsafe files
        raise WeightsFileError(f"torch.load(weights_only=True) refused {path}: {err}") from err
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


_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
    "BFloat16Storage": "bfloat16",
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_MEMBER = re.compile(r"^[^/]+/(data\.pkl|version|\.format_version|\.storage_alignment|"
                     r"byteorder|\.data/serialization_id|data/\d+)$")


def _dtype(storage_type: Any) -> np.dtype:
    name = getattr(storage_type, "name", None)
    if name not in _STORAGE_DTYPES:
        raise WeightsFileError(f"unsupported storage type {name!r}")
    kind = _STORAGE_DTYPES[name]
    if kind == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(kind)


class _StorageType:
    def __init__(self, name: str) -> None:
        self.name = name


class _Storage:
    """The bytes of one storage as a flat array of its dtype."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array


def _rebuild_tensor(storage: _Storage, offset: int, size: tuple, stride: tuple,
                    *_: Any) -> np.ndarray:
    if not isinstance(storage, _Storage):
        raise WeightsFileError("a tensor without a storage")
    if storage.array is None:  # the first pass of a legacy file: storages come later
        return None
    size, stride = tuple(size), tuple(stride)
    if (not all(isinstance(v, int) and v >= 0 for v in (offset, *size, *stride))
            or len(size) != len(stride)):
        raise WeightsFileError(f"bad tensor geometry: offset {offset}, size {size}, "
                               f"stride {stride}")
    flat = storage.array
    if 0 in size:
        return np.zeros(size, flat.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= len(flat):
        raise WeightsFileError(f"a tensor of size {size} reaches element {last} of a storage of "
                       f"{len(flat)}")
    view = np.lib.stride_tricks.as_strided(flat[offset:], size,
                                           tuple(s * flat.itemsize for s in stride))
    return np.array(view)  # a copy: independent of the file's bytes


def _rebuild_parameter(data: np.ndarray, *_: Any) -> np.ndarray:
    return data


def _size(*args: Any) -> tuple:
    return tuple(*args) if args else ()


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, storages: Any) -> None:
        super().__init__(io.BytesIO(data))
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch._utils" and name in ("_rebuild_parameter",
                                                 "_rebuild_parameter_with_state"):
            return _rebuild_parameter
        if (module, name) == ("torch", "Size"):
            return _size
        if module in ("torch", "torch.storage") and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise WeightsFileError(f"its pickle references {module}.{name}, which a plain state dict "
                       "never needs, so loading it could run arbitrary code")

    def persistent_load(self, pid: Any) -> _Storage:
        return self._storages(pid)


def _check_pickle(data: bytes) -> int:
    """Walk the opcodes (no objects are built): every length a pickle declares must fit in
    its bytes. Returns the pickle's length."""
    end = 0
    try:
        for _, _, pos in pickletools.genops(io.BytesIO(data)):
            end = pos
    except (ValueError, EOFError) as err:
        raise WeightsFileError(f"a damaged pickle: {err}") from None
    return end + 1


def _load_pickle(data: bytes, storages: Any) -> Any:
    _check_pickle(data)
    try:
        return _Unpickler(data, storages).load()
    except WeightsFileError:
        raise
    except Exception as err:  # noqa: BLE001 - a damaged pickle raises many types
        raise WeightsFileError(f"a damaged pickle: {type(err).__name__}: {err}") from None


def read_pth(data: bytes) -> Any:
    """The object a ``.pth`` file holds, tensors as numpy arrays."""
    if data[:4] == b"PK\x03\x04":
        return _read_zip(data)
    if zipfile.is_zipfile(io.BytesIO(data)):
        raise WeightsFileError("bytes before a zip archive: two readers could see two files")
    return _read_legacy(data)


def _read_zip(data: bytes) -> Any:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, ValueError, EOFError) as err:
        raise WeightsFileError(f"a damaged zip archive: {err}") from None
    names = [i.filename for i in infos]
    if len(set(names)) != len(names):
        raise WeightsFileError("duplicate member names: two readers could take two copies")
    prefixes = {n.split("/")[0] for n in names}
    strange = [n for n in names if not _MEMBER.match(n)]
    if len(prefixes) != 1 or strange or not any(n.endswith("/data.pkl") for n in names):
        raise WeightsFileError(f"members outside a torch.save archive's layout: "
                       f"{(strange or names)[:5]}")
    if any(i.compress_type != zipfile.ZIP_STORED for i in infos):
        raise WeightsFileError("compressed members: torch.save stores them uncompressed")
    prefix = prefixes.pop()
    members = {i.filename: i for i in infos}

    def read(name: str) -> bytes:
        try:
            return archive.read(name)
        except (zipfile.BadZipFile, ValueError, EOFError, OSError) as err:
            raise WeightsFileError(f"a damaged member {name}: {err}") from None

    def storage(pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise WeightsFileError(f"unexpected persistent id {pid!r:.80}")
        _, storage_type, key, _, numel = pid
        dtype = _dtype(storage_type)
        name = f"{prefix}/data/{key}"
        if name not in members or not isinstance(numel, int):
            raise WeightsFileError(f"storage {key!r} is missing")
        if members[name].file_size != numel * dtype.itemsize:
            raise WeightsFileError(f"storage {key}: {members[name].file_size} bytes for {numel} "
                           f"elements of {dtype}")
        return _Storage(np.frombuffer(read(name), dtype))

    return _load_pickle(read(f"{prefix}/data.pkl"), storage)


def _read_legacy(data: bytes) -> Any:
    """torch's ``_legacy_save`` stream: magic number, protocol, system info, the object,
    the sorted storage keys, then each storage as an 8-byte element count and its bytes.
    The object is read twice: once to learn its storages, once to build its tensors."""
    pickles, pos = [], 0
    for _ in range(5):
        length = _check_pickle(data[pos:])
        pickles.append(data[pos:pos + length])
        pos += length
    magic, protocol, info, obj, keys = pickles
    if _load_pickle(magic, _no_storage) != _LEGACY_MAGIC \
            or _load_pickle(protocol, _no_storage) != _LEGACY_PROTOCOL:
        raise WeightsFileError("neither a zip archive nor torch's legacy format")
    info = _load_pickle(info, _no_storage)
    if not isinstance(info, dict) or not info.get("little_endian", False):
        raise WeightsFileError("not a little-endian legacy torch file")
    declared: dict[str, tuple[np.dtype, int]] = {}

    def learn(pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise WeightsFileError(f"unexpected persistent id {pid!r:.80}")
        _, storage_type, key, _, numel, view = pid
        if view is not None or not isinstance(numel, int) or numel < 0:
            raise WeightsFileError("storage views are not supported")
        declared[key] = (_dtype(storage_type), numel)
        return _Storage(None)

    _load_pickle(obj, learn)
    keys = _load_pickle(keys, _no_storage)
    if not isinstance(keys, list) or sorted(declared) != sorted(keys):
        raise WeightsFileError("the storage keys do not match the storages the object uses")
    arrays = {}
    for key in keys:
        dtype, numel = declared[key]
        if pos + 8 > len(data):
            raise WeightsFileError("truncated storage data")
        (count,) = struct.unpack("<q", data[pos:pos + 8])
        size = count * dtype.itemsize
        if count != numel or pos + 8 + size > len(data):
            raise WeightsFileError(f"storage {key}: {count} elements declared, {numel} expected, "
                           f"{len(data) - pos - 8} bytes left")
        arrays[key] = _Storage(np.frombuffer(data[pos + 8:pos + 8 + size], dtype))
        pos += 8 + size
    if pos != len(data):
        raise WeightsFileError(f"{len(data) - pos} bytes after the last storage")
    return _load_pickle(obj, lambda pid: arrays[pid[2]])


def _no_storage(pid: Any) -> None:
    raise WeightsFileError("a storage outside the pickled object")
