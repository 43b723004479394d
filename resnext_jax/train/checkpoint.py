"""orbax checkpoints: async saves, keep the last K plus the best, resume with fallback.

Orbax writes each step into a temporary directory and renames it when complete, so a crash,
SIGKILL or full disk mid-save never touches checkpoints already written. A finished but
unreadable checkpoint (say a damaged file) is moved aside as ``corrupt_<step>`` and the
previous one is restored instead.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from resnext_jax.train.files import is_remote
from resnext_jax.weights.errors import tree_differences


class CheckpointError(RuntimeError):
    """A checkpoint could not be written; earlier checkpoints are intact."""


class ConfigMismatchError(ValueError):
    """The workdir's checkpoints were written for another model."""


class Checkpointer:
    def __init__(self, directory: str, *, keep: int, best_metric: str | None = None,
                 best_mode: str = "max", async_save: bool = True) -> None:
        self.directory = directory if is_remote(directory) else os.path.abspath(directory)
        policies: list[pp.PreservationPolicy] = [pp.LatestN(keep)]
        if best_metric:
            policies.append(pp.BestN(get_metric_fn=lambda m: m[best_metric],
                                     reverse=best_mode == "min", n=1,
                                     keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=pp.AnyPreservationPolicy(policies),
            enable_async_checkpointing=async_save, cleanup_tmp_directories=True,
            create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        self._pending: int | None = None  # the step of the save in flight

    def save(self, step: int, state: Any, metrics: dict[str, float] | None = None) -> None:
        """Start saving ``state`` as ``step`` (async); raises :class:`CheckpointError`, also
        for a previous async save that failed."""
        if step in self.manager.all_steps():
            return
        self.wait()
        self._pending = step
        try:
            self.manager.save(step, args=ocp.args.StandardSave(state), metrics=metrics,
                              force=True)
        except (OSError, ValueError, RuntimeError) as e:
            raise self._error(step, e) from e

    def wait(self) -> None:
        """Block until the last save is on disk."""
        try:
            self.manager.wait_until_finished()
        except (OSError, ValueError, RuntimeError) as e:
            raise self._error(self._pending, e) from e

    def _error(self, step: int | None, e: Exception) -> CheckpointError:
        kept = sorted(self.manager.all_steps())
        return CheckpointError(
            f"could not write the checkpoint of step {step} to {self.directory}: {e}. If the "
            f"disk is full, free space and rerun the same command: it resumes from the last "
            f"complete checkpoint (kept: steps {kept or 'none'})")

    def restore_latest(self, abstract_state: Any) -> tuple[Any, int] | None:
        """The newest readable checkpoint as ``(state, step)``, or None when there is none."""
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                self._check_same_model(step, abstract_state)
                state = self.manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
                jax.block_until_ready(state)
                return state, step
            except ConfigMismatchError:
                raise
            except Exception as e:  # noqa: BLE001 - any other failure to read means: fall back
                self._set_aside(step, e)
        return None

    def _check_same_model(self, step: int, abstract_state: Any) -> None:
        """A checkpoint of another architecture is not corrupt: stop instead of falling back."""
        if not hasattr(abstract_state, "params"):
            return
        path = os.path.join(self.directory, str(step), "default")
        saved = ocp.PyTreeCheckpointer().metadata(path).item_metadata.tree["params"]
        problems = tree_differences(abstract_state.params, saved)
        if problems:
            raise ConfigMismatchError(
                f"the checkpoint of step {step} in {self.directory} holds a different model "
                f"(parameters differ: {'; '.join(problems)}); use a new --workdir for a "
                "new config, or the config that wrote it")

    def restore(self, step: int, abstract_state: Any) -> Any:
        if step not in self.manager.all_steps():
            raise FileNotFoundError(f"no checkpoint of step {step} in {self.directory}; "
                                    f"found steps {sorted(self.manager.all_steps())}")
        return self.manager.restore(step, args=ocp.args.StandardRestore(abstract_state))

    def _set_aside(self, step: int, error: Exception) -> None:
        older = [s for s in self.manager.all_steps() if s < step]
        logging.warning("checkpoint of step %d in %s is unreadable (%s: %s); %s", step,
                        self.directory, type(error).__name__, str(error)[:300],
                        f"falling back to step {max(older)}" if older else "no older one")
        # Object stores cannot rename a directory: there the step stays, newer saves pass it.
        if jax.process_index() == 0 and not is_remote(self.directory):
            path = os.path.join(self.directory, str(step))
            os.replace(path, os.path.join(self.directory, f"corrupt_{step}"))
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"set aside checkpoint {step}")
        self.manager.reload()

    def close(self) -> None:
        self.manager.close()
