"""A hostile-file corpus for the ``.pth`` reader: each file is forged opcode by opcode, then
read in a subprocess whose memory is capped (``resource.setrlimit``) and whose time is bounded.
Every one must end in a one-line refusal (or, for views that share a storage, a load that stays
within the bound), never a hang, a crash, an unbounded allocation or a traceback."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIMIT = 1536 * 2**20  # memory the reader may add over what its imports take
TIMEOUT = 90  # seconds, start-up (imports) included

# --- a tiny pickle assembler (protocol 2 opcodes, as torch.save writes) ----------------------
PROTO, STOP, MARK, TUPLE, EMPTY_TUPLE = b"\x80\x02", b".", b"(", b"t", b")"
EMPTY_DICT, SETITEM, SETITEMS, REDUCE, BUILD = b"}", b"s", b"u", b"R", b"b"
BINPERSID, NEWFALSE, TUPLE1, TUPLE2, EMPTY_LIST = b"Q", b"\x89", b"\x85", b"\x86", b"]"
POP = b"0"


def g(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def s(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def i(n: int) -> bytes:
    return b"J" + struct.pack("<i", n)


def put(slot: int) -> bytes:
    return b"r" + struct.pack("<I", slot)


def get(slot: int) -> bytes:
    return b"j" + struct.pack("<I", slot)


def tup(*items: bytes) -> bytes:
    return MARK + b"".join(items) + TUPLE


def storage(key: str, numel: int) -> bytes:
    return tup(s("storage"), g("torch", "FloatStorage"), s(key), s("cpu"), i(numel)) + BINPERSID


def tensor(key: str, numel: int, offset: int, size: tuple, stride: tuple) -> bytes:
    return (g("torch._utils", "_rebuild_tensor_v2")
            + tup(storage(key, numel), i(offset), tup(*map(i, size)), tup(*map(i, stride)),
                  NEWFALSE, g("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE) + REDUCE)


def state_dict(*items: tuple[bytes, bytes]) -> bytes:
    return PROTO + EMPTY_DICT + MARK + b"".join(k + v for k, v in items) + SETITEMS + STOP


def archive(pickle_bytes: bytes, storages: dict[str, bytes] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pickle_bytes)
        for key, data in (storages or {}).items():
            z.writestr(f"archive/data/{key}", data)
        z.writestr("archive/version", b"3\n")
    return buffer.getvalue()


ONE_FLOAT = {"0": np.float32(7.0).tobytes()}
MIB_OF_FLOATS = {"0": np.zeros(2**18, np.float32).tobytes()}


def _doubled(times: int, seed: bytes) -> bytes:
    """``seed`` then ``x = (x, x)`` ``times`` times through the memo: 2**times leaves."""
    out = seed + put(0) + POP
    for _ in range(times):
        out += get(0) + get(0) + TUPLE2 + put(0) + POP
    return out + get(0)


def _nested(depth: int) -> bytes:
    return EMPTY_TUPLE + TUPLE1 * depth


CORPUS = {
    # memory: one float viewed as 2**28 (stride 0); 2**15 x 2**15 likewise
    "stride-0 view of one element": (archive(state_dict(
        (s("w"), tensor("0", 1, 0, (2**28,), (0,)))), ONE_FLOAT), "more than 2x"),
    "2d stride-0 view": (archive(state_dict(
        (s("w"), tensor("0", 1, 0, (2**15, 2**15), (0, 0)))), ONE_FLOAT), "more than 2x"),
    # 1,500 transposed views of one 1 MiB storage: each a copy, 1.5 GB in all
    "1500 strided views of one storage": (archive(state_dict(*[
        (s(f"w{k}"), tensor("0", 2**18, 0, (512, 512), (1, 512))) for k in range(1500)]),
        MIB_OF_FLOATS), "more than 2x"),
    # time: a key hashed 2**60 times; a value of 2**40 leaves formatted into a message
    "tuple key doubled 60 times": (archive(
        PROTO + EMPTY_DICT + _doubled(60, EMPTY_TUPLE) + s("v") + SETITEM + STOP),
        "not a string"),
    "persistent id of 2**40 leaves": (archive(
        PROTO + EMPTY_DICT + s("w") + _doubled(40, EMPTY_LIST) + BINPERSID + SETITEM + STOP),
        "too large or too deep"),
    "size of 2**40 leaves": (archive(state_dict((s("w"), g("torch._utils", "_rebuild_tensor_v2")
        + tup(storage("0", 1), i(0), _doubled(40, i(1)), tup(i(1)), NEWFALSE) + REDUCE)),
        ONE_FLOAT), "too large or too deep"),
    # recursion: 10**6 nested tuples (as a key and as a value)
    "key nested 10**6 deep": (archive(
        PROTO + EMPTY_DICT + _nested(10**6) + s("v") + SETITEM + STOP), "not a string"),
    "value nested 10**6 deep": (archive(
        PROTO + EMPTY_DICT + s("w") + _nested(10**6) + SETITEM + STOP), "too large or too deep"),
    # one-line refusals, not tracebacks: a state dict inside itself; int keys
    "state_dict inside itself": (archive(
        PROTO + EMPTY_DICT + put(0) + s("state_dict") + get(0) + SETITEM + STOP),
        "inside itself"),
    "int keys": (archive(PROTO + EMPTY_DICT + MARK + i(3) + tensor("0", 1, 0, (1,), (1,))
                         + SETITEMS + STOP, ONE_FLOAT), "not a string"),
    # memory: one object memoized at index 2**31 (the unpickler sizes its memo table by it)
    "memo index 2**31": (archive(PROTO + EMPTY_DICT + put(2**31) + STOP), "memo index"),
    # BUILD onto the loader's own rebuild function
    "BUILD onto an allowed global": (archive(
        PROTO + g("torch._utils", "_rebuild_tensor_v2") + EMPTY_DICT + s("__doc__") + s("x")
        + SETITEM + BUILD + STOP), "BUILD"),
}


def _two_zips() -> bytes:
    good = archive(state_dict((s("w"), tensor("0", 1, 0, (1,), (1,)))), ONE_FLOAT)
    other = archive(state_dict((s("w"), tensor("0", 1, 0, (1,), (1,)))),
                    {"0": np.float32(1.0).tobytes()})
    return good + other


CORPUS["zip A then zip B"] = (_two_zips(), "two readers")

READER = r"""
import json, os, resource, sys, time
import resnext_jax as rx
from resnext_jax.weights import WeightsError
with open("/proc/self/status") as f:
    size = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize"))
