"""Data-parallel scaling, per device, from the compiled train step (nothing is executed).

    PYTHONPATH=. python benchmarks/bench_scaling.py                   # about 10 minutes
    PYTHONPATH=. python benchmarks/bench_scaling.py --devices 8 --models resnext50_32x4d

For each model and simulated mesh (``--xla_force_host_platform_device_count``, one
subprocess per device count) it compiles the trainer's train step at a fixed per-device
batch and prints, per device: FLOPs (XLA's cost analysis), temporary memory (memory
analysis), the bytes each kind of collective moves, and ratios to the ideal: FLOPs and
temporary memory of the 1-device step at the same per-device batch, and for all-reduce
the bytes plain data parallelism needs (the gradients, i.e. the parameter bytes, plus
BatchNorm's batch statistics forward and backward, plus the metrics).

``--baseline`` adds rows for a plain ``jax.jit`` of the same loss, gradient and update
over the batch-sharded global batch with no ``data_axis`` (what the trainer compiled
before, and what any sharded ``jit`` of a grouped-convolution model compiles): XLA then
gathers the global batch for every grouped convolution (openxla/xla#47945).
``--config configs/seresnext50_32x4d_tpu_pod.py --devices 32`` compiles a config's own
model, dtype and global batch instead.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys

GIB = 2**30


def step_rows(names: list[str], per_device_batch: int, image_size: int = 224,
              dtype: str = "float32", baseline: bool = False,
              config_path: str | None = None) -> list[dict]:
    """Per-device figures (``resnext_jax.hlo.per_device``) of the trainer's train step
    compiled for a mesh of all of this process's devices, one row per model (and per
    step kind with ``baseline``); ``config_path``: that config's model, dtype and batch."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    import resnext_jax as rx
    from resnext_jax import hlo
    from resnext_jax.ops import DATA_AXIS
    from resnext_jax.train import default_config
    from resnext_jax.train.optim import create_optimizer, create_schedule
    from resnext_jax.train.steps import create_state, make_train_step

    devices = jax.device_count()
    mesh = Mesh(np.array(jax.devices()), (DATA_AXIS,))
    batch_sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    replicated = NamedSharding(mesh, PartitionSpec())
    config = _load_config(config_path) if config_path else default_config()
    rows = []
    for name in ([config.model.name] if config_path else names):
        if config_path:
            global_batch, size = config.batch_size, config.data.image_size
            dtype = config.model.dtype
        else:
            global_batch, size = per_device_batch * devices, image_size
        model = rx.create_model(name, dtype=jnp.dtype(dtype))
        schedule = create_schedule(config.optimizer, global_batch, 1000, 100_000)
        tx = create_optimizer(config.optimizer, schedule)
        state = jax.eval_shape(lambda m=model, t=tx, s=size: create_state(
            m, t, jax.random.key(0), (s, s, 3), ema=False))
        state = jax.tree_util.tree_map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated), state)
        batch = {"image": jax.ShapeDtypeStruct((global_batch, size, size, 3), jnp.float32,
                                               sharding=batch_sharding),
                 "label": jax.ShapeDtypeStruct((global_batch,), jnp.int32,
                                               sharding=batch_sharding)}
        steps = {"data_axis": make_train_step(
            model, tx, schedule, num_classes=model.num_classes, label_smoothing=0.1,
            ema_decay=0.0, accum_steps=1, seed=0, mesh=mesh)}
        if baseline:
            steps["plain jit"] = _plain_step(model, tx)
        param_bytes = sum(x.size * x.dtype.itemsize
                          for x in jax.tree_util.tree_leaves(state.params))
        # BatchNorm's running mean and variance have the shape of the batch statistics,
        # which are all-reduced in the forward pass and their cotangents in the backward.
        stat_bytes = 4 * sum(x.size for x in jax.tree_util.tree_leaves(state.batch_stats))
        for kind, step in steps.items():
            compiled = jax.jit(step, out_shardings=(replicated, replicated),
                               donate_argnums=0,
                               compiler_options=rx.compiler_options()
                               ).lower(state, batch).compile()
            rows.append({"model": name, "step": kind, "devices": devices,
                         "global_batch": global_batch, "dtype": str(dtype),
                         "param_bytes": param_bytes, "ideal_all_reduce_bytes":
                             param_bytes + 2 * stat_bytes + 16, **hlo.per_device(compiled)})
    return rows


def _plain_step(model, tx):
    """Loss, gradient and update under a plain ``jit`` of the global batch (no data_axis)."""
    import jax
    import optax

    def step(state, batch):
        def loss_fn(params):
            logits, updates = model.apply(
                {"params": params, "batch_stats": state.batch_stats}, batch["image"],
                train=True, mutable=["batch_stats"])
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
            return loss.mean(), updates["batch_stats"]

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        return state.replace(params=optax.apply_updates(state.params, updates),
                             batch_stats=stats, opt_state=opt_state), loss

    return step


def _load_config(path: str):
    spec = importlib.util.spec_from_file_location("config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def _run_worker(devices: int, args: argparse.Namespace) -> list[dict]:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--models", args.models,
           "--per-device-batch", str(args.per_device_batch), "--image-size",
           str(args.image_size), "--dtype", args.dtype]
    if args.baseline and devices in args.baseline_devices:
        cmd.append("--baseline")
    if args.config:
        cmd += ["--config", args.config]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{devices} devices failed:\n{done.stderr[-4000:]}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet50,resnext50_32x4d,seresnext50_32x4d,"
                                            "resnext101_32x8d")
    parser.add_argument("--devices", default="1,8,32,64")
    parser.add_argument("--per-device-batch", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--baseline", action="store_true",
                        help="also compile a plain jit of the step (the gather path)")
    parser.add_argument("--baseline-devices", default="8")
    parser.add_argument("--config", help="compile this config's model and global batch")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:  # in a subprocess whose XLA_FLAGS set the device count
        for row in step_rows(args.models.split(","), args.per_device_batch, args.image_size,
                             args.dtype, args.baseline, args.config):
            print(json.dumps(row), flush=True)
        return
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from common import table

    args.baseline_devices = {int(d) for d in args.baseline_devices.split(",")}
    counts = [int(d) for d in args.devices.split(",")]
    rows = [row for devices in counts for row in _run_worker(devices, args)]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    # The ideal: the 1-device step at the same per-device batch.
    one = {r["model"]: r for r in rows if r["devices"] == 1 and r["step"] == "data_axis"}
    out = []
    for r in rows:
        ref = one.get(r["model"])
        out.append([
            r["model"], r["step"], r["devices"], r["global_batch"], r["flops"] / 1e9,
            r["flops"] / ref["flops"] if ref else "", r["temp_bytes"] / GIB,
            r["temp_bytes"] / ref["temp_bytes"] if ref else "",
            r["all-reduce_bytes"] / 2**20,
            r["all-reduce_bytes"] / r["ideal_all_reduce_bytes"] if r["devices"] > 1 else "",
            r["all-gather_bytes"] / GIB,
            (r["all-to-all_bytes"] + r["reduce-scatter_bytes"]
             + r["collective-permute_bytes"]) / 2**20])
    print(table(["model", "step", "devices", "global batch", "GFLOP / device",
                 "FLOPs / 1-device", "temp GiB", "temp / 1-device", "all-reduce MiB",
                 "all-reduce / ideal", "all-gather GiB", "other collectives MiB"], out))


if __name__ == "__main__":
    main()
