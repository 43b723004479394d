"""A ``.pth`` file's object without torch and without running its pickle: an unpickler whose
``find_class`` resolves only what a state dict of tensors needs (tensor rebuilders, storage
types, ``OrderedDict``, ``torch.Size``) to functions here, which build numpy arrays from the
storages' bytes; anything else is refused. Both of torch's formats: the zip archive
(torch >= 1.6) and the legacy stream (older releases, such as Cadene's SENet weights). Every
pickle passes :func:`~resnext_jax.weights.torch_pickle.check_pickle` first, and every size a
file declares is checked against the bytes it has."""

from __future__ import annotations

import collections
import functools
import io
import pickle
import re
import struct
import zipfile
from collections.abc import Callable
from typing import Any

import numpy as np

from resnext_jax.weights.errors import WeightsFileError
from resnext_jax.weights.torch_pickle import check_pickle

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


def _short(value: Any) -> str:
    """A value from the file, described without formatting all of it (an attacker sizes it)."""
    if isinstance(value, str):
        return repr(value[:60])
    if isinstance(value, tuple | list | dict):
        return f"a {type(value).__name__} of {len(value)}"
    return type(value).__name__


def _dtype(storage_type: Any) -> np.dtype:
    name = getattr(storage_type, "name", None)
    if name not in _STORAGE_DTYPES:
        raise WeightsFileError(f"unsupported storage type {_short(name)}")
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


class _Budget:
    """Bytes the loader may still allocate for tensor copies: a small multiple of the file's
    size. A tensor that is a contiguous run of its storage is a view of the file's bytes and
    costs nothing; any other (strided, broadcast) is a copy and is counted."""

    FACTOR = 2

    def __init__(self, file_bytes: int) -> None:
        self.left = self.FACTOR * file_bytes + 2**20

    def take(self, nbytes: int) -> None:
        if nbytes > self.left:
            raise WeightsFileError(f"its tensors would take more than {self.FACTOR}x the file's "
                                   "size in memory (strided views of a small storage)")
        self.left -= nbytes


def _rebuild_tensor(budget: _Budget, storage: _Storage, offset: int, size: Any, stride: Any,
                    *_: Any) -> np.ndarray:
    if not isinstance(storage, _Storage):
        raise WeightsFileError("a tensor without a storage")
    if storage.array is None:  # the first pass of a legacy file: storages come later
        return None
    if not (isinstance(size, tuple | list) and isinstance(stride, tuple | list)
            and len(size) == len(stride) <= 8):
        raise WeightsFileError("bad tensor geometry (size and stride of rank <= 8 expected)")
    size, stride = tuple(size), tuple(stride)
    if not all(type(v) is int and 0 <= v < 2**62 for v in (offset, *size, *stride)):
        raise WeightsFileError("bad tensor geometry (non-negative integers expected)")
    flat = storage.array
    count = int(np.prod(size, dtype=object))
    if count == 0:
        return np.zeros(size, flat.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= len(flat):
        raise WeightsFileError(f"a tensor reaches element {last} of a storage of {len(flat)}")
    contiguous = tuple(int(np.prod(size[i + 1:], dtype=object)) for i in range(len(size)))
    if all(n == 1 or s == c for n, s, c in zip(size, stride, contiguous, strict=True)):
        return flat[offset:offset + count].reshape(size)  # a read-only view: no copy
    budget.take(count * flat.itemsize)
    view = np.lib.stride_tricks.as_strided(flat[offset:], size,
                                           tuple(s * flat.itemsize for s in stride))
    return np.array(view)  # a copy: independent of the file's bytes


def _rebuild_parameter(data: np.ndarray, *_: Any) -> np.ndarray:
    return data


def _size(*args: Any) -> tuple:
    return tuple(*args) if args else ()


_Storages = Callable[[Any], _Storage]  # a persistent id to its storage


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, storages: _Storages, budget: _Budget) -> None:
        super().__init__(io.BytesIO(data))
        self._storages, self._budget = storages, budget

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
            return functools.partial(_rebuild_tensor, self._budget)
        if module == "torch._utils" and name in ("_rebuild_parameter",
                                                 "_rebuild_parameter_with_state"):
            return _rebuild_parameter
        if (module, name) == ("torch", "Size"):
            return _size
        if module in ("torch", "torch.storage") and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise WeightsFileError(f"its pickle references {_short(module)}.{_short(name)}, which "
                               "a plain state dict never needs, so loading it could run "
                               "arbitrary code")

    def persistent_load(self, pid: Any) -> _Storage:
        return self._storages(pid)


