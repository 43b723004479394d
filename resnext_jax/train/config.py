"""Every training option with its default; ``configs/*.py`` start from ``default_config()``.

The config is locked, in Python as on the command line: setting a key that is not here (a
typo) is a one-line error naming the closest key, not a silent new option. :func:`check_config`
refuses, in one line too, a key set for a run that would ignore it (another optimizer's).
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import os

import ml_collections
from ml_collections.config_dict import placeholder

from resnext_jax.errors import UsageError

OPTIMIZERS = ("sgd", "adamw", "lamb", "lars")
SCHEDULES = ("cosine", "step", "constant")


class Config(ml_collections.ConfigDict):
    """A ``ConfigDict`` whose locked form answers an unknown key in one line."""

    def __setitem__(self, key: str, value) -> None:
        if self.is_locked and key not in self:
            raise AttributeError(unknown_key(key, list(self.keys())))
        super().__setitem__(key, value)


def unknown_key(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return (f"unknown config key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
            + "; every key and its default is in resnext_jax/train/config.py")


def default_config() -> Config:
    c = Config()
    c.seed = 0
    c.batch_size = 256  # global, over all devices and processes
    c.eval_batch_size = 256
    c.num_epochs = 90.0
    c.num_train_steps = -1  # > 0 overrides num_epochs
    c.label_smoothing = 0.0
    c.ema_decay = 0.0  # > 0 keeps an EMA of weights and BatchNorm statistics, evaluated too
    c.ema_warmup = False  # timm's ModelEmaV3 warm-up: decay min(ema_decay, 1 - (1+n)^-2/3)
    c.grad_accum_steps = 1  # micro-batches per step when the batch does not fit
    c.log_every_steps = 100
    c.eval_every_epochs = 1.0  # 0: only at the end

    # A registered model name (resnext_jax.list_models()) and the ResNet fields a run may
    # set; None keeps the zoo entry's value. A new architecture is a new registered name.
    c.model = Config()
    c.model.name = "resnext50_32x4d"
    c.model.pretrained = placeholder(str)  # anything resnext_jax.load reads (eval, fine-tune)
    c.model.num_classes = placeholder(int)  # None: the dataset's (a new head if pretrained)
    # Compute dtype; parameters stay float32. "auto": float32 on the CPU (XLA:CPU's bfloat16 is
    # slower there), bfloat16 on GPU / TPU (resnext_jax.ops.fastest_dtype).
    c.model.dtype = "auto"
    c.model.drop_rate = placeholder(float)
    c.model.drop_path_rate = placeholder(float)
    c.model.lowering = placeholder(str)  # resnext_jax.ops.resolve; None: "auto"
    c.model.remat = placeholder(bool)
    c.model.train_from = "stem"  # fine-tuning: earlier parts frozen (BatchNorm in eval mode)

    c.data = Config()
    c.data.name = "imagenet2012"  # a TFDS name or a folder of class subfolders
    c.data.data_dir = placeholder(str)  # TFDS data dir (default ~/tensorflow_datasets)
    c.data.manual_dir = placeholder(str)  # where ImageNet's tar files are, to build on first use
    c.data.train_split = "train"
    c.data.eval_split = "validation"
    c.data.image_size = 224  # the training crop
    c.data.channels = 3
    c.data.train_preprocess = "inception_crop"  # or "pad_crop" (CIFAR)
    c.data.pad = 4
    c.data.flip = True
    # "ta_wide" (torchvision's TrivialAugmentWide) or a timm RandAugment string such as
    # "rand-m7-mstd0.5-inc1"; on the host, after crop and flip (resnext_jax/data/augment.py).
    c.data.auto_augment = ""
    c.data.random_erase = 0.0  # probability of timm's random erasing per image
    c.data.random_erase_count = 1  # at most this many boxes (timm's --recount)
    c.data.random_erase_mode = "pixel"  # noise per pixel; "rand" per channel; "const" zeros
    c.data.repeats = 1  # repeated augmentation: copies of each image per batch (--ra-reps)
    # The eval transform (resnext_jax.Transform). None: the pretrained weights' own when
    # model.pretrained is set, else ImageNet's (crop 0.875, bilinear, ImageNet mean / std).
    c.data.eval_size = placeholder(int)  # None: image_size
    c.data.crop_pct = placeholder(float)
    c.data.interpolation = placeholder(str)  # "bilinear" or "bicubic"
    c.data.mean = placeholder(tuple)  # per channel, 0-1 scale
    c.data.std = placeholder(tuple)
    c.data.shuffle_buffer = 16_384
    c.data.cache = False  # keep the encoded split in memory (small datasets)
    c.data.prefetch = 2
    c.data.num_shards = 0  # 0: one per process. Same value => same global batches anywhere
    c.data.bad_images = "skip"  # unreadable images in a folder: "skip" (counted) or "fail"

    # Mixup / CutMix on the device, timm's semantics (resnext_jax/train/steps.py, mix); on when an
    # alpha is > 0. Needs an even number of rows per device.
    c.mixing = Config()
    c.mixing.mixup_alpha = 0.0
    c.mixing.cutmix_alpha = 0.0
    c.mixing.prob = 1.0  # of mixing a batch at all
    c.mixing.switch_prob = 0.5  # of CutMix rather than Mixup when both alphas are > 0

    c.optimizer = Config()
    c.optimizer.name = "sgd"  # "sgd", "adamw", "lamb" or "lars"
    c.optimizer.base_lr = 0.1  # per 256 images
    c.optimizer.scale_by_batch = True  # lr = base_lr * batch_size / 256
    c.optimizer.momentum = 0.9  # "sgd", "lars"
    c.optimizer.nesterov = False
    c.optimizer.b1 = 0.9  # "adamw", "lamb"
    c.optimizer.b2 = 0.999  # "adamw", "lamb"
    c.optimizer.weight_decay = 1e-4  # never on BatchNorm parameters or biases
    c.optimizer.grad_clip_norm = 0.0
    c.optimizer.trust_coefficient = 0.001  # "lars"
    # Per-part learning-rate multipliers (fine-tuning: e.g. 0.1 for the stem and layer1).
    c.optimizer.lr_multipliers = Config(
        {part: 1.0 for part in ("stem", "layer1", "layer2", "layer3", "layer4", "fc")})
    c.optimizer.schedule = "cosine"  # "cosine", "step" or "constant", after the warmup
    c.optimizer.warmup_epochs = 5.0
    c.optimizer.decay_epochs = (30, 60, 80)  # "step": multiply by decay_factor at each
    c.optimizer.decay_factor = 0.1

    c.checkpoint = Config()
    c.checkpoint.every_steps = 1000
    c.checkpoint.keep = 3  # the last K, plus the best by best_metric
    c.checkpoint.best_metric = "eval_top1"  # "" keeps only the last K
    c.checkpoint.best_mode = "max"
    c.checkpoint.async_save = True
    c.lock()
    return c


# Keys that some settings of another key ignore: (key, the deciding key, the settings that
# ignore it, why, the fix). Inherited defaults pass: only a value changed from the default is
# a request the run would silently drop.
_IGNORED = (
    ("optimizer.momentum", "optimizer.name", ("adamw", "lamb"), "it uses b1/b2",
     "use name='sgd' or 'lars'"),
    ("optimizer.b1", "optimizer.name", ("sgd", "lars"), "it uses momentum",
     "use name='adamw' or 'lamb'"),
    ("optimizer.b2", "optimizer.name", ("sgd", "lars"), "it uses momentum",
     "use name='adamw' or 'lamb'"),
    ("optimizer.trust_coefficient", "optimizer.name", ("sgd", "adamw", "lamb"),
     "only lars has a trust ratio", "use name='lars'"),
    ("optimizer.decay_epochs", "optimizer.schedule", ("cosine", "constant"),
     "only the step schedule decays at epochs", "use schedule='step'"),
    ("optimizer.decay_factor", "optimizer.schedule", ("cosine", "constant"),
     "only the step schedule decays at epochs", "use schedule='step'"),
)


def check_config(config: ml_collections.ConfigDict) -> None:
    """A UsageError, one line, for an unknown optimizer or schedule, or for a key set away from
    its default where the run ignores it: another optimizer's knob, a step-schedule knob under
    another schedule."""
    for key, choices in (("optimizer.name", OPTIMIZERS), ("optimizer.schedule", SCHEDULES)):
        if config[key] not in choices:
            raise UsageError(f"{key}={config[key]!r} is unknown; choose one of "
                             f"{', '.join(choices)}")
    defaults = default_config()
    for key, switch, ignored_by, why, fix in _IGNORED:
        if config[switch] in ignored_by and config[key] != defaults[key]:
            raise UsageError(f"{key}={config[key]!r} does not apply to "
                             f"{switch}={config[switch]!r} ({why}); remove it or {fix}")


def config_from_json(text: str, source: str = "config.json") -> Config:
    """The config a run wrote to its workdir's ``config.json``, on top of the defaults
    (JSON lists become tuples). A file that is not such a config is one UsageError line."""
    try:
        values = json.loads(text)
    except ValueError as err:
        raise UsageError(f"{source} is not JSON ({err})") from None
    if not isinstance(values, dict):
        raise UsageError(f"{source} holds a {type(values).__name__}, not a config")
    config = default_config()
    try:
        _update(config, values, "")
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise UsageError(f"{source}: {str(err).splitlines()[0][:300]}") from None
    return config


def _update(config: ml_collections.ConfigDict, values: dict, prefix: str) -> None:
    for key, value in values.items():
        if key not in config:
            raise KeyError(f"unknown key {prefix}{key}")
        section = isinstance(config[key], ml_collections.ConfigDict)
        if isinstance(value, dict) != section:
            raise TypeError(f"{prefix}{key} must {'' if section else 'not '}be an object")
        if isinstance(value, dict):
            _update(config[key], value, f"{prefix}{key}.")
        else:
            config[key] = tuple(value) if isinstance(value, list) else value


def config_path(name: str) -> str:
    """The file of a config: a path to one, or a name such as ``digits`` (``digits.py``)
    among the configs installed with the package (the repository's ``configs/``)."""
    if os.path.isfile(name):
        return name
    stem = os.path.basename(name).removesuffix(".py")
    folder = config_folder()
    candidate = os.path.join(folder, stem + ".py")
    if stem == name.removesuffix(".py").removeprefix("configs/") and os.path.isfile(candidate):
        return candidate
    known = ", ".join(list_configs())
    raise UsageError(f"no config {name!r}: give a config file or one of {known}")


def config_folder() -> str:
    """Where the packaged configs are: ``resnext_jax.configs`` when installed (the
    repository's ``configs/`` folder), else that folder beside the package."""
    try:
        from importlib.resources import files

        return str(files("resnext_jax.configs"))
    except ModuleNotFoundError:
        return os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
            os.path.abspath(__file__)))), "configs")


def list_configs() -> list[str]:
    folder = config_folder()
    return sorted(f.removesuffix(".py") for f in os.listdir(folder)
                  if f.endswith(".py") and not f.startswith("_")) if os.path.isdir(folder) else []


def get_config(name: str) -> ml_collections.ConfigDict:
    """``get_config()`` of a config file or packaged config name (see :func:`config_path`)."""
    spec = importlib.util.spec_from_file_location("resnext_jax_config", config_path(name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()
