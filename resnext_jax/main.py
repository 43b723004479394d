"""Train or evaluate: ``python -m resnext_jax.main --config=NAME --workdir=DIR``.

``NAME`` is a packaged config (``digits``, ``finetune``, ``seresnext50_32x4d`` ...: the
repository's ``configs/``) or a config file. Overrides: ``--config.batch_size=512
--config.optimizer.base_lr=0.2``. Rerunning the same command resumes from the newest
checkpoint in DIR. ``--mode=eval`` evaluates a checkpoint (``--step``, default the newest) or
``--config.model.pretrained=WEIGHTS``. ``--mode=compile --topology=v4-32`` compiles the
train and eval steps for a TPU slice on any host (libtpu: ``pip install
"resnext_jax[tpu]"``) and prints each chip's HBM need, FLOPs and collectives; it initialises
nothing and reads no data (:mod:`resnext_jax.train.aot`). Several processes (a TPU pod
slice, GPU nodes): ``--distributed`` calls ``jax.distributed.initialize()``, which detects
the cluster on TPU pods, SLURM, Open MPI and Kubernetes, or takes ``--coordinator_address
--num_processes --process_id``.

A mistake in the command (an unknown config, key or model, a missing path, a workdir that
cannot be written) is answered in one line with exit status 2; a run that fails (a NaN, a
checkpoint that cannot be written) in one line with status 1. ``--verbose`` (or
``RESNEXT_VERBOSE=1``) shows tracebacks and the libraries' logs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import signal
import sys
import tempfile
import time

# Before TensorFlow is first imported: its C++ INFO / WARNING lines, not errors.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
from absl import app, flags  # noqa: E402
from absl import logging as absl_logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from resnext_jax.console import KNOWN_NOTICES, filtered_native_stderr  # noqa: E402
from resnext_jax.errors import UsageError, verbose  # noqa: E402
from resnext_jax.ops import reexec_with_huge_pages  # noqa: E402
from resnext_jax.workdir import CHECKPOINTS, FINAL_WEIGHTS, METRICS, is_remote  # noqa: E402
from resnext_jax.zoo import get_entry  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "a config name (digits, finetune, ...) or a "
                                "file (configs/NAME.py)", lock_config=True)
flags.DEFINE_string("workdir", None, "checkpoints, metrics.jsonl and TensorBoard events")
flags.DEFINE_enum("mode", "train", ["train", "eval", "compile"],
                  "train (resumes), eval only, or compile the steps for a TPU slice (--topology)")
flags.DEFINE_integer("step", None, "--mode=eval: the checkpoint step (default: newest)")
flags.DEFINE_bool("distributed", False, "call jax.distributed.initialize() first")
flags.DEFINE_string("coordinator_address", None, "--distributed: host:port of process 0 "
                    "(default: detected on TPU pods, SLURM, Open MPI, Kubernetes)")
flags.DEFINE_integer("num_processes", None, "--distributed: number of processes")
flags.DEFINE_integer("process_id", None, "--distributed: this process's index")
flags.DEFINE_string("topology", None, "--mode=compile: a TPU slice, e.g. v4-32, v5e-256")
flags.DEFINE_integer("num_slices", 1, "--mode=compile: slices of --topology (multislice)")
flags.DEFINE_integer("max_batch", 0, "--mode=compile: also find the largest per-chip batch "
                     "that fits, by compiling powers of two up to this")
flags.DEFINE_string("report", None, "--mode=compile: also write the report as JSON here")
flags.DEFINE_bool("verbose", False, "tracebacks and the libraries' logs")

USAGE = "python -m resnext_jax.main --config=NAME --workdir=DIR [--config.KEY=VALUE ...]"


class _Quiet(logging.Filter):
    """orbax logs every step of every save, and warns about read-only managers that eval
    asks for; its failures reach us as exceptions. Known start-up notices are not news."""

    def filter(self, record: logging.LogRecord) -> bool:
        if KNOWN_NOTICES.search(record.getMessage()):
            return False
        return record.levelno >= logging.ERROR or "/orbax/" not in record.pathname


class _Stopped(BaseException):
    """SIGTERM before the training loop, which handles it itself, took over. A
    BaseException, like KeyboardInterrupt: library code that wraps every Exception
    (protobuf's JSON parser, inside tfds.builder) must not turn the stop into its error."""


def _stop(signum, frame) -> None:
    del signum, frame
    raise _Stopped


def _verbose() -> bool:
    return FLAGS.verbose or verbose()


def main(argv: list[str]) -> None:
    del argv
    signal.signal(signal.SIGTERM, _stop)
    try:
        _main()
    except _Stopped:
        print("stopped by SIGTERM before training started: nothing to save; rerun the same "
              "command to start again", file=sys.stderr)
    except KeyboardInterrupt:
        print("interrupted before training started: nothing to save", file=sys.stderr)
        sys.exit(130)


def _main() -> None:
    absl_logging.get_absl_handler().addFilter(_Quiet())
    if not _verbose():
        absl_logging.set_verbosity(absl_logging.WARNING)
    if FLAGS.mode == "compile":
        return _compile()
    if FLAGS.distributed:
        # On CPU, cross-process collectives need JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo.
        jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                                   FLAGS.process_id)
    try:  # the quick checks, before TensorFlow and the data load
        if FLAGS.mode == "train":
            _check_workdir(FLAGS.workdir)
        if FLAGS.config.model.name:
            get_entry(FLAGS.config.model.name)
    except UsageError as e:
        _fail(e, 2)
    with filtered_native_stderr():
        from resnext_jax import train  # after initialize(): the backend starts here
        from resnext_jax.data import DatasetNotFoundError
        jax.devices()
    main_process = jax.process_index() == 0
    if main_process:
        print(f"resnext_jax: {FLAGS.mode} {FLAGS.config.model.name or 'the weights model'} "
              f"on {jax.device_count()} {jax.default_backend()} device(s), "
              f"{jax.process_count()} process(es); workdir {FLAGS.workdir}", file=sys.stderr)
    start = time.perf_counter()
    try:
        if FLAGS.mode == "eval":
            result = train.evaluate(FLAGS.config, FLAGS.workdir, FLAGS.step, report=_report)
        else:
            result = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except train.RunInterrupted:
        return  # the loop said where it stopped and how to resume; nothing more happened
    except (UsageError, DatasetNotFoundError, train.ConfigMismatchError) as e:
        _fail(e, 2)
    except (train.NonFiniteLossError, train.CheckpointError, train.WorkdirBusyError,
            OSError) as e:
        _fail(e, 1)
    if main_process and FLAGS.mode == "train":
        _summary(result, FLAGS.workdir, time.perf_counter() - start)
        print(json.dumps(result))


