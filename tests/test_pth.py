"""PyTorch ``.pth`` files without torch: both formats, and the ways a file could be read two
ways or make the loader run code or allocate what it does not hold."""

from __future__ import annotations

import io
import os
import pickle
import struct
import subprocess
import sys
import types
import warnings
import zipfile

import numpy as np
import pytest
from weight_fixtures import FIXTURES, fixture_state

from resnext_jax.weights import WeightsFileError, read_state_dict
from resnext_jax.weights.torch_pth import read_pth

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PTH = {"zip": os.path.join(FIXTURES, "timm_seresnext_t.pth"),
       "legacy": os.path.join(FIXTURES, "legacy_seresnext.legacy.pth")}
_FIXTURE = {"zip": "timm_seresnext_t", "legacy": "legacy_seresnext"}  # their safetensors copies


@pytest.mark.parametrize("kind", sorted(PTH))
def test_pth_reads_without_torch_as_the_safetensors_copy(kind, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
    got, want = read_state_dict(PTH[kind]), fixture_state(_FIXTURE[kind])
    assert got.keys() == want.keys()
    for key in want:
        assert got[key].dtype == want[key].dtype, key
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


class _Payload:
    """Pickles to a call of os.system: what a hostile checkpoint carries."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {self.marker}",)


def _zip(members: list[tuple[str, bytes]], compress: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buffer, "w", compress) as archive:
        warnings.simplefilter("ignore")  # "Duplicate name": that is the point of one test
        for name, data in members:
            archive.writestr(name, data)
    return buffer.getvalue()


def _read(path: str) -> bytes:
    with open(path, "rb") as stream:
        return stream.read()


def _legacy(obj_pickle: bytes, keys_pickle: bytes, storages: bytes = b"") -> bytes:
    head = b"".join(pickle.dumps(v, protocol=2) for v in
                    (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}))
    return head + obj_pickle + keys_pickle + storages


def _refused(data: bytes, tmp_path, match: str) -> None:
    path = tmp_path / "evil.pth"
    path.write_bytes(data)
    with pytest.raises(WeightsFileError, match=match):
        read_state_dict(path)


def test_a_pickle_that_would_run_code_is_refused_in_every_place(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"conv1.weight": _Payload(str(marker))}, protocol=2)
    empty = pickle.dumps({}, protocol=2)
    cases = {
        "zip data.pkl": _zip([("a/data.pkl", payload), ("a/version", b"3\n")]),
        "legacy object": _legacy(payload, pickle.dumps([], protocol=2)),
        # torch unpickles the storage-keys list too, so it is checked like the object
        "legacy storage keys": _legacy(empty, payload),
    }
    for case, data in cases.items():
        _refused(data, tmp_path, r"system")
        assert not marker.exists(), case


def test_ambiguous_containers_are_refused(tmp_path):
    good, legacy = _read(PTH["zip"]), _read(PTH["legacy"])
    # A legacy stream followed by a valid zip: Python's zipfile sees the zip, torch the stream.
    _refused(legacy + good, tmp_path, "bytes before a zip archive")
    with zipfile.ZipFile(io.BytesIO(good)) as archive:
        members = [(i.filename, archive.read(i.filename)) for i in archive.infolist()]
    pkl = next(m for m in members if m[0].endswith("data.pkl"))
    _refused(_zip([*members, pkl]), tmp_path, "duplicate member names")
    _refused(_zip([*members, ("archive/extra.py", b"print(1)")]), tmp_path,
             "outside a torch.save archive")
    _refused(_zip(members, zipfile.ZIP_DEFLATED), tmp_path, "compressed members")


def test_declared_sizes_never_exceed_the_file(tmp_path):
    # A 14-byte pickle declaring a 1 TB byte string (BINBYTES8): a clear error, no MemoryError.
    bomb = b"\x80\x04\x8e" + struct.pack("<Q", 2**40) + b"ab."
    for data in (_zip([("a/data.pkl", bomb)]), _legacy(bomb, b"")):
        _refused(data, tmp_path, "damaged pickle")
    # A storage that declares more elements than its bytes.
    with zipfile.ZipFile(PTH["zip"]) as archive:
        members = [(i.filename, archive.read(i.filename)) for i in archive.infolist()]
    cut = [(n, d[: len(d) // 2] if "/data/0" in n else d) for n, d in members]
    _refused(_zip(cut), tmp_path, "bytes for")


HIDE_TORCH = """
import sys, numpy as np
sys.modules["torch"] = None
from resnext_jax.weights import read_state_dict
for path in sys.argv[1:]:
    t = read_state_dict(path)
    np.savez(path + ".npz", **{k.replace(".", "|"): v.astype(np.float32) for k, v in t.items()})
print("ok")
"""


def test_with_and_without_torch_the_same_arrays(tmp_path):
    torch = pytest.importorskip("torch", reason="needs torch (.ci/run installs it)")
    del torch
    paths = []
    for kind, path in PTH.items():
        paths.append(str(tmp_path / f"{kind}.pth"))
        with open(paths[-1], "wb") as dst:
            dst.write(_read(path))
    done = subprocess.run([sys.executable, "-c", HIDE_TORCH, *paths], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": ROOT}, timeout=300)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-2000:]
    for path in paths:
        with_torch = read_state_dict(path)
        without = np.load(path + ".npz")
        for key, value in with_torch.items():
            np.testing.assert_array_equal(value.astype(np.float32),
                                          without[key.replace(".", "|")])


def test_read_pth_returns_the_containers():
    obj = read_pth(_read(PTH["zip"]))  # saved as {"state_dict": ..., "epoch": 3}
    assert obj["epoch"] == 3
    assert all(isinstance(v, np.ndarray) for v in obj["state_dict"].values())


def test_legacy_tensors_are_views_of_the_file_bytes():
    data = _read(PTH["legacy"])
    whole = np.frombuffer(data, np.uint8)
    obj = read_pth(data)
    assert obj and all(np.shares_memory(v, whole) for v in obj.values())


def _fake_torch(version: str, load) -> types.SimpleNamespace:
    return types.SimpleNamespace(__version__=version, load=load, Tensor=type("Tensor", (), {}))


@pytest.mark.parametrize(("version", "trusted"), [("2.5.1+cpu", False), ("2.9.1", False),
                                                  ("2.10.0", True), ("3.0.0", True)])
@pytest.mark.parametrize("kind", sorted(PTH))
def test_only_a_torch_without_known_bypasses_cross_checks_the_reading(kind, version, trusted,
                                                                     monkeypatch):
    """torch before 2.10 had published weights_only bypasses: it never sees the file. A later
    one reads the same bytes with weights_only, and a reading other than ours (here: no
    tensors at all) refuses the file."""
    calls = []

    def load(stream, **kwargs):
        calls.append((stream.read(), kwargs.get("weights_only")))
        return {}

    monkeypatch.setitem(sys.modules, "torch", _fake_torch(version, load))
    if trusted:
        with pytest.raises(WeightsFileError, match="torch reads other tensors"):
            read_state_dict(PTH[kind])
        assert calls == [(_read(PTH[kind]), True)]
    else:
        assert read_state_dict(PTH[kind]).keys() == fixture_state(_FIXTURE[kind]).keys()
        assert calls == []


def test_a_file_torch_refuses_reads_as_without_torch(monkeypatch):
    def load(stream, **kwargs):
        raise RuntimeError("weights_only load failed")

    monkeypatch.setitem(sys.modules, "torch", _fake_torch("2.10.0", load))
    got, want = read_state_dict(PTH["legacy"]), fixture_state("legacy_seresnext")
    assert got.keys() == want.keys()


def test_legacy_storage_keys_that_are_not_strings_are_refused(tmp_path):
    """torch names legacy storages by strings; a list mixing ints and strings is refused in
    one line, not sorted into a TypeError."""
    _refused(_legacy(pickle.dumps({}, protocol=2), pickle.dumps([1, "a"], protocol=2)),
             tmp_path, "storage keys do not match")
