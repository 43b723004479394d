"""A workdir is hostile too: links planted in it are refused before anything is written
through them, a poisoned metrics record is dropped like a torn line, a damaged checkpoint
never loads as other weights, and what the project writes gets the umask's mode."""

from __future__ import annotations

import json
import os

import pytest

import resnext_jax as rx
from resnext_jax.errors import UsageError
from resnext_jax.weights import WeightsFileError


@pytest.fixture
def outside(tmp_path):
    """A file outside the workdir that a planted link points at."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    workdir = tmp_path / "run"
    workdir.mkdir()
    return workdir, victim


def test_a_link_at_the_lock_is_refused_and_its_target_untouched(outside):
    from resnext_jax.train.workdir_io import WorkdirLock

    workdir, victim = outside
    os.symlink(victim, workdir / ".lock")
    with pytest.raises(UsageError, match=r"\.lock is a symbolic link; remove it"):
        WorkdirLock(str(workdir))
    assert victim.read_text() == "precious\n"


@pytest.mark.parametrize("name", ["metrics.jsonl", "eval_metrics.jsonl"])
def test_appends_never_go_through_a_planted_link(outside, name):
    from resnext_jax.train.workdir_io import append_line

    workdir, victim = outside
    os.symlink(victim, workdir / name)
    with pytest.raises(UsageError, match="is a symbolic link"):
        append_line(str(workdir / name), '{"step": 1}')
    assert victim.read_text() == "precious\n"


def test_metric_writer_refuses_a_linked_metrics_file_before_training(outside):
    from resnext_jax.train.metrics import MetricWriter

    workdir, victim = outside
    os.symlink(victim, workdir / "metrics.jsonl")
    with pytest.raises(UsageError, match="metrics.jsonl is a symbolic link"):
        MetricWriter(str(workdir), 0)
    assert victim.read_text() == "precious\n"


def test_a_poisoned_metrics_record_is_dropped_with_a_notice(tmp_path):
    from resnext_jax.train.metrics import repair

    path = tmp_path / "metrics.jsonl"
    good = [{"step": 1, "train/loss": 2.0}, {"step": 2, "train/loss": 1.5}]
    bad = [{"step": "x"}, {"step": None}, {"step": True}, [1, 2], {"no": "step"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in good[:1] + bad + good[1:]))
    notice = repair(str(path), last_step=2)
    assert notice is not None and f"dropped {len(bad)} damaged line(s)" in notice
    assert [json.loads(line) for line in path.read_text().splitlines()] == good


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_written_files_get_the_umask_mode(tmp_path, umask):
    from resnext_jax.files import atomic_write

    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "w.bin", b"x")
        plain = tmp_path / "plain.bin"
        plain.write_bytes(b"x")  # what open() gives, the user's expectation
    finally:
        os.umask(old)
    assert (tmp_path / "w.bin").stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 \
        == 0o666 & ~umask


def _trained_workdir(tmp_path) -> str:
    from resnext_jax import train

    config = train.get_config("synthetic")
    config.model.name, config.data.image_size = "tiny_resnext", 32
    config.batch_size = config.eval_batch_size = 8
    config.num_train_steps, config.checkpoint.async_save = 2, False
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(config, workdir)
    os.remove(os.path.join(workdir, "final_weights.msgpack"))  # load the checkpoint instead
    return workdir


@pytest.mark.e2e  # a training run, then a load per damaged copy
def test_loading_a_workdir_checks_the_checkpoint_digest(tmp_path):
    """One bit flipped anywhere in the newest checkpoint's state files: the load refuses
    it or returns the identical weights (the bit was in the optimizer's state), never other
    weights."""
    import jax
    import numpy as np

    workdir = _trained_workdir(tmp_path)
    intact = jax.tree_util.tree_leaves(rx.load(workdir).variables)
    state = os.path.join(workdir, "checkpoints", "2", "state")
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(state) for f in fs
                   if os.path.getsize(os.path.join(d, f)) > 1000)
    refused = 0
    for file in files:
        original = open(file, "rb").read()
        for at in np.linspace(0, len(original) - 1, 8).astype(int):
            damaged = bytearray(original)
            damaged[at] ^= 0x10
            open(file, "wb").write(bytes(damaged))
            try:
                loaded = jax.tree_util.tree_leaves(rx.load(workdir).variables)
            except WeightsFileError:
                refused += 1
            else:
                assert all(np.array_equal(a, b) for a, b in zip(loaded, intact, strict=True))
            open(file, "wb").write(original)
    assert refused > 0


# --- forged metadata: our .msgpack files (digest recomputed) and a workdir's model.json ------

def _forge(path, meta, variables=None) -> None:
    """A file in our documented format (weights/native.py) with ``meta`` as its metadata and a
    digest that matches: what an attacker who read the format can write."""
    import hashlib

    from flax import serialization

    meta_bytes = json.dumps(meta).encode() if not isinstance(meta, bytes) else meta
    payload = serialization.msgpack_serialize(variables or {"params": {}})
    digest = hashlib.sha256(meta_bytes + b"\0" + payload).hexdigest()
    path.write_bytes(serialization.msgpack_serialize(
        {"meta": meta_bytes, "variables": payload, "sha256": digest}))


@pytest.fixture(scope="module")
def genuine_meta(tmp_path_factory) -> dict:
    """The metadata of a real file of ours (random variables drawn without compiling)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import serialization

    model = rx.create_model("tiny_resnext")
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    variables = jax.tree_util.tree_map(lambda s: np.ones(s.shape, s.dtype), shapes)
    path = tmp_path_factory.mktemp("real") / "real.msgpack"
    rx.Pretrained.from_variables(model, variables).save(path)
    return json.loads(serialization.msgpack_restore(path.read_bytes())["meta"])


def _edit(meta: dict, change) -> dict:
    meta = json.loads(json.dumps(meta))
    change(meta)
    return meta


FORGERIES = {
    "cardinality 0": lambda m: m["architecture"].update(cardinality=0),
    "unknown field": lambda m: m["architecture"].update(wings=2),
    "huge stage": lambda m: m["architecture"].update(layers=[100_000, 1, 1, 1]),
    "width as text": lambda m: m["architecture"].update(base_width="64"),
    "transform as a string": lambda m: m.update(pretrained_cfg={"name": "x", "hf_hub_id": None,
                                                               "top1": None,
                                                               "transform": "bicubic"}),
    "unknown block": lambda m: m["architecture"].update(block="capsule"),
}


@pytest.mark.parametrize("name", FORGERIES)
def test_forged_metadata_is_one_line(tmp_path, name, genuine_meta):
    meta = _edit(genuine_meta, FORGERIES[name])
    _forge(tmp_path / "f.msgpack", meta)
    with pytest.raises(WeightsFileError, match="invalid metadata") as err:
        rx.load(tmp_path / "f.msgpack")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("meta", [[1, 2], b"\xff\xfe not json", "text"])
def test_metadata_that_is_no_object_is_one_line(tmp_path, meta):
    _forge(tmp_path / "f.msgpack", meta)
    with pytest.raises(WeightsFileError) as err:
        rx.load(tmp_path / "f.msgpack")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("text", ["{not json", json.dumps({"architecture": {"layers": [3000]}})])
def test_a_workdir_model_json_is_checked_before_anything_is_built(tmp_path, text):
    workdir = tmp_path / "run"
    (workdir / "checkpoints" / "1").mkdir(parents=True)
    (workdir / "model.json").write_text(text)
    with pytest.raises(WeightsFileError) as err:
        rx.load(workdir)
    assert "model.json" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("text, says", [
    ("{not json", "is not JSON"), ("[1, 2]", "holds a list"),
    ('{"batchsize": 3}', "unknown key batchsize"), ('{"model": 3}', "must be an object"),
    ('{"batch_size": "many"}', "config.json"), ('{"optimizer": {"nam": "sgd"}}', "optimizer.nam"),
])
def test_a_workdir_config_json_is_checked_in_one_line(text, says):
    from resnext_jax.train import config_from_json

    with pytest.raises(UsageError, match=says) as err:
        config_from_json(text)
    assert "\n" not in str(err.value)