def _load_pickle(data: bytes, storages: _Storages, file_bytes: int = 0) -> Any:
    """Unpickle ``data``, a pickle :func:`check_pickle` has passed; tensor copies may take
    ``_Budget(file_bytes)``, the size of the whole file the pickle came from."""
    try:
        return _Unpickler(data, storages, _Budget(file_bytes)).load()
    except WeightsFileError:
        raise
    except Exception as err:  # noqa: BLE001 - a damaged pickle raises many types
        raise WeightsFileError(f"a damaged pickle: {type(err).__name__}: "
                               f"{str(err)[:200]}") from None


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
    _check_one_archive(data, infos)
    prefix = prefixes.pop()
    members = {i.filename: i for i in infos}

    def read(name: str) -> bytes:
        try:
            return archive.read(name)
        except (zipfile.BadZipFile, ValueError, EOFError, OSError) as err:
            raise WeightsFileError(f"a damaged member {name}: {err}") from None

    def storage(pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise WeightsFileError(f"unexpected persistent id ({_short(pid)})")
        _, storage_type, key, _, numel = pid
        dtype = _dtype(storage_type)
        name = f"{prefix}/data/{key}"
        if not isinstance(key, str) or name not in members or type(numel) is not int:
            raise WeightsFileError(f"storage {_short(key)} is missing")
        if members[name].file_size != numel * dtype.itemsize:
            raise WeightsFileError(f"storage {key}: {members[name].file_size} bytes for {numel} "
                                   f"elements of {dtype}")
        return _Storage(np.frombuffer(read(name), dtype))

    pkl = read(f"{prefix}/data.pkl")
    check_pickle(pkl)
    return _load_pickle(pkl, storage, len(data))


def _check_one_archive(data: bytes, infos: list[zipfile.ZipInfo]) -> None:
    """The archive the central directory describes starts at byte 0, and each of its local
    headers names the member the directory does: a second archive appended to a first (which
    a reader walking local headers from the start would see instead) is refused."""
    if min(i.header_offset for i in infos) != 0:
        raise WeightsFileError("the zip's directory describes an archive that does not start "
                               "the file: two readers could see two archives")
    for info in infos:
        at = info.header_offset
        header = data[at:at + 30]
        if len(header) < 30 or header[:4] != b"PK\x03\x04":
            raise WeightsFileError(f"no local header where the directory puts "
                                   f"{_short(info.filename)}")
        (length,) = struct.unpack("<H", header[26:28])
        if data[at + 30:at + 30 + length] != info.orig_filename.encode("utf-8", "surrogateescape"):
            raise WeightsFileError(f"the local header at {at} names another member than the "
                                   "directory does: two readers could see two archives")


def _read_legacy(data: bytes) -> Any:
    """torch's ``_legacy_save`` stream: magic number, protocol, system info, the object,
    the sorted storage keys, then each storage as an 8-byte element count and its bytes.
    The object is read twice: once to learn its storages, once to build its tensors."""
    pickles, pos = [], 0
    for _ in range(5):
        end = check_pickle(data, pos)
        # The unpickler gets exactly the checked bytes (a FRAME cannot reach past them): a
        # copy of this pickle only, not of the rest of the file.
        pickles.append(data[pos:end])
        pos = end
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
            raise WeightsFileError(f"unexpected persistent id ({_short(pid)})")
        _, storage_type, key, _, numel, view = pid
        if view is not None or not isinstance(numel, int) or numel < 0:
            raise WeightsFileError("storage views are not supported")
        declared[key] = (_dtype(storage_type), numel)
        return _Storage(None)

    _load_pickle(obj, learn)
    keys = _load_pickle(keys, _no_storage)
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in [*keys, *declared]) \
            or sorted(declared) != sorted(keys):
        raise WeightsFileError("the storage keys do not match the storages the object uses")
    arrays = {}
    view = memoryview(data)  # storages are read-only views of the file's bytes, not copies
    for key in keys:
        dtype, numel = declared[key]
        if pos + 8 > len(data):
            raise WeightsFileError("truncated storage data")
        (count,) = struct.unpack("<q", data[pos:pos + 8])
        size = count * dtype.itemsize
        if count != numel or pos + 8 + size > len(data):
            raise WeightsFileError(f"storage {key}: {count} elements declared, {numel} expected, "
                                   f"{len(data) - pos - 8} bytes left")
        arrays[key] = _Storage(np.frombuffer(view[pos + 8:pos + 8 + size], dtype))
        pos += 8 + size
    if pos != len(data):
        raise WeightsFileError(f"{len(data) - pos} bytes after the last storage")
    return _load_pickle(obj, lambda pid: arrays[pid[2]], len(data))


def _no_storage(pid: Any) -> None:
    raise WeightsFileError("a storage outside the pickled object")
