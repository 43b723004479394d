"""Registry behaviour, published parameter counts and MAC counts of the zoo."""

import jax
import jax.numpy as jnp
import pytest

import resnext_jax as rx
from resnext_jax import zoo

# Published parameter counts (1000 classes unless noted). Sources: timm 1.0.31 and
# torchvision 0.29 (``sum(p.numel() for p in model.parameters())``; most are listed in
# shared/reference.md, the rest were printed by timm 1.0.31 itself), and the ResNeXt paper's
# CIFAR layout (10 classes; Xie et al. 2017 Tab. 7 rounds them to 34.4 M and 68.1 M).
PUBLISHED = {
    "resnet18": 11_689_512,  # torchvision / timm
    "resnet34": 21_797_672,  # torchvision / timm
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "seresnet50": 28_088_024,
    "resnext50_32x4d": 25_028_904,
    "resnext50d_32x4d": 25_048_136,
    "resnext101_32x4d": 44_177_704,
    "resnext101_32x8d": 88_791_336,
    "resnext101_32x16d": 194_026_792,  # timm
    "resnext101_64x4d": 83_455_272,
    "seresnext26d_32x4d": 16_809_512,
    "seresnext26t_32x4d": 16_806_976,
    "seresnext50_32x4d": 27_559_896,
    "seresnext101_32x4d": 48_955_416,  # timm
    "seresnext101_32x8d": 93_569_048,
    "seresnext101d_32x8d": 93_588_280,
    "legacy_seresnext26_32x4d": 16_790_280,  # timm
    "legacy_seresnext50_32x4d": 27_559_896,
    "legacy_seresnext101_32x4d": 48_955_416,  # timm
    "legacy_senet154": 115_088_984,  # timm
    "resnext29_8x64d": 34_426_698,  # CIFAR-10
    "resnext29_16x64d": 68_155_210,  # CIFAR-10
}
# No published twin: ResNeXt-152 32x4d is the paper's depth in the timm layout; its count is
# ResNeXt-101 32x4d's plus 4 + 13 more stage-2 / stage-3 blocks, checked arithmetically below.
UNPUBLISHED = {"resnext152_32x4d"}


def _params(name, **overrides):
    model = rx.create_model(name, **overrides)
    size = 32 if model.stem == "cifar" else 224
    x = jax.ShapeDtypeStruct((1, size, size, model.in_chans), jnp.float32)
    return rx.count_params(jax.eval_shape(model.init, jax.random.key(0), x))


def test_every_full_size_model_has_a_published_count():
    full_size = {n for n in rx.list_models()
                 if zoo.get_entry(n).source not in (zoo.TINY, zoo.DIGITS)}
    assert full_size == set(PUBLISHED) | UNPUBLISHED


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count_equals_published(name):
    assert _params(name) == PUBLISHED[name]


def test_resnext152_count_follows_from_resnext101():
    # Stage 2 grows from 4 to 8 blocks, stage 3 from 23 to 36; each extra block is identical.
    # (planes 128: width 256, out 512; planes 256: width 512, out 1024.)
    def block(width, out):
        return out * width + 9 * width * (width // 32) + width * out + 2 * (2 * width + out)
    extra = 4 * block(256, 512) + 13 * block(512, 1024)
    assert _params("resnext152_32x4d") == PUBLISHED["resnext101_32x4d"] + extra


def test_headless_and_other_class_counts():
    assert _params("resnext50_32x4d", num_classes=0) == 25_028_904 - (2048 * 1000 + 1000)
    assert _params("resnext50_32x4d", num_classes=10) == 25_028_904 - 2048 * 990 - 990


def test_list_models_patterns():
    assert rx.list_models("seresnext50*") == ["seresnext50_32x4d"]
    assert set(rx.list_models("legacy_*")) == {
        "legacy_senet154", "legacy_seresnext26_32x4d", "legacy_seresnext50_32x4d",
        "legacy_seresnext101_32x4d"}
    assert rx.list_models("nothing*") == []


def test_unknown_model_suggests_close_names():
    with pytest.raises(ValueError, match="did you mean 'resnext50_32x4d'"):
        rx.create_model("resnext50_32x4")


def test_unknown_override_is_named():
    with pytest.raises(TypeError, match="'num_class' \\(did you mean 'num_classes'\\?\\)"):
        rx.create_model("resnext50_32x4d", num_class=10)


def test_register_rejects_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        rx.register("resnet50", "test", layers=(1, 1, 1, 1))


def test_overrides_replace_fields():
    model = rx.create_model("resnext50_32x4d", num_classes=7, global_pool="max",
                            drop_path_rate=0.1)
    assert (model.num_classes, model.global_pool, model.drop_path_rate) == (7, "max", 0.1)
    assert model.cardinality == 32 and model.base_width == 4


@pytest.mark.parametrize("name,timm_gmacs,tolerance", [
    ("resnext50_32x4d", 4.26, 0.01), ("seresnext50_32x4d", 4.26, 0.01),
    # XLA skips products with padding; dense 3x3 convs make that 3.4 % for ResNet-50.
    ("resnet50", 4.11, 0.04)])
def test_mac_count_matches_timm(name, timm_gmacs, tolerance):
    macs = rx.count_macs(rx.create_model(name)) / 1e9
    assert macs == pytest.approx(timm_gmacs, rel=tolerance)
    assert macs < timm_gmacs  # the padding products XLA skips


def test_the_readmes_counts_are_the_zoos():
    """The counts the text states, read from it and compared with the registry: the README's
    number of architectures and its models table, the user guide's table of parameter counts,
    and "147 k parameters" for the main job's model (README and docs/training.md)."""
    import os
    import re

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def read(page):
        with open(os.path.join(root, page), encoding="utf-8") as f:
            return f.read()

    readme, guide, training = read("README.md"), read("docs/user-guide.md"), \
        read("docs/training.md")
    full_size = {n for n in rx.list_models()
                 if zoo.get_entry(n).source not in (zoo.TINY, zoo.DIGITS)}
    stated = re.search(r"lists (\d+) architectures", readme)
    assert stated and int(stated.group(1)) == len(full_size)
    models = readme.split("\n## Models\n")[1].split("\n## ")[0]
    rows = [line.split("|")[2] for line in models.splitlines() if line.startswith("| ")][1:]
    assert sorted(n for row in rows for n in re.findall(r"`(\w+)`", row)) == sorted(full_size)
    table = {n: int(c.replace(",", "")) for n, c in
             re.findall(r"^\| `(\w+)` \| ([\d,]+) \|", guide, re.M)}
    assert table == {n: PUBLISHED.get(n) or _params(n) for n in full_size}
    digits = round(_params("digits_seresnext") / 1000)
    for text in (readme, training):
        assert re.findall(r"(\d+) k parameters", text) == [str(digits)]
