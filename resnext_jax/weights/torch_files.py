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
more than a small multiple of its own size. Before anything is built, the pickle's opcodes run
on placeholders (:func:`_check_pickle`): only a state dict's opcodes, string keys, bounded
size and depth, no self-references. Where a torch without known ``weights_only`` bypasses
(>= 2.10) is installed and reads the same in-memory bytes, the two readings must agree; a
file torch refuses gets the same outcome as without torch.

Safetensors files written here carry a sha256 of their tensors in their metadata, checked
when they are read back.
"""

from __future__ import annotations

import collections
import functools
import io
import json
import os
import pickle
import pickletools
import re
import struct
import warnings
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


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, storages: Any, budget: _Budget) -> None:
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


# Bounds of what one pickle may build, checked before anything is built. A full-size state
# dict is a few tens of thousands of objects, 6 levels deep.
MAX_OBJECTS = 5_000_000  # as a tree: a memo reference counts what it refers to again
MAX_DEPTH = 32
_SCALARS = {"BININT", "BININT1", "BININT2", "INT", "LONG", "LONG1", "LONG4", "BINFLOAT",
            "FLOAT", "NONE", "NEWTRUE", "NEWFALSE", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8",
            "BINSTRING", "SHORT_BINSTRING", "STRING"}
_TEXT = {"BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "UNICODE"}
_IGNORED = {"PROTO", "FRAME", "STOP"}


class _Node:
    """One object the pickle would build, as a kind and its children (nothing is built)."""

    __slots__ = ("children", "kind")

    def __init__(self, kind: str, children: list | None = None) -> None:
        self.kind, self.children = kind, children or []


def _check_pickle(data: bytes) -> int:
    """Run the pickle's opcodes on a stack of placeholders, building nothing: every length it
    declares must fit in its bytes; only the opcodes of a state dict may occur; dict keys
    must be strings; BUILD may only set the attributes of an ``OrderedDict`` (its
    ``_metadata``); and the objects, counted as a tree (memo references again in full) and
    in depth, must stay within :data:`MAX_OBJECTS` and :data:`MAX_DEPTH`, with no object
    inside itself. Returns the pickle's length."""
    stack: list[Any] = []
    memo: dict[int, _Node] = {}
    mark = object()
    end, result = 0, None

    def pop_to_mark() -> list:
        if mark not in stack:
            raise WeightsFileError("a damaged pickle: no mark")
        i = len(stack) - 1 - stack[::-1].index(mark)
        items = stack[i + 1:]
        del stack[i:]
        return items

    def pop(n: int = 1) -> list:
        if len(stack) < n or any(x is mark for x in stack[-n:]):
            raise WeightsFileError("a damaged pickle: stack underflow")
        items = stack[-n:]
        del stack[-n:]
        return items

    try:
        for op, arg, pos in pickletools.genops(io.BytesIO(data)):
            name, end = op.name, pos
            if name in _IGNORED:
                continue
            if name in _SCALARS:
                stack.append(_Node("scalar"))
            elif name in _TEXT:
                stack.append(_Node("str"))
            elif name in ("GLOBAL", "STACK_GLOBAL"):
                if name == "STACK_GLOBAL":
                    pop(2)
                    arg = "stack"
                stack.append(_Node(f"global {arg}"))
            elif name in ("EMPTY_DICT", "EMPTY_LIST", "EMPTY_TUPLE"):
                stack.append(_Node(name[6:].lower()))
            elif name == "MARK":
                stack.append(mark)
            elif name in ("TUPLE", "LIST", "DICT"):
                items = pop_to_mark()
                if name == "DICT":
                    _check_keys(items[0::2])
                stack.append(_Node(name.lower(), items))
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                stack.append(_Node("tuple", pop(int(name[-1]))))
            elif name in ("BINPUT", "LONG_BINPUT", "PUT", "MEMOIZE"):
                if not stack or stack[-1] is mark:
                    raise WeightsFileError("a damaged pickle: nothing to memoize")
                memo[len(memo) if name == "MEMOIZE" else arg] = stack[-1]
            elif name in ("BINGET", "LONG_BINGET", "GET"):
                if arg not in memo:
                    raise WeightsFileError("a damaged pickle: a memo reference to nothing")
                stack.append(memo[arg])
            elif name in ("APPEND", "APPENDS", "SETITEM", "SETITEMS"):
                items = pop(1) if name == "APPEND" else pop(2) if name == "SETITEM" \
                    else pop_to_mark()
                (target,) = pop(1)
                if name.startswith("SET"):
                    if len(items) % 2:
                        raise WeightsFileError("a damaged pickle: a key without a value")
                    _check_keys(items[0::2])
                target.children.extend(items)
                stack.append(target)
            elif name in ("BINPERSID", "PERSID"):
                stack.append(_Node("persistent", pop(1) if name == "BINPERSID" else []))
            elif name == "REDUCE":
                function, args = pop(2)
                stack.append(_Node(f"reduce {function.kind}", [args]))
            elif name == "BUILD":
                (state,) = pop(1)
                if not stack or stack[-1] is mark \
                        or stack[-1].kind != "reduce global collections OrderedDict":
                    raise WeightsFileError("its pickle sets attributes (BUILD) on something "
                                           "other than a state dict")
                stack[-1].children.append(state)
            elif name == "POP":
                pop(1)
            elif name == "POP_MARK":
                pop_to_mark()
            else:
                raise WeightsFileError(f"its pickle uses the opcode {name}, which a state dict "
                                       "never needs")
            if len(stack) > MAX_OBJECTS:
                raise WeightsFileError("its pickle builds too many objects")
        result = stack[-1] if stack and stack[-1] is not mark else None
    except WeightsFileError:
        raise
    except (ValueError, EOFError) as err:
        raise WeightsFileError(f"a damaged pickle: {str(err)[:200]}") from None
    if result is not None:
        _check_tree(result)
    return end + 1