resource.setrlimit(resource.RLIMIT_AS, (size + int(sys.argv[2]), size + int(sys.argv[2])))
start = time.perf_counter()
try:
    rx.load(sys.argv[1], "tiny_resnext")
    outcome = "loaded"
except WeightsError as err:
    outcome = str(err)
print(json.dumps({"outcome": outcome, "seconds": time.perf_counter() - start}))
"""


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    for name, (data, _) in CORPUS.items():
        (root / (name.replace(" ", "_").replace("*", "") + ".pth")).write_bytes(data)
    return root


@pytest.mark.e2e  # a subprocess per file
@pytest.mark.parametrize("name", sorted(CORPUS))
def test_hostile_pth_is_refused_in_one_line_within_bounds(name, corpus_dir):
    path = corpus_dir / (name.replace(" ", "_").replace("*", "") + ".pth")
    done = subprocess.run([sys.executable, "-c", READER, str(path), str(LIMIT)],
                          capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT,
                          env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT})
    assert done.returncode == 0, done.stderr[-2000:]  # no crash, no MemoryError traceback
    result = json.loads(done.stdout.strip().splitlines()[-1])
    outcome = result["outcome"]
    assert "\n" not in outcome and len(outcome) < 1000, outcome[:2000]
    assert CORPUS[name][1] in outcome, outcome


def test_torch_saved_files_read_the_same_with_and_without_torch(tmp_path, monkeypatch):
    """Every pickle protocol torch writes: the reader's outcome does not depend on whether
    torch is installed."""
    torch = pytest.importorskip("torch")
    from resnext_jax.weights import read_state_dict

    want = {"a.weight": torch.arange(12.0).reshape(3, 4), "a.bias": torch.ones(3),
            "b.running_var": torch.full((2,), 2.0),
            # a strided view of a 4 MiB storage: a copy, within 2x the file's size
            "c.weight": torch.arange(2.0**20).reshape(1024, 1024).t()}
    for protocol in (1, 2, 3, 4, 5):
        for legacy in (False, True):
            path = tmp_path / f"p{protocol}{'l' if legacy else 'z'}.pth"
            torch.save(want, path, pickle_protocol=protocol,
                       _use_new_zipfile_serialization=not legacy)
            with_torch = read_state_dict(path)
            with monkeypatch.context() as m:
                m.setitem(sys.modules, "torch", None)
                without = read_state_dict(path)
            for got in (with_torch, without):
                assert got.keys() == want.keys(), (protocol, legacy)
                for k, v in want.items():
                    np.testing.assert_array_equal(got[k], v.numpy(), err_msg=f"{protocol} {k}")
