"""Training parts in-process: schedules, weight-decay mask, optimizers, the train step
(gradient accumulation, EMA, label smoothing) and the masked eval step."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from resnext_jax import create_model
from resnext_jax.train import default_config
from resnext_jax.train.optim import (
    create_optimizer,
    create_schedule,
    decay_mask,
    lr_multipliers,
    peak_learning_rate,
)
from resnext_jax.train.steps import (
    Mixing,
    create_state,
    ema_decay_at,
    make_eval_step,
    make_train_step,
    mix,
)


def _opt(**kw):
    opt = default_config().optimizer
    opt.update(kw)
    return opt


def test_learning_rate_scales_with_batch_then_warms_up_and_decays():
    opt = _opt(base_lr=0.1, warmup_epochs=2, schedule="cosine")
    assert peak_learning_rate(opt, 1024) == pytest.approx(0.4)
    sched = create_schedule(opt, 1024, steps_per_epoch=10, total_steps=100)
    assert float(sched(0)) == 0.0
    assert float(sched(10)) == pytest.approx(0.2)  # half-way through the warmup
    assert float(sched(20)) == pytest.approx(0.4)
    assert float(sched(60)) == pytest.approx(0.2, rel=1e-5)  # cosine half-way
    assert float(sched(100)) == pytest.approx(0.0, abs=1e-7)


def test_step_schedule_divides_by_ten_at_the_given_epochs():
    opt = _opt(base_lr=0.1, warmup_epochs=0, schedule="step", decay_epochs=(3, 6))
    sched = create_schedule(opt, 256, steps_per_epoch=10, total_steps=90)
    values = [float(sched(s)) for s in (0, 29, 30, 59, 60, 89)]
    np.testing.assert_allclose(values, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)
    with pytest.raises(ValueError, match="optimizer.schedule='linear'"):
        create_schedule(_opt(schedule="linear"), 256, 10, 90)


def _tiny():
    model = create_model("tiny_seresnext", num_classes=5)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    return model, variables


def test_weight_decay_skips_batchnorm_and_biases():
    _, variables = _tiny()
    mask = decay_mask(variables["params"])
    flat = {"/".join(k.key for k in path): m
            for path, m in jax.tree_util.tree_leaves_with_path(mask)}
    assert flat["stem/conv1/kernel"] and flat["layer1_0/se/fc1/kernel"] and flat["fc/kernel"]
    assert not flat["stem/bn1/scale"] and not flat["stem/bn1/bias"]
    assert not flat["fc/bias"] and not flat["layer1_0/se/fc1/bias"]
    params = variables["params"]
    zero_grads = jax.tree_util.tree_map(jnp.zeros_like, params)
    for name in ("sgd", "adamw", "lamb", "lars"):
        tx = create_optimizer(_opt(name=name, weight_decay=0.1), optax.constant_schedule(1.0))
        updates, _ = jax.jit(tx.update)(zero_grads, tx.init(params), params)
        assert np.all(np.asarray(updates["stem"]["bn1"]["scale"]) == 0), name
        assert np.any(np.asarray(updates["stem"]["conv1"]["kernel"]) != 0), name
    with pytest.raises(ValueError, match="optimizer.name='adam'"):
        create_optimizer(_opt(name="adam"), optax.constant_schedule(1.0))


def test_per_part_learning_rate_multipliers_scale_the_updates():
    _, variables = _tiny()
    params, parts = variables["params"], ("stem", "layer1", "layer2", "layer3", "fc")
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    multipliers = lr_multipliers(params, parts, {"stem": 0.1, "fc": 2.0, "layer4": 1.0})
    for name in ("sgd", "adamw"):
        opt = _opt(name=name, weight_decay=0.1)
        plain = create_optimizer(opt, optax.constant_schedule(0.5))
        scaled = create_optimizer(opt, optax.constant_schedule(0.5), multipliers=multipliers)
        ref, _ = plain.update(grads, plain.init(params), params)
        got, _ = scaled.update(grads, scaled.init(params), params)
        for part, factor in (("stem", 0.1), ("layer1_0", 1.0), ("fc", 2.0)):
            for a, b in zip(jax.tree_util.tree_leaves(got[part]),
                            jax.tree_util.tree_leaves(ref[part]), strict=True):
                np.testing.assert_allclose(a, factor * b, rtol=1e-6, err_msg=f"{name} {part}")
    assert lr_multipliers(params, parts, {"stem": 1.0, "layer4": 1.0}) is None
    with pytest.raises(ValueError, match=r"names \['layer4'\], which this model does not have"):
        lr_multipliers(params, parts, {"layer4": 0.5})


def test_label_smoothing_targets():
    """Without Mixup / CutMix the targets are the smoothed one-hot rows (timm's)."""
    images = jnp.zeros((2, 4, 4, 3))
    _, targets = mix(images, jnp.array([0, 2]), jax.random.key(0), num_classes=3,
                     smoothing=0.1, mixing=Mixing())
    np.testing.assert_allclose(targets, [[0.9 + 0.1 / 3, 0.1 / 3, 0.1 / 3],
                                         [0.1 / 3, 0.1 / 3, 0.9 + 0.1 / 3]], rtol=1e-6)


class _Linear(nn.Module):
    """No BatchNorm, so one big batch and two half batches must give the same gradient."""

    @nn.compact
    def __call__(self, x, train=False):
        return nn.Dense(4)(x.reshape(x.shape[0], -1))


def _mesh():
    return jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))


