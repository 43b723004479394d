"""Train or evaluate: ``python -m resnext_jax.main --config=NAME --workdir=DIR``.

``NAME`` is a packaged config (``digits``, ``finetune``, ``seresnext50_32x4d`` ...: the
repository's ``configs/``) or a config file.

Overrides: ``--config.batch_size=512 --config.optimizer.base_lr=0.2``. Rerunning the same
command resumes from the newest checkpoint in DIR. ``--mode=eval`` evaluates a checkpoint
(``--step``, default the newest) or ``--config.model.pretrained=NAME_OR_FILE``.
Several processes (a TPU pod slice, GPU nodes): ``--distributed`` calls
``jax.distributed.initialize()``, which detects the cluster on TPU pods, SLURM, Open MPI and
Kubernetes, or takes ``--coordinator_address --num_processes --process_id``.
"""

from __future__ import annotations

import json
import logging
import signal
import sys

import jax
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "a config name (digits, finetune, ...) or a "
                                "file (configs/NAME.py)", lock_config=True)
flags.DEFINE_string("workdir", None, "checkpoints, metrics.jsonl and TensorBoard events")
flags.DEFINE_enum("mode", "train", ["train", "eval"], "train (resumes) or eval only")
flags.DEFINE_integer("step", None, "--mode=eval: the checkpoint step (default: newest)")
flags.DEFINE_bool("distributed", False, "call jax.distributed.initialize() first")
flags.DEFINE_string("coordinator_address", None, "--distributed: host:port of process 0 "
                    "(default: detected on TPU pods, SLURM, Open MPI, Kubernetes)")
flags.DEFINE_integer("num_processes", None, "--distributed: number of processes")
flags.DEFINE_integer("process_id", None, "--distributed: this process's index")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietOrbax(logging.Filter):
    """orbax logs every step of every save at INFO; keep its warnings and errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or "/orbax/" not in record.pathname


class _Stopped(Exception):
    """SIGTERM before the training loop, which handles it itself, took over."""


def _stop(signum, frame) -> None:
    del signum, frame
    raise _Stopped


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
    absl_logging.get_absl_handler().addFilter(_QuietOrbax())
    if FLAGS.distributed:
        # On CPU, cross-process collectives need JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo.
        jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                                   FLAGS.process_id)
    from resnext_jax import train  # after initialize(): the backend starts here
    from resnext_jax.ops import huge_pages_hint

    logging.info("JAX %s on %d %s device(s), process %d of %d", jax.__version__,
                 jax.device_count(), jax.default_backend(), jax.process_index(),
                 jax.process_count())
    if hint := huge_pages_hint():
        logging.info("%s", hint)
    try:
        if FLAGS.mode == "eval":
            result = train.evaluate(FLAGS.config, FLAGS.workdir, FLAGS.step)
        else:
            result = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except (train.NonFiniteLossError, train.CheckpointError, train.WorkdirBusyError,
            ValueError, FileNotFoundError) as e:
        logging.error("%s", e)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    if jax.process_index() == 0:
        print(json.dumps(result))


def _resolve_config(argv: list[str]) -> list[str]:
    """``--config=digits``: a packaged config by name, from any working directory."""
    from resnext_jax.train.config import config_path

    out = list(argv)
    for i, arg in enumerate(out):
        if arg.startswith("--config="):
            out[i] = "--config=" + config_path(arg.split("=", 1)[1])
        elif arg == "--config" and i + 1 < len(out):
            out[i + 1] = config_path(out[i + 1])
    return out


def parse_flags(argv: list[str]) -> list[str]:
    """absl parsing, with a one-line message for a config key that does not exist."""
    try:
        return FLAGS(_resolve_config(argv))
    except FileNotFoundError as e:
        sys.exit(f"error: {e}")
    except (AttributeError, KeyError) as e:  # raised by the locked ConfigDict
        text = str(e.args[0] if e.args else e).replace("\\n", " ")  # nested reprs
        key = " ".join(text.replace("\\", "").replace("'", "").split())
        sys.exit(f"error: unknown config key {key}; every key and its default is in "
                 "resnext_jax/train/config.py (and configs/NAME.py)")
    except flags.Error as e:
        sys.exit(f"error: {e}\nUsage: python -m resnext_jax.main --config=configs/NAME.py "
                 "--workdir=DIR [--config.KEY=VALUE ...]")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