def _compile() -> None:
    """``--mode=compile``: the report, or one line and exit 2 when the steps do not fit."""
    from resnext_jax.train import aot

    try:
        if not FLAGS.topology:
            raise UsageError("--mode=compile needs --topology, e.g. --topology=v4-32 "
                             f"(known: {', '.join(aot.TOPOLOGIES)})")
        get_entry(FLAGS.config.model.name)
        with filtered_native_stderr():  # libtpu's notices on a host without a TPU
            aot.topology_devices(FLAGS.topology, FLAGS.num_slices)
        print(f"resnext_jax: compiling the train and eval steps of {FLAGS.config.model.name} "
              f"for {FLAGS.topology} (minutes on a small host)", file=sys.stderr, flush=True)
        report = aot.compile_for(FLAGS.config, FLAGS.topology, FLAGS.num_slices)
        print(aot.format_report(report), flush=True)
        if FLAGS.report:
            with open(FLAGS.report, "w") as f:
                json.dump(dataclasses.asdict(report), f, indent=2)
        aot.check_fits(report)
        if FLAGS.max_batch:
            best, _ = aot.max_batch_per_chip(FLAGS.config, FLAGS.topology, FLAGS.num_slices,
                                             limit=FLAGS.max_batch)
            print(f"largest per-chip batch that fits (powers of two up to {FLAGS.max_batch}): "
                  f"{best or 'none'}")
    except UsageError as e:
        _fail(e, 2)


