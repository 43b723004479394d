"""``resnext_jax.load``: a model and its weights from any source, in one shape.

Sources: a model name (its default weight set), a weight-set name
(``"seresnext50_32x4d.racm_in1k"``), a Hugging Face Hub id (``"timm/..."``), a PyTorch
checkpoint (``.safetensors``; ``.pth`` / ``.bin`` need torch), a file written by
:meth:`Pretrained.save`, or a training workdir. The architecture comes from the source when
it says (weight sets, our files, workdirs, a checkpoint whose tensors fit exactly one zoo
model) or from ``model``; loading is strict, so anything that does not fit raises
:class:`~resnext_jax.weights.WeightsError` naming it, and nothing is loaded.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import warnings
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import unflatten_dict

from resnext_jax import workdir, zoo
from resnext_jax.digest import tree_digest
from resnext_jax.errors import UsageError
from resnext_jax.model import ResNet
from resnext_jax.transforms import Transform
from resnext_jax.weights import native
from resnext_jax.weights.errors import WeightsError, WeightsFileError, tree_differences
from resnext_jax.weights.hub import is_hub_id, resolve_hub
from resnext_jax.weights.torch_files import (
    SAFETENSORS,
    TORCH_PICKLES,
    read_state_dict,
    write_safetensors,
)
from resnext_jax.weights.torch_names import (
    LoadReport,
    detect_layout,
    flax_shapes,
    flax_to_torch,
    matching_models,
    model_layout,
    strip_prefix,
    torch_to_flax,
)
from resnext_jax.zoo import PretrainedCfg

FOLDER_WEIGHTS = "model.msgpack"  # a folder written by save_pretrained (or a Hub copy)


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """A model and its variables, with where they came from and how inputs were made.

    ``model.apply(variables, images)`` runs it; ``cfg.transform`` is the preprocessing the
    weights were evaluated with; ``report`` says what was loaded and dropped.
    """

    model: ResNet
    variables: dict[str, Any]
    cfg: PretrainedCfg
    report: LoadReport

    @classmethod
    def from_variables(cls, model: ResNet, variables: Mapping[str, Any], *,
                       origin: str = "resnext_jax", transform: Transform | None = None
                       ) -> Pretrained:
        """``model``'s own ``variables`` (freshly initialised, fine-tuned in your code ...)
        as a :class:`Pretrained`, ready for ``save``, ``export_torch`` and
        ``save_pretrained``. Its config names the zoo architecture (when ``model`` is one)
        and ``origin``; it claims no published name or accuracy."""
        name = zoo_name(model) or "resnet"
        cfg = zoo.unpublished_cfg(name, origin, model.num_classes, transform)
        tree = {k: v for k, v in variables.items() if k in ("params", "batch_stats")}
        problems = tree_differences(unflatten_dict(flax_shapes(model)), tree)
        if problems:
            raise WeightsError(f"the variables do not fit the model: {'; '.join(problems)}")
        return cls(model.clone(pretrained_cfg=cfg), dict(tree), cfg,
                   LoadReport(origin, "resnext_jax (variables)",
                              loaded=len(jax.tree_util.tree_leaves(tree))))

    @property
    def transform(self) -> Transform:
        return self.cfg.transform

    def save(self, path: str | os.PathLike) -> None:
        """Our own file (variables, architecture, this config); ``resnext_jax.load(path)``
        reads it back."""
        native.write(path, self.variables, self.model.clone(pretrained_cfg=self.cfg),
                     model_name=self.cfg.model if self.cfg.model in zoo.list_models() else None)

    def export_torch(self, path: str | os.PathLike, layout: str | None = None) -> dict:
        """A PyTorch state dict in safetensors (``layout``: torchvision, timm or legacy;
        default the model's own) that the reference model loads with ``strict=True``."""
        layout = layout or model_layout(self.model)
        tensors = flax_to_torch(self.variables, self.model, layout=layout)
        meta = {"format": "pt", "layout": layout, "exported_by": "resnext_jax",
                "model": self.cfg.model}
        write_safetensors(path, tensors, meta)
        return tensors


def zoo_name(model: ResNet) -> str | None:
    """The registered name of ``model``'s architecture (any head), or None."""
    arch = native.architecture(model)
    for name in zoo.list_models():
        candidate = native.architecture(zoo.create_model(name, num_classes=model.num_classes))
        if candidate == arch:
            return name
    return None


def load(source: str | os.PathLike, model: str | ResNet | None = None, *,
         rng: jax.Array | None = None, cache_dir: str | os.PathLike | None = None,
         **overrides: Any) -> Pretrained:
    """Load ``source`` (see the module docstring) into a model.

    ``model``: a zoo name or a ``ResNet``, for checkpoints that do not say which model they
    hold; it must agree with sources that do. ``overrides``: ``ResNet`` fields, e.g.
    ``dtype`` (``"auto"``: :func:`resnext_jax.ops.fastest_dtype` for the platform compiled
    for); ``num_classes`` other than the source's keeps the backbone and initialises a new
    head from ``rng`` (with a warning), ``num_classes=0`` drops the head.
    """
    zoo.check_options(os.fspath(source), overrides)
    changed = sorted(set(overrides) & set(native.ARCH_FIELDS) - {"num_classes"})
    if changed:
        raise WeightsError(f"load cannot change architecture fields {changed}: the weights "
                           "fix them; build a new model with create_model to change them")
    if isinstance(model, ResNet):  # its head is the one asked for
        overrides = {"num_classes": model.num_classes, **overrides}
    path = os.fspath(source)
    if os.path.isdir(path):
        return _load_native(*_folder(path), model, overrides, rng)
    if os.path.isfile(path):
        return _load_file(path, model, None, overrides, rng)
    cfg = _weight_set(path, model)
    if cfg is not None:
        if cfg.hf_hub_id is None:
            raise WeightsFileError(f"weight set {cfg.name!r} has no Hugging Face Hub copy: "
                                   f"download {cfg.url} and load the file")
        file = resolve_hub(cfg.hf_hub_id, cache_dir)
        return _load_file(file, cfg.model, cfg, overrides, rng)
    if path.endswith(SAFETENSORS + TORCH_PICKLES + (native.SUFFIX,)) or _looks_local(path):
        raise WeightsFileError(f"no such file or folder: {path}")
    if is_hub_id(path):
        return _load_file(resolve_hub(path, cache_dir), model, None, overrides, rng)
    raise WeightsFileError(f"{path!r} is neither a file or folder, a model or weight-set name "
                           "(resnext_jax.list_pretrained()) nor a Hub id such as "
                           "'timm/seresnext50_32x4d.racm_in1k'")


def _weight_set(source: str, model: str | ResNet | None) -> PretrainedCfg | None:
    """The weight set a source names: a set, a model's default set, or a Hub id named
    after a set (``timm/seresnext50_32x4d.racm_in1k``)."""
    candidate = source.removeprefix("hf-hub:").split("/")[-1]
    if source in zoo.list_models() and source not in zoo.list_pretrained():
        try:
            cfg = zoo.get_pretrained_cfg(source)
        except UsageError:
            raise WeightsFileError(f"the zoo knows no weights for {source!r}; known sets: "
                                   f"{', '.join(zoo.list_pretrained())}") from None
    elif candidate in zoo.list_pretrained() and (candidate == source or is_hub_id(source)):
        cfg = zoo.get_pretrained_cfg(candidate)
    else:
        return None
    if isinstance(model, str) and model != cfg.model:
        raise WeightsError(f"weight set {cfg.name!r} is for model {cfg.model!r}, not {model!r}")
    return cfg


def _looks_local(path: str) -> bool:
    """``runs/best`` whose ``runs`` exists here is a mistyped path, not a Hub repo."""
    first = path.split("/")[0]
    return path.startswith((".", "/", "~")) or (first != path and os.path.isdir(first))


def _load_file(path: str, model: str | ResNet | None, cfg: PretrainedCfg | None,
               overrides: dict[str, Any], rng: jax.Array | None) -> Pretrained:
    if path.endswith(native.SUFFIX):
        return _load_native(path, *native.read(path), model, overrides, rng)
    return _load_torch(path, read_state_dict(path), model, cfg, overrides, rng)


def _folder(path: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """A folder from save_pretrained, a training workdir's final weights, else its newest
    checkpoint."""
    for name in (FOLDER_WEIGHTS, workdir.FINAL_WEIGHTS):
        if os.path.isfile(final := os.path.join(path, name)):
            return (final, *native.read(final))
    spec = os.path.join(path, workdir.MODEL)
    steps = sorted((int(os.path.basename(d)) for d in glob.glob(
        os.path.join(path, workdir.CHECKPOINTS, "*")) if os.path.basename(d).isdigit()),
        reverse=True)
    if not os.path.isfile(spec) or not steps:
        raise WeightsFileError(f"{path} is a folder without weights: neither "
                               f"{FOLDER_WEIGHTS} (save_pretrained), {workdir.FINAL_WEIGHTS} nor a "
                               f"training workdir's {workdir.MODEL} and {workdir.CHECKPOINTS}/")
    try:
        with open(spec, encoding="utf-8") as f:
            meta = json.load(f)
    except (UnicodeDecodeError, ValueError) as err:
        raise WeightsFileError(f"{spec} is not JSON ({err}); nothing was loaded") from None
    native.check_meta(meta, spec)
    checkpoint = os.path.join(path, workdir.CHECKPOINTS, str(steps[0]))
    return checkpoint, meta, _checkpoint_variables(checkpoint)


def _checkpoint_variables(directory: str) -> dict[str, Any]:
    """``params`` and ``batch_stats`` (the EMA weights when the run kept them) of an orbax
    checkpoint, as numpy arrays on the host."""
    try:
        import orbax.checkpoint as ocp
    except ImportError as err:
        raise WeightsFileError(f"reading the checkpoint {directory} needs orbax-checkpoint: "
                               "pip install 'resnext_jax[train]'") from err
    item = os.path.join(directory, workdir.STATE)
    checkpointer = ocp.PyTreeCheckpointer()
    try:
        tree = checkpointer.metadata(item).item_metadata.tree
        as_numpy = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                                          tree)
        state = checkpointer.restore(item, restore_args=as_numpy)
    except Exception as err:  # noqa: BLE001 - TensorStore's many errors on a damaged file
        raise WeightsFileError(f"{directory} cannot be read (damaged?): "
                               f"{str(err).splitlines()[0] if str(err) else err!r}") from err
    # Weights and BatchNorm statistics, averaged together, when the run kept an average.
    weights = state.get("ema") or {"params": state["params"],
                                   "batch_stats": state.get("batch_stats", {})}
    expected = _saved_digest(directory)
    if expected is None:
        warnings.warn(f"{directory} has no digest of its weights (written by an older "
                      "version): they are loaded unverified", stacklevel=4)
    elif tree_digest(weights) != expected:
        raise WeightsFileError(f"{directory} is damaged: its arrays do not match the digest "
                               "saved with them; nothing was loaded (an earlier checkpoint or "
                               f"{workdir.FINAL_WEIGHTS} may be intact)")
    return weights


def _saved_digest(directory: str) -> str | None:
    """The weights' sha256 that the trainer saved with checkpoint ``directory``."""
    path = os.path.join(directory, workdir.DIGEST, "metadata")
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
    except (OSError, ValueError) as err:
        raise WeightsFileError(f"{path} cannot be read ({err}); nothing was loaded") from None
    value = saved.get(workdir.WEIGHTS_SHA256) if isinstance(saved, dict) else None
    return value if isinstance(value, str) else None


def _new_head(model: ResNet, rng: jax.Array | None) -> dict[str, Any]:
    """Fresh classifier parameters, initialised as the model's own ``fc``."""
    dense = nn.Dense(model.num_classes, param_dtype=model.param_dtype)
    key = jax.random.key(0) if rng is None else rng
    return dict(dense.init(key, jnp.zeros((1, model.num_features), model.param_dtype))["params"])


def _head_plan(file_classes: int | None, overrides: dict[str, Any], source: str) -> tuple[
        int, bool]:
    """``(num_classes to build, whether to make a new head)``."""
    wanted = overrides.get("num_classes", file_classes or 0)
    if wanted in (0, file_classes):
        return wanted, False
    found = f"a {file_classes}-class head" if file_classes else "no classifier head"
    warnings.warn(f"{source} has {found}: the backbone is loaded and a new classifier head "
                  f"for {wanted} classes is initialised", stacklevel=3)
    return wanted, True


def _finish(model: ResNet, variables: dict[str, Any], cfg: PretrainedCfg, report: LoadReport,
            fresh_head: bool, rng: jax.Array | None) -> Pretrained:
    if fresh_head:
        variables["params"]["fc"] = _new_head(model, rng)
        report.notes.append(f"classifier: new head for {model.num_classes} classes")
    elif model.num_classes == 0:
        variables["params"].pop("fc", None)
    return Pretrained(model.clone(pretrained_cfg=cfg), variables, cfg, report)


def _load_native(path: str, meta: dict[str, Any], saved: dict[str, Any],
                 wanted: str | ResNet | None, overrides: dict[str, Any],
                 rng: jax.Array | None) -> Pretrained:
    file_name = meta.get("model_name")
    if isinstance(wanted, str) and file_name not in (None, wanted):
        raise WeightsError(f"{path} holds {file_name!r} weights, not {wanted!r}")
    params = saved.get("params", {}) if isinstance(saved, dict) else None
    if not isinstance(params, dict) or not isinstance(params.get("fc", {}), dict):
        raise WeightsFileError(f"{path}: its variables are not a tree of arrays (damaged?)")
    classes = np.shape(params["fc"].get("kernel"))[-1] if "fc" in params else None
    num_classes, fresh = _head_plan(classes, overrides, path)
    model = native.model_from_meta(meta, **{**overrides, "num_classes": num_classes})
    if wanted is not None:  # as strict as create_model: the file must be that architecture
        reference = zoo.create_model(wanted) if isinstance(wanted, str) else wanted
        native.check_architecture(meta, reference.clone(num_classes=classes or 0), path)
    expected = unflatten_dict(flax_shapes(model.clone(num_classes=classes or 0)))
    problems = tree_differences(expected, saved)
    if problems:
        raise WeightsError(f"{path} does not fit its own architecture (damaged?): "
                           + "; ".join(problems))
    variables = jax.tree_util.tree_map(jnp.asarray, saved)
    cfg = model.pretrained_cfg
    if cfg is None or zoo.is_published(cfg):
        # A file's claim to be a published set cannot be checked: only loading the set by
        # its name or Hub id attaches its name and accuracy. The transform it records is the
        # one in use.
        cfg = zoo.unpublished_cfg(file_name or os.path.basename(path), path, num_classes,
                                  cfg.transform if cfg else None)
    report = LoadReport(path, f"resnext_jax ({file_name or 'unnamed'})",
                        loaded=len(jax.tree_util.tree_leaves(saved)))
    return _finish(model, variables, cfg, report, fresh, rng)


def _load_torch(path: str, tensors: dict[str, np.ndarray], wanted: str | ResNet | None,
                cfg: PretrainedCfg | None, overrides: dict[str, Any],
                rng: jax.Array | None) -> Pretrained:
    wanted = wanted or _guess_model(path, tensors)
    prefix = strip_prefix(tensors)
    classes = next((int(tensors[prefix + k].shape[0]) for k in ("fc.weight",
                    "last_linear.weight") if prefix + k in tensors), None)
    num_classes, fresh = _head_plan(classes, overrides, path)
    kwargs = {**overrides, "num_classes": num_classes}
    model = (zoo.create_model(wanted, **kwargs) if isinstance(wanted, str)
             else wanted.clone(**kwargs))
    name = wanted if isinstance(wanted, str) else None
    variables, report = torch_to_flax(tensors, model, skip_head=fresh or num_classes == 0,
                                      source=path, model_name=name)
    # The published set's config only when the source was that set (by name or Hub id).
    cfg = cfg or zoo.unpublished_cfg(name or os.path.basename(path), path, num_classes)
    return _finish(model, variables, cfg, report, fresh, rng)


def _guess_model(path: str, tensors: Mapping[str, np.ndarray]) -> str:
    prefix = strip_prefix(tensors)
    stripped = {k[len(prefix):]: v for k, v in tensors.items()}
    found = matching_models(stripped, detect_layout(stripped))
    if len(found) == 1:
        return found[0]
    if found:
        raise WeightsError(f"{path} fits several zoo models ({', '.join(found)}): pass "
                           "model=NAME")
    raise WeightsError(f"no zoo model fits {path}: pass model=NAME "
                       "(resnext_jax.list_models()) or model=ResNet(...)")
