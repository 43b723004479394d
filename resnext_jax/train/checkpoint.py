"""orbax checkpoints: async saves, keep the last K plus the best, resume with fallback.

Orbax writes each step into a temporary directory and renames it when complete, so a crash,
SIGKILL or full disk mid-save never touches checkpoints already written. Each checkpoint
holds the train state (item ``state``) and a sha256 of its arrays (item ``digest``),
computed before the save and checked after every restore, so a flipped bit is found instead
of resumed. Only positive evidence of damage (a digest that does not match, a file of the
checkpoint missing, truncated or undecodable) sets a checkpoint aside, as ``corrupt_<step>``,
and falls back to the previous one; anything else that stops a restore (permissions, I/O
errors, memory, a bug) stops the run with the error and touches nothing. A read-only
checkpointer (evaluation) never renames: it skips a damaged checkpoint and says so.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from resnext_jax.digest import tree_digest
from resnext_jax.weights.errors import tree_differences
from resnext_jax.workdir import DIGEST, STATE, STATE_SHA256, WEIGHTS_SHA256, is_remote

# What TensorStore says in its errors about a damaged file (status codes, decoder messages),
# and what says nothing about the file (the storage, the network or the machine).
_DAMAGE_CODES = ("DATA_LOSS", "OUT_OF_RANGE", "NOT_FOUND", "FAILED_PRECONDITION",
                 "Error decoding", "corruption detected")
_TRANSIENT_CODES = ("PERMISSION_DENIED", "UNAVAILABLE", "DEADLINE_EXCEEDED",
                    "RESOURCE_EXHAUSTED", "ABORTED", "CANCELLED", "UNAUTHENTICATED")


def weights_of(state: Any) -> dict[str, Any]:
    """The weights a load of the workdir returns: the moving average when the run keeps one,
    else the parameters and BatchNorm statistics."""
    return getattr(state, "ema", None) or {"params": state.params,
                                           "batch_stats": getattr(state, "batch_stats", {})}


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; what is on disk was left as it was."""


class ConfigMismatchError(ValueError):
    """The workdir's checkpoints were written for another model."""


class DamagedCheckpointError(ValueError):
    """A checkpoint whose arrays do not match the digest saved with them."""


def is_damage(error: BaseException) -> bool:
    """Whether ``error``, raised reading a finished checkpoint, shows that its files are
    damaged (rather than unreadable for now, or a bug)."""
    chain, seen = [], error
    while seen is not None and len(chain) < 10:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    text = " ".join(str(e) for e in chain)
    if any(isinstance(e, MemoryError | PermissionError) or (
            isinstance(e, OSError) and not isinstance(e, FileNotFoundError)) for e in chain):
        return False
    if any(code in text for code in _TRANSIENT_CODES):
        return False
    return any(isinstance(e, DamagedCheckpointError | json.JSONDecodeError | UnicodeDecodeError
                          | FileNotFoundError | KeyError | NotImplementedError)
               for e in chain) or any(code in text for code in _DAMAGE_CODES)