def _report(result: dict) -> None:
    """An evaluation's result, shown before anything is written (which may fail)."""
    if jax.process_index() == 0:
        print(json.dumps(result), flush=True)


def _check_workdir(workdir: str) -> None:
    """A workdir that can be created and written, found before anything is created."""
    if is_remote(workdir):
        return
    existing = workdir
    while existing and not os.path.exists(existing):
        existing = os.path.dirname(existing.rstrip("/")) or "."
    if not os.path.isdir(existing):
        raise UsageError(f"--workdir={workdir}: {existing} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise UsageError(f"--workdir={workdir} cannot be written ({err.strerror}: "
                         f"{existing}); choose a folder you can write to") from None


def _fail(error: BaseException, status: int) -> None:
    if _verbose():
        raise error
    print(f"error: {error}", file=sys.stderr)
    sys.exit(status)


def _summary(result: dict, workdir: str, seconds: float) -> None:
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in result.items()
                        if isinstance(v, float))
    weights = os.path.join(workdir, FINAL_WEIGHTS)
    print(f"done in {seconds:.0f} s: {metrics}\n"
          f"  checkpoints  {os.path.join(workdir, CHECKPOINTS)}\n"
          f"  metrics      {os.path.join(workdir, METRICS)} (and TensorBoard events)\n"
          f"  weights      {weights}: resnext_jax.load({workdir!r})", file=sys.stderr)


def parse_flags(argv: list[str]) -> list[str]:
    """absl parsing; every mistake is one line and exit status 2, ``--help`` lists the
    configs."""
    from resnext_jax.train.config import config_path, list_configs

    if any(a in ("-h", "--help", "-help", "--helpfull") for a in argv[1:]):
        print(f"{__doc__}\nUsage: {USAGE}\nconfigs: {', '.join(list_configs())}\n"
              f"flags:\n{FLAGS.main_module_help()}")
        sys.exit(0)
    try:
        argv = _resolve_config(argv, config_path)
        compiling = "--mode=compile" in argv[1:]
        for name in ("config",) if compiling else ("config", "workdir"):
            if not any(a.startswith(f"--{name}") for a in argv[1:]):
                raise UsageError(f"--{name} is required")
        return FLAGS(argv)
    except UsageError as e:
        sys.exit(_usage(str(e)))
    except (AttributeError, KeyError) as e:  # raised by the locked ConfigDict
        sys.exit(_usage(_unknown_key(e)))
    except flags.Error as e:
        sys.exit(_usage(str(e)))


def _usage(message: str) -> int:
    print(f"error: {message} (--help lists the configs and flags)", file=sys.stderr)
    return 2


def _unknown_key(error: Exception) -> str:
    """``unknown config key 'batchsize' (did you mean 'batch_size'?)`` from ml_collections'
    message."""
    text = " ".join(str(error.args[0] if error.args else error).replace("\\n", " ")
                    .replace("\\", "").split())
    key = re.search(r"'([^']+)'", text)
    close = re.search(r'Did you mean "([^"]+)"', text)
    return (f"unknown config key {key.group(1)!r}" if key else f"unknown config key: {text}") \
        + (f" (did you mean {close.group(1)!r}?)" if close else "") \
        + "; every key and its default is in resnext_jax/train/config.py"


def _resolve_config(argv: list[str], config_path) -> list[str]:
    """``--config=digits``: a packaged config by name, from any working directory."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg.startswith("--config="):
            out[i] = "--config=" + config_path(arg.split("=", 1)[1])
        elif arg == "--config" and i + 1 < len(out):
            out[i + 1] = config_path(out[i + 1])
    return out


if __name__ == "__main__":
    reexec_with_huge_pages()  # XLA:CPU's per-step buffers on huge pages (docs/speed.md)
    app.run(main, flags_parser=parse_flags)