def _check_keys(keys: list) -> None:
    if any(k is not None and getattr(k, "kind", None) != "str" for k in keys):
        raise WeightsFileError("its pickle has a dict key that is not a string; a state dict's "
                               "keys are parameter names")


def _check_tree(root: _Node) -> None:
    """The pickle's result as a tree: acyclic, at most MAX_DEPTH deep, at most MAX_OBJECTS
    objects counting shared ones at each place they occur (what a walk over it would see)."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    on_path: set[int] = set()
    # Iterative depth-first walk: (node, children visited?)
    todo: list[tuple[_Node, bool]] = [(root, False)]
    while todo:
        node, done = todo.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            size[key] = 1 + sum(size[id(c)] for c in node.children)
            depth[key] = 1 + max((depth[id(c)] for c in node.children), default=0)
            if size[key] > MAX_OBJECTS or depth[key] > MAX_DEPTH:
                raise WeightsFileError(
                    "its pickle builds a structure too large or too deep for a state dict "
                    f"(over {MAX_OBJECTS:,} objects or {MAX_DEPTH} levels)")
            continue
        if key in size:
            continue
        if key in on_path:
            raise WeightsFileError("its pickle puts an object inside itself")
        on_path.add(key)
        todo.append((node, True))
        todo += [(c, False) for c in node.children if id(c) not in size]


def _short(value: Any) -> str:
    """A value from the file, described without formatting all of it (an attacker sizes it)."""
    if isinstance(value, str):
        return repr(value[:60])
    if isinstance(value, tuple | list | dict):
        return f"a {type(value).__name__} of {len(value)}"
    return type(value).__name__


def _load_pickle(data: bytes, storages: Any, file_bytes: int = 0) -> Any:
    """Unpickle ``data`` (checked first); tensor copies may take ``_Budget(file_bytes)``, the
    size of the whole file the pickle came from."""
    _check_pickle(data)
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

    return _load_pickle(read(f"{prefix}/data.pkl"), storage, len(data))


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
            raise WeightsFileError(f"unexpected persistent id ({_short(pid)})")
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
    return _load_pickle(obj, lambda pid: arrays[pid[2]], len(data))


def _no_storage(pid: Any) -> None:
    raise WeightsFileError("a storage outside the pickled object")