class Checkpointer:
    def __init__(self, directory: str, *, keep: int, best_metric: str | None = None,
                 best_mode: str = "max", async_save: bool = True,
                 read_only: bool = False) -> None:
        self.directory = directory if is_remote(directory) else os.path.abspath(directory)
        self.read_only = read_only
        policies: list[pp.PreservationPolicy] = [pp.LatestN(keep)]
        if best_metric:
            policies.append(pp.BestN(get_metric_fn=lambda m: m[best_metric],
                                     reverse=best_mode == "min", n=1,
                                     keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=pp.AnyPreservationPolicy(policies),
            enable_async_checkpointing=async_save, cleanup_tmp_directories=not read_only,
            create=not read_only, read_only=read_only)
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        self._pending: int | None = None  # the step of the save in flight

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, metrics: dict[str, float] | None = None) -> None:
        """Start saving ``state`` as ``step`` (async); raises :class:`CheckpointError`, also
        for a previous async save that failed."""
        if step in self.manager.all_steps():
            return
        self.wait()
        self._pending = step
        digests = {STATE_SHA256: tree_digest(state)}
        if hasattr(state, "params"):  # a TrainState: what rx.load(workdir) checks
            digests[WEIGHTS_SHA256] = tree_digest(weights_of(state))
        args = ocp.args.Composite(**{STATE: ocp.args.StandardSave(state),
                                     DIGEST: ocp.args.JsonSave(digests)})
        try:
            self.manager.save(step, args=args, metrics=metrics, force=True)
        except (OSError, ValueError, RuntimeError) as e:
            raise self._error(step, e) from e

    def wait(self) -> None:
        """Block until the last save is on disk."""
        try:
            self.manager.wait_until_finished()
        except (OSError, ValueError, RuntimeError) as e:
            raise self._error(self._pending, e) from e

    def _error(self, step: int | None, e: Exception) -> CheckpointError:
        return CheckpointError(
            f"could not write the checkpoint of step {step} to {self.directory}: {e}. If the "
            f"disk is full, free space and rerun the same command: it resumes from the last "
            f"complete checkpoint (kept: steps {self.steps() or 'none'})")

    def restore(self, step: int, abstract_state: Any) -> Any:
        """Checkpoint ``step``, its digest checked."""
        if step not in self.manager.all_steps():
            raise FileNotFoundError(f"no checkpoint of step {step} in {self.directory}; "
                                    f"found steps {self.steps()}")
        self._check_same_model(step, abstract_state)
        restored = self.manager.restore(step, args=ocp.args.Composite(**{
            STATE: ocp.args.StandardRestore(abstract_state), DIGEST: ocp.args.JsonRestore()}))
        state = jax.block_until_ready(restored[STATE])
        if tree_digest(state) != restored[DIGEST][STATE_SHA256]:
            raise DamagedCheckpointError(f"the arrays of checkpoint {step} do not match the "
                                         "digest saved with them")
        return state

    def restore_latest(self, abstract_state: Any) -> tuple[Any, int] | None:
        """The newest readable checkpoint as ``(state, step)``, or None when there is none.
        A damaged one is set aside (or, read-only, skipped); any other failure stops."""
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                return self.restore(step, abstract_state), step
            except ConfigMismatchError:
                raise
            except Exception as e:  # noqa: BLE001 - sorted into damage and the rest below
                if not is_damage(e):
                    raise CheckpointError(
                        f"could not read the checkpoint of step {step} in {self.directory} "
                        f"({type(e).__name__}: {str(e)[:300]}); nothing was changed. Fix the "
                        "cause (permissions, storage, memory) and rerun; if the checkpoint "
                        "is damaged, move it out of the folder") from e
                self._set_aside(step, e)
        return None

    def _check_same_model(self, step: int, abstract_state: Any) -> None:
        """A checkpoint of another architecture, or of another training set-up (EMA on / off,
        another optimizer), is not corrupt: stop instead of falling back."""
        if not dataclasses.is_dataclass(abstract_state) or not hasattr(abstract_state, "params"):
            return
        path = os.path.join(self.directory, str(step), STATE)
        try:
            saved = ocp.PyTreeCheckpointer().metadata(path).item_metadata.tree
        except Exception:  # noqa: BLE001 - unreadable metadata: the restore will say why
            return
        if not isinstance(saved, dict) or not isinstance(saved.get("params"), dict):
            return
        problems = tree_differences(abstract_state.params, saved["params"])
        if problems:
            raise ConfigMismatchError(
                f"the checkpoint of step {step} in {self.directory} holds a different model "
                f"(parameters differ: {'; '.join(problems)}); use a new --workdir for a "
                "new config, or the config that wrote it")
        problems = _state_differences(abstract_state, saved)
        if problems:
            raise ConfigMismatchError(
                f"the checkpoint of step {step} in {self.directory} holds another training "
                f"state than this config makes ({'; '.join(problems)}): EMA, the optimizer "
                "or its settings changed since it was written. Rerun with the config that "
                "wrote it (config.json in the workdir), or use a new --workdir")

    def _set_aside(self, step: int, error: Exception) -> None:
        older = [s for s in self.manager.all_steps() if s < step]
        fallback = f"falling back to step {max(older)}" if older else "no older one"
        if self.read_only:
            logging.warning("checkpoint of step %d in %s is damaged (%s: %s); left as it is, "
                            "%s", step, self.directory, type(error).__name__,
                            str(error)[:300], fallback)
            return
        logging.warning("checkpoint of step %d in %s is damaged (%s: %s); moved aside, %s",
                        step, self.directory, type(error).__name__, str(error)[:300], fallback)
        # Object stores cannot rename a directory: there the step stays, newer saves pass it.
        if jax.process_index() == 0 and not is_remote(self.directory):
            path, target = os.path.join(self.directory, str(step)), None
            for n in range(1000):
                target = os.path.join(self.directory,
                                      f"corrupt_{step}" + (f".{n}" if n else ""))
                if not os.path.exists(target):
                    break
            os.replace(path, target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"set aside checkpoint {step}")
        self.manager.reload()

    def close(self) -> None:
        self.manager.close()


def _state_differences(abstract_state: Any, saved: dict) -> list[str]:
    """Which fields of a train state, besides ``params`` (compared path by path before), the
    saved tree holds other arrays for: their shapes compared as multisets, since orbax lists
    a tuple's entries in its own order."""
    def shapes(tree: Any) -> list[tuple[int, ...]]:
        return sorted(tuple(getattr(leaf, "shape", None) or ()) for leaf in jax.tree.leaves(tree))

    fields = {f.name: getattr(abstract_state, f.name)
              for f in dataclasses.fields(abstract_state) if f.name != "params"}
    saved = {name: tree for name, tree in saved.items() if name != "params"}
    problems = [f"{name}: not in the checkpoint" for name in sorted(fields.keys() - saved.keys())]
    problems += [f"{name}: in the checkpoint, not in this state"
                 for name in sorted(saved.keys() - fields.keys())]
    for name in sorted(fields.keys() & saved.keys()):
        want, got = shapes(fields[name]), shapes(saved[name])
        if want != got:
            problems.append(f"{name}: {len(got)} arrays in the checkpoint, {len(want)} expected")
    return problems