@pytest.mark.parametrize("accum", [2, 4])
def test_gradient_accumulation_equals_the_full_batch(accum):
    model = _Linear()
    tx = optax.sgd(0.1)
    batch = {"image": jax.random.normal(jax.random.key(1), (8, 3, 3, 1)),
             "label": jnp.arange(8) % 4}
    states, metrics = [], []
    for k in (1, accum):
        state = create_state(model, tx, jax.random.key(0), (3, 3, 1), ema=False)
        step = make_train_step(model, tx, optax.constant_schedule(0.1), num_classes=4,
                               label_smoothing=0.0, ema_decay=0.0, accum_steps=k, seed=0,
                               mesh=_mesh())
        new, m = jax.jit(step)(state, batch)
        states.append(new)
        metrics.append(m)
    np.testing.assert_allclose(metrics[0]["loss"], metrics[1]["loss"], rtol=1e-6)
    np.testing.assert_allclose(metrics[0]["grad_norm"], metrics[1]["grad_norm"], rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(states[0].params),
                    jax.tree_util.tree_leaves(states[1].params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_ema_averages_weights_and_batchnorm_statistics_like_timm():
    """timm's ModelEmaV3: the first update copies, then ``decay * ema + (1 - decay) * new``
    over the parameters and the BatchNorm statistics; the eval step reports both."""
    model, variables = _tiny()
    tx = optax.sgd(0.05, momentum=0.9)
    state = jax.jit(lambda r: create_state(model, tx, r, (32, 32, 3), ema=True))(
        jax.random.key(0))
    step = jax.jit(make_train_step(model, tx, optax.constant_schedule(0.05), num_classes=5,
                                   label_smoothing=0.1, ema_decay=0.9, accum_steps=1, seed=0,
                                   mesh=_mesh()))
    batch = {"image": jax.random.normal(jax.random.key(2), (4, 32, 32, 3)),
             "label": jnp.array([0, 1, 2, 3])}
    one, m = step(state, batch)
    two, _ = step(one, batch)
    assert int(two.step) == 2 and bool(m["finite"])
    assert float(m["learning_rate"]) == pytest.approx(0.05)

    def weights(s):
        return jax.tree_util.tree_leaves({"params": s.params, "batch_stats": s.batch_stats})

    assert len(jax.tree_util.tree_leaves(two.ema)) == len(weights(two))
    for e1, e2, w1, w2 in zip(jax.tree_util.tree_leaves(one.ema),
                              jax.tree_util.tree_leaves(two.ema), weights(one), weights(two),
                              strict=True):
        np.testing.assert_allclose(e1, w1)
        np.testing.assert_allclose(e2, 0.9 * e1 + 0.1 * w2, rtol=1e-5, atol=1e-7)
    assert not np.allclose(two.ema["batch_stats"]["stem"]["bn1"]["mean"],
                           two.batch_stats["stem"]["bn1"]["mean"])
    # Warm-up: 0, then 1 - (1 + n) ** -2/3 after n updates, capped by the decay.
    decays = [float(ema_decay_at(jnp.array(s), 0.9999, True)) for s in (1, 2, 10**9)]
    np.testing.assert_allclose(decays, [0.0, 1 - 2 ** (-2 / 3), 0.9999], rtol=1e-6)
    # The moving average is evaluated alongside the weights (equal after the first copy).
    evaluate = jax.jit(make_eval_step(model, num_classes=5, use_ema=True, mesh=_mesh()))
    sums = evaluate(one, {**batch, "mask": jnp.ones(4)})
    assert sums.keys() == {"loss", "top1", "top5", "count", "ema_loss", "ema_top1", "ema_top5"}
    np.testing.assert_allclose(sums["ema_loss"], sums["loss"], rtol=1e-6)


def test_eval_step_ignores_padding():
    model, _ = _tiny()
    state = jax.jit(lambda r: create_state(model, optax.sgd(0.1), r, (32, 32, 3), ema=False))(
        jax.random.key(0))
    step = jax.jit(make_eval_step(model, num_classes=5, use_ema=False, mesh=_mesh()))
    images = jax.random.normal(jax.random.key(3), (4, 32, 32, 3))
    labels = jnp.array([0, 1, 2, 3])
    full = step(state, {"image": images[:2], "label": labels[:2], "mask": jnp.ones(2)})
    padded = step(state, {"image": images.at[2:].set(0), "label": labels.at[2:].set(0),
                          "mask": jnp.array([1.0, 1.0, 0.0, 0.0])})
    assert float(padded["count"]) == 2
    for k in ("loss", "top1", "top5"):
        np.testing.assert_allclose(padded[k], full[k], rtol=1e-5)


def test_synthetic_config_runs_in_process_with_the_recipe_options(tmp_path):
    """bf16 compute, LARS, per-part learning rates, Mixup / CutMix and an EMA with warm-up
    that is evaluated beside the weights and is what the run exports."""
    from resnext_jax.train import train_and_evaluate

    config = _synthetic()
    config.num_train_steps, config.log_every_steps = 3, 1
    config.model.dtype = "bfloat16"  # compute; parameters stay float32
    config.optimizer.name = "lars"
    config.optimizer.lr_multipliers.stem = 0.1
    config.mixing.mixup_alpha, config.mixing.cutmix_alpha = 0.8, 1.0
    config.ema_decay, config.ema_warmup = 0.999, True
    result = train_and_evaluate(config, str(tmp_path))
    assert set(result) == {f"eval/{p}{k}" for p in ("", "ema_") for k in ("loss", "top1", "top5")}
    assert np.isfinite(result["eval/loss"]) and np.isfinite(result["eval/ema_loss"])
    import resnext_jax as rx

    trained = rx.load(tmp_path)
    assert trained.variables["params"]["fc"]["kernel"].dtype == np.float32
    assert trained.cfg.top1 == pytest.approx(100 * result["eval/ema_top1"])
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len([line for line in lines if "train/images_per_sec" in line]) == 3
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3"]
    with pytest.raises(rx.errors.UsageError, match="even number"):
        config.batch_size = 7
        train_and_evaluate(config, str(tmp_path / "odd"))


def test_checkpointer_keeps_the_last_k_and_the_best(tmp_path):
    from resnext_jax.train import Checkpointer

    ckpt = Checkpointer(str(tmp_path), keep=2, best_metric="eval_top1")
    state = {"w": jnp.arange(3.0)}
    for step, top1 in [(1, 0.5), (2, 0.9), (3, 0.6), (4, None), (5, 0.7)]:
        ckpt.save(step, {"w": state["w"] + step}, None if top1 is None else {"eval_top1": top1})
        ckpt.wait()
    assert sorted(ckpt.manager.all_steps()) == [2, 4, 5]
    restored, step = ckpt.restore_latest({"w": jax.ShapeDtypeStruct((3,), jnp.float32)})
    assert step == 5 and np.array_equal(restored["w"], np.arange(3.0) + 5)
    ckpt.close()


def test_a_checkpoint_of_the_old_ema_params_layout_is_a_config_mismatch(tmp_path):
    """A checkpoint whose state has other fields (here an EMA field named ``ema_params``) is
    not damage: the restore names the fields that differ and sets nothing aside."""
    import flax.struct

    from resnext_jax.train import Checkpointer, ConfigMismatchError, TrainState

    @flax.struct.dataclass
    class OldTrainState:
        step: jax.Array
        params: dict
        batch_stats: dict
        opt_state: tuple
        ema_params: dict

    params = {"w": jnp.ones((3, 2))}
    ckpt = Checkpointer(str(tmp_path), keep=2, async_save=False)
    ckpt.save(1, OldTrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats={},
                               opt_state=(), ema_params=params))
    ckpt.wait()
    now = jax.eval_shape(lambda: TrainState(
        step=jnp.zeros((), jnp.int32), params=params, batch_stats={}, opt_state=(),
        ema={"params": params, "batch_stats": {}}))
    with pytest.raises(ConfigMismatchError, match="ema: not in the checkpoint; ema_params: in "
                                                  "the checkpoint, not in this state"):
        ckpt.restore_latest(now)
    ckpt.close()
    assert sorted(os.listdir(tmp_path)) == ["1"]


def _flip_data_bytes(step_dir):
    """Flip one bit in every array-data file of an orbax checkpoint directory."""
    for dirpath, _, files in os.walk(os.path.join(step_dir, "state")):
        for f in files:
            path = os.path.join(dirpath, f)
            if "ocdbt.process" in dirpath and os.path.getsize(path) > 100:
                data = bytearray(open(path, "rb").read())
                data[len(data) // 2] ^= 0x40
                open(path, "wb").write(bytes(data))


def _two_checkpoints(directory):
    from resnext_jax.train import Checkpointer

    ckpt = Checkpointer(str(directory), keep=3)
    for step in (1, 2):
        ckpt.save(step, {"w": jnp.arange(1000.0) * step})
        ckpt.wait()
    ckpt.close()
    return {"w": jax.ShapeDtypeStruct((1000,), jnp.float32)}


def test_a_flipped_bit_in_a_checkpoint_is_damage_found_by_its_digest(tmp_path):
    from resnext_jax.train import Checkpointer

    abstract = _two_checkpoints(tmp_path)
    _flip_data_bytes(tmp_path / "2")
    reader = Checkpointer(str(tmp_path), keep=3, read_only=True)  # evaluation: never renames
    state, step = reader.restore_latest(abstract)
    reader.close()
    assert step == 1 and np.array_equal(state["w"], np.arange(1000.0))
    assert sorted(os.listdir(tmp_path)) == ["1", "2"]
    (tmp_path / "corrupt_2").mkdir()  # set aside before: the new name must not clash
    writer = Checkpointer(str(tmp_path), keep=3)
    assert writer.restore_latest(abstract)[1] == 1
    writer.close()
    assert sorted(os.listdir(tmp_path)) == ["1", "corrupt_2", "corrupt_2.1"]


def test_only_damage_sets_a_checkpoint_aside(tmp_path, monkeypatch):
    """Permissions, I/O errors and memory say nothing about the files: stop, touch nothing."""
    from resnext_jax.train import Checkpointer, CheckpointError
    from resnext_jax.train.checkpoint import DamagedCheckpointError, is_damage

    abstract = _two_checkpoints(tmp_path)
    ckpt = Checkpointer(str(tmp_path), keep=3)
    for error in (PermissionError(13, "Permission denied"), OSError(5, "Input/output error"),
                  MemoryError(), ValueError("PERMISSION_DENIED: reading manifest")):
        def fail(*args, error=error, **kwargs):
            raise error

        monkeypatch.setattr(ckpt.manager, "restore", fail)
        with pytest.raises(CheckpointError, match="nothing was changed"):
            ckpt.restore_latest(abstract)
        assert sorted(os.listdir(tmp_path)) == ["1", "2"]
    ckpt.close()
    damaged = [DamagedCheckpointError("digest"), FileNotFoundError("_METADATA"),
               ValueError('DATA_LOSS: Error decoding "manifest.ocdbt"'),
               json.JSONDecodeError("Unterminated string", "{", 1), KeyError("value_type")]
    assert all(is_damage(e) for e in damaged)
    assert not any(is_damage(e) for e in (RuntimeError("a bug"), TypeError("a bug")))


def test_metric_lines_append_locally_and_on_object_stores(tmp_path):
    import tensorflow as tf

    from resnext_jax.train.workdir_io import append_line

    for path in (str(tmp_path / "m.jsonl"), "ram://resnext_test/m.jsonl"):  # ram:// = remote
        append_line(path, '{"step": 1}')
        append_line(path, '{"step": 2}')
        assert tf.io.gfile.GFile(path).read() == '{"step": 1}\n{"step": 2}\n'


def _synthetic(**model):
    from resnext_jax.train.config import get_config

    config = get_config("synthetic")
    config.model.name, config.data.image_size = "tiny_seresnext", 32
    config.batch_size = config.eval_batch_size = 8
    config.model.update(model)
    return config


def test_config_num_classes_sets_the_head(tmp_path):
    """config.model.num_classes sets the head; one that is not the data's is refused."""
    from resnext_jax import train

    run = train.create_run(_synthetic(num_classes=7), str(tmp_path))
    assert run.num_classes == run.model.num_classes == 7
    run.close()
    config = train.get_config("digits")
    config.data.data_dir = str(tmp_path / "tfds")
    config.model.num_classes = 10  # the data's: fine
    run = train.create_run(config, str(tmp_path / "ok"))
    assert run.model.num_classes == 10
    run.close()
    config.model.num_classes = 5
    with pytest.raises(ValueError, match="num_classes=5, but the data has 10 classes"):
        train.create_run(config, str(tmp_path / "bad"))


def test_train_from_freezes_the_earlier_parts(tmp_path):
    """Stages before train_from keep their parameters and BatchNorm statistics."""
    from resnext_jax import train

    run = train.create_run(_synthetic(train_from="layer3"), str(tmp_path))
    state = run.fresh_state()
    batch = train.shard_batch(run, next(run.train_data.iterate(0)))
    new, metrics = run.steps.train_step(jax.tree_util.tree_map(jnp.copy, state), batch)
    run.close()
    assert bool(metrics["finite"])
    for part in ("stem", "layer1_0", "layer2_0"):
        for a, b in zip(jax.tree_util.tree_leaves(state.params[part]),
                        jax.tree_util.tree_leaves(new.params[part]), strict=True):
            np.testing.assert_array_equal(a, b, err_msg=part)
        for a, b in zip(jax.tree_util.tree_leaves(state.batch_stats[part]),
                        jax.tree_util.tree_leaves(new.batch_stats[part]), strict=True):
            np.testing.assert_array_equal(a, b, err_msg=part)
    def kernel(params, part):
        return params[part]["kernel"] if part == "fc" else params[part]["conv1"]["kernel"]

    for part in ("layer3_0", "layer4_0", "fc"):
        assert not np.array_equal(kernel(state.params, part), kernel(new.params, part)), part


def test_pretrained_weights_are_evaluated_with_their_own_transform(tmp_path):
    """--mode=eval --config.model.pretrained=SET evaluates with the set's transform."""
    import resnext_jax as rx
    from resnext_jax import train

    model = rx.create_model("tiny_seresnext")
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    own = rx.Transform(size=48, crop_pct=0.95, interpolation="bicubic", mean=(0.5,) * 3,
                       std=(0.25,) * 3)
    path = tmp_path / "w.msgpack"
    rx.Pretrained(model, variables, rx.PretrainedCfg("tiny_seresnext.own", None, None, own),
                  None).save(path)
    config = _synthetic(pretrained=str(path))
    run = train.create_run(config, str(tmp_path / "run"), train=False)
    assert run.transform == dataclasses.replace(own, size=32)  # data.image_size
    run.close()
    config.data.crop_pct, config.data.eval_size = 1.0, 40  # the config still decides
    run = train.create_run(config, str(tmp_path / "run2"), train=False)
    assert (run.transform.crop_pct, run.transform.size) == (1.0, 40)
    assert run.transform.interpolation == "bicubic"
    run.close()


def test_one_run_per_workdir_and_no_stale_lock(tmp_path):
    from resnext_jax import train
    from resnext_jax.train.workdir_io import WorkdirLock

    first = WorkdirLock(str(tmp_path))
    with pytest.raises(train.WorkdirBusyError, match=f"in use by another run \\(process "
                       f"{os.getpid()} on"):
        train.train_and_evaluate(_synthetic(), str(tmp_path))
    first.release()
    # A holder killed with SIGKILL leaves no stale lock behind.
    code = ("import os, signal, sys; from resnext_jax.train.workdir_io import WorkdirLock; "
            "WorkdirLock(sys.argv[1]); os.kill(os.getpid(), signal.SIGKILL)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], timeout=120,
                          env={**os.environ, "PYTHONPATH": root})
    assert done.returncode == -9
    WorkdirLock(str(tmp_path)).release()


def test_metrics_file_is_repaired_on_resume(tmp_path):
    """A torn last line (full disk, kill) and records after the resumed step go; readers see
    one value per step."""
    from resnext_jax.train.metrics import repair
    from resnext_jax.viz import read_metrics

    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "train/loss": 1.0 / s}) for s in range(1, 11)]
    path.write_text("\n".join(lines) + '\n{"step": 11, "train/lo')
    message = repair(str(path), 6)
    assert "dropped 1 damaged line(s) and 4 record(s) after step 6" in message
    assert path.read_text() == "".join(line + "\n" for line in lines[:6])
    assert repair(str(path), 6) is None
    with path.open("a") as f:  # the resumed run writes steps 7.. again, one of them twice
        f.write(json.dumps({"step": 7, "train/loss": 0.5}) + "\n")
        f.write(json.dumps({"step": 7, "train/loss": 0.25}) + "\n")
    steps, values = read_metrics(path)["train/loss"]
    assert steps.tolist() == [1, 2, 3, 4, 5, 6, 7] and values[-1] == 0.25


