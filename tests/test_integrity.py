"""Damaged files, property-based: every weight file and checkpoint we write, with bits
flipped, bytes cut off or bytes inserted anywhere, either loads to the identical arrays or is
refused with the project's own error; never another exception, never a silently different
model. Hypothesis draws the damage; ``RESNEXT_FUZZ_EXAMPLES`` sets how many per format (the
reliability figures in docs/reliability.md come from a run with 2,000)."""

from __future__ import annotations

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from weight_fixtures import FIXTURES

import resnext_jax as rx
from resnext_jax.weights import WeightsFileError, read_state_dict

EXAMPLES = int(os.environ.get("RESNEXT_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
OUTCOMES: dict[str, dict[str, int]] = {}


@st.composite
def damage(draw, size: int) -> tuple:
    kind = draw(st.sampled_from(["flip", "truncate", "insert", "overwrite"]))
    at = draw(st.integers(0, size - 1))
    if kind == "flip":
        return kind, at, draw(st.integers(0, 7))
    if kind == "truncate":
        return kind, at, None
    return kind, at, draw(st.binary(min_size=1, max_size=16))


def apply(data: bytes, change: tuple) -> bytes:
    kind, at, arg = change
    if kind == "flip":
        return data[:at] + bytes([data[at] ^ (1 << arg)]) + data[at + 1:]
    if kind == "truncate":
        return data[:at]
    if kind == "insert":
        return data[:at] + arg + data[at:]
    return data[:at] + arg + data[at + len(arg):]


def _same(a, b) -> bool:
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(la) == len(lb) and all(
        np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(x, y)
        for x, y in zip(la, lb, strict=True)) and \
        jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)


@pytest.fixture(scope="module", autouse=True)
def report():
    """Prints what the runs saw, after the module (pytest -s)."""
    yield
    for kind, counts in sorted(OUTCOMES.items()):
        print(f"\n{kind}: {counts}", end="")


def _count(kind: str, outcome: str) -> None:
    OUTCOMES.setdefault(kind, {}).setdefault(outcome, 0)
    OUTCOMES[kind][outcome] += 1


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Our own file and our safetensors export of a tiny model, and their arrays."""
    model = rx.create_model("tiny_seresnext")
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    root = tmp_path_factory.mktemp("tiny")
    saved = rx.Pretrained(model, variables, rx.PretrainedCfg("tiny_seresnext.x", None, None),
                          None)
    saved.save(root / "w.msgpack")
    tensors = saved.export_torch(root / "w.safetensors")
    return root, rx.load(root / "w.msgpack").variables, tensors


def _damaged_copy(source, path, data):
    """``source``'s bytes with damage drawn from ``data``, written to ``path``."""
    with open(source, "rb") as stream:
        original = stream.read()
    path.write_bytes(apply(original, data.draw(damage(len(original)))))
    return path


@FUZZ
@given(data=st.data())
def test_our_weight_files(tiny, tmp_path, data):
    root, variables, _ = tiny
    path = _damaged_copy(root / "w.msgpack", tmp_path / "w.msgpack", data)
    try:
        loaded = rx.load(path)
    except rx.WeightsError:
        _count("msgpack", "refused")
        return
    assert _same(loaded.variables, variables)
    _count("msgpack", "identical")


@FUZZ
@given(data=st.data())
def test_our_safetensors_exports(tiny, tmp_path, data):
    root, _, tensors = tiny
    path = _damaged_copy(root / "w.safetensors", tmp_path / "w.safetensors", data)
    try:
        loaded = read_state_dict(path)
    except WeightsFileError:
        _count("safetensors", "refused")
        return
    assert _same(loaded, tensors)
    _count("safetensors", "identical")


@FUZZ
@given(data=st.data())
def test_pth_files(tmp_path, data):
    """No digest in a .pth: a flipped bit in tensor data can only be caught by its pickle
    and sizes, so here the test is that loading never runs code or raises another error."""
    path = _damaged_copy(os.path.join(FIXTURES, "timm_seresnext_t.pth"), tmp_path / "w.pth",
                         data)
    try:
        read_state_dict(path)
    except WeightsFileError:
        _count("pth", "refused")
        return
    _count("pth", "loaded")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from resnext_jax.train import Checkpointer

    root = tmp_path_factory.mktemp("ckpt")
    states = {s: {"w": jnp.arange(300.0) * s, "b": jnp.full((7,), s, jnp.int32)}
              for s in (1, 2)}
    ckpt = Checkpointer(str(root), keep=3, async_save=False)
    for step, state in states.items():
        ckpt.save(step, state)
    ckpt.close()
    files = sorted(os.path.relpath(os.path.join(d, f), root / "2")
                   for d, _, fs in os.walk(root / "2") for f in fs)
    return root, states, files


@settings(max_examples=max(EXAMPLES // 2, 5), deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_checkpoints(checkpoints, tmp_path, data):
    """The newest checkpoint damaged: it restores identical, or is set aside for the
    previous (intact) one, or the run stops with CheckpointError, touching nothing."""
    from resnext_jax.train import Checkpointer, CheckpointError

    root, states, files = checkpoints
    work = tmp_path / "c"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(root, work)
    target = work / "2" / data.draw(st.sampled_from(files))
    original = target.read_bytes()
    if original:
        target.write_bytes(apply(original, data.draw(damage(len(original)))))
    abstract = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                                      states[2])
    ckpt = Checkpointer(str(work), keep=3, async_save=False)
    try:
        restored = ckpt.restore_latest(abstract)
    except CheckpointError:
        _count("checkpoint", "stopped")
        assert (work / "2").is_dir()  # touched nothing
        return
    finally:
        ckpt.close()
    state, step = restored
    assert _same(state, states[step])
    _count("checkpoint", "identical" if step == 2 else "fell back")