def test_a_step_whose_update_overflows_is_not_finite():
    """Finite loss and gradient, but the update overflows the parameters: not a good step."""
    model = _Linear()
    tx = optax.sgd(1e38)
    state = create_state(model, tx, jax.random.key(0), (3, 3, 1), ema=False)
    step = jax.jit(make_train_step(model, tx, optax.constant_schedule(1e38), num_classes=4,
                                   label_smoothing=0.0, ema_decay=0.0, accum_steps=1, seed=0,
                                   mesh=_mesh()))
    batch = {"image": jax.random.normal(jax.random.key(1), (8, 3, 3, 1)) * 100,
             "label": jnp.arange(8) % 4}
    new, metrics = step(state, batch)
    assert np.isfinite(metrics["loss"]) and np.isfinite(metrics["grad_norm"])
    assert not np.all(np.isfinite(new.params["Dense_0"]["kernel"]))
    assert not bool(metrics["finite"])


def test_synthetic_data_evaluates_in_batches_of_eval_batch_size(tmp_path):
    from resnext_jax import train

    config = _synthetic()
    config.eval_batch_size = 16
    run = train.create_run(config, str(tmp_path), train=False)
    try:
        (batch,) = list(run.eval_data)
        assert batch["image"].shape[0] == run.eval_data.num_examples == 16
        assert train.evaluate_state(run, run.fresh_state()).keys() >= {"eval/top1"}
    finally:
        run.close()
