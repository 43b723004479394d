"""resnext_jax.viz and resnext_jax.se_statistics: the arrays behind the pictures, that each
figure draws them, and that the PNG written shows them."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import unfreeze
from PIL import Image

import resnext_jax as rx
from resnext_jax import se_statistics, viz

K, PER_CLASS, SIZE = 4, 12, 32
DPI = 120  # what viz writes PNGs at


def _png(path, fig):
    """The RGB pixels of the PNG at ``path``, checked to be ``fig``'s size at DPI."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        pixels = np.asarray(image.convert("RGB"))
    width, height = fig.get_size_inches() * DPI
    assert pixels.shape == (round(height), round(width), 3)
    return pixels


def _shows(pixels, rgb, tol=3):
    """Whether some pixel has colour ``rgb`` (0-255), within ``tol`` per channel."""
    return bool((np.abs(pixels.astype(int) - np.asarray(rgb)).max(-1) <= tol).any())


def _moments(gates, labels, k):
    onehot = np.eye(k)[labels]
    return onehot.T @ gates, onehot.T @ gates**2, onehot.sum(0)


def test_class_specificity_separates_class_blind_and_class_set_gates():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(K), 50)
    blind = rng.uniform(0.2, 0.8, (labels.size, 64))
    assert abs(se_statistics.class_specificity(*_moments(blind, labels, K))) < 0.02
    class_set = rng.uniform(0.1, 0.9, (K, 64))[labels] + rng.normal(0, 0.02, blind.shape)
    assert se_statistics.class_specificity(*_moments(class_set, labels, K)) > 0.95
    half = np.where(np.arange(64) < 32, class_set, blind)  # half the channels class-set
    assert 0.3 < se_statistics.class_specificity(*_moments(half, labels, K)) < 0.8
    constant = np.full_like(blind, 0.5)
    assert se_statistics.class_specificity(*_moments(constant, labels, K)) == 0.0
    with pytest.raises(ValueError, match="at least 2 classes"):
        se_statistics.class_specificity(*_moments(blind[:50], labels[:50], K))


@pytest.fixture(scope="module")
def se_model():
    # zero_init_last=False: with bn3's scale at 0 every gate would be input-independent.
    model = rx.create_model("tiny_seresnext", num_classes=K, zero_init_last=False)
    variables = unfreeze(jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3))))
    # layer2_0's gates made input-independent: fc2 kernel 0, bias b -> gate sigmoid(b).
    se = variables["params"]["layer2_0"]["se"]["fc2"]
    se["kernel"] = jnp.zeros_like(se["kernel"])
    se["bias"] = jnp.linspace(-2.0, 2.0, se["bias"].shape[0])
    return model, variables


def _batches(images, labels, batch):
    """Fixed-shape batches, the last one padded with label -1."""
    pad = -len(labels) % batch
    images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
    labels = np.concatenate([labels, -np.ones(pad, labels.dtype)])
    for i in range(0, len(labels), batch):
        yield images[i:i + batch], labels[i:i + batch]


def test_se_excitations_class_means_and_specificity(se_model):
    model, variables = se_model
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(K), PER_CLASS)
    # Class-set input: every image of class k is the same flat colour (plus tiny noise).
    levels = np.array([-1.5, -0.5, 0.5, 1.5], np.float32)
    noise = rng.normal(0, 0.01, (labels.size, SIZE, SIZE, 3))
    flat = (levels[labels][:, None, None, None] + noise).astype(np.float32)
    exc = se_statistics.se_excitations(model, variables, _batches(flat, labels, 20), K)
    assert exc.blocks == ("layer1_0", "layer2_0", "layer3_0", "layer4_0")
    np.testing.assert_array_equal(exc.counts, [PER_CLASS] * K)
    # The means equal a direct computation over the unpadded data.
    _, state = jax.jit(lambda v, x: model.apply(v, x, mutable=["intermediates"]))(variables, flat)
    direct = np.asarray(state["intermediates"]["layer3_0"]["se"]["gate"][0])
    expected = np.stack([direct[labels == k].mean(0) for k in range(K)])
    np.testing.assert_allclose(exc.class_means["layer3_0"], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(exc.overall_mean("layer3_0"), direct.mean(0), rtol=1e-5)
    # Constant gates: exactly sigmoid(bias) for every class, specificity 0.
    bias = np.asarray(variables["params"]["layer2_0"]["se"]["fc2"]["bias"])
    np.testing.assert_allclose(exc.class_means["layer2_0"],
                               np.broadcast_to(1 / (1 + np.exp(-bias)), (K, bias.size)),
                               rtol=1e-6)
    assert exc.specificity["layer2_0"] == 0.0
    for block in ("layer1_0", "layer3_0", "layer4_0"):
        assert exc.specificity[block] > 0.9, (block, exc.specificity)

    # Class-blind input: random images with labels that say nothing about them.
    noise = rng.normal(0, 1, flat.shape).astype(np.float32)
    blind = se_statistics.se_excitations(model, variables, _batches(noise, labels, 20), K)
    for block in ("layer1_0", "layer3_0", "layer4_0"):
        assert abs(blind.specificity[block]) < 0.15, (block, blind.specificity)

    fig = viz.plot_se_excitations(exc, None, class_names=list("abcd"))
    assert len(fig.axes) == 5  # one panel per stage plus the specificity bars
    lines = fig.axes[2].get_lines()
    np.testing.assert_allclose(lines[1].get_ydata(), exc.class_means["layer3_0"][1])


def test_se_excitations_rejects_bad_input(se_model):
    batch = (np.zeros((2, SIZE, SIZE, 3), np.float32), np.array([0, K]))
    with pytest.raises(ValueError, match="out of range"):
        se_statistics.se_excitations(*se_model, [batch], K)
    with pytest.raises(ValueError, match="no batches"):
        se_statistics.se_excitations(*se_model, [], K)
    with pytest.raises(ValueError, match="no SE blocks"):
        se_statistics.se_excitations(rx.create_model("tiny_resnext"), {}, [batch], K)


def test_plot_se_excitations_writes_png(tmp_path):
    rng = np.random.default_rng(0)
    blocks = ("layer1_0", "layer1_1", "layer2_0", "layer3_0")
    exc = se_statistics.SEExcitations(blocks, {b: rng.uniform(size=(3, 8)) for b in blocks},
                                      np.array([5, 5, 0]), {b: 0.1 for b in blocks})
    assert viz.default_blocks(blocks) == ["layer1_1", "layer2_0", "layer3_0"]
    path = tmp_path / "se.png"
    fig = viz.plot_se_excitations(exc, path)
    assert [ax.get_title().split()[0] for ax in fig.axes[:3]] == viz.default_blocks(blocks)
    pixels = _png(path, fig)
    # Classes 0 and 1 (those with images) in matplotlib's first two colours, the
    # specificity bars in tab:gray.
    for rgb in ((31, 119, 180), (255, 127, 14), (127, 127, 127)):
        assert _shows(pixels, rgb), rgb
    assert not _shows(pixels, (44, 160, 44))  # class 2 has no image: no third line
    with pytest.raises(ValueError, match="no SE block named"):
        viz.plot_se_excitations(exc, None, blocks=["layer9_0"])


def test_grouped_filter_layout(tmp_path):
    groups, in_g, out = 4, 3, 8
    kernel = np.arange(3 * 3 * in_g * out, dtype=np.float32).reshape(3, 3, in_g, out)
    tiles = viz.grouped_filter_tiles(kernel, groups)
    assert tiles.shape == (groups, out // groups, in_g, 3, 3)
    for g in range(groups):
        for j in range(out // groups):
            for i in range(in_g):
                np.testing.assert_array_equal(tiles[g, j, i], kernel[:, :, i, g * 2 + j])
    dense = viz.group_connectivity(kernel, groups)
    assert dense.shape == (groups * in_g, out)
    for i in range(groups * in_g):
        for o in range(out):
            same_group = i // in_g == o // (out // groups)
            expected = np.linalg.norm(kernel[:, :, i % in_g, o]) if same_group else 0.0
            np.testing.assert_allclose(dense[i, o], expected, rtol=1e-6)
    image = viz.grouped_filter_mosaic(kernel, groups, max_groups=2, max_filters=2)
    width = in_g * 4 - 1  # one filter: its 3 taps, 1 pixel apart
    assert image.shape == (3 + 3 + 3, 2 * width + 3)
    # Group 1 (rows 6-8), filter 1 (from column width + 3), input tap 2 (4 * 2 further).
    np.testing.assert_array_equal(image[6:9, width + 3 + 8:width + 3 + 11], kernel[:, :, 2, 3])
    np.testing.assert_array_equal(image[0:3, 0:3], kernel[:, :, 0, 0])
    assert np.isnan(image[3:6]).all() and np.isnan(image[:, width:width + 3]).all()
    with pytest.raises(ValueError, match="divisible"):
        viz.grouped_filter_tiles(kernel, 3)
    fig = viz.plot_grouped_filters(kernel, groups, tmp_path / "g.png")
    np.testing.assert_array_equal(fig.axes[0].images[0].get_array(), dense)
    np.testing.assert_array_equal(fig.axes[1].images[0].get_array(),
                                  viz.grouped_filter_mosaic(kernel, groups))
    # viridis' lowest colour: the zeros between channels of different groups.
    assert _shows(_png(tmp_path / "g.png", fig), (68, 1, 84))


def test_stem_filter_mosaic(tmp_path):
    kernel = np.zeros((7, 7, 3, 5), np.float32)
    kernel[0, 0, 0, 0], kernel[1, 1, 2, 0] = 2.0, -1.0  # filter 0
    kernel[..., 4] = 3.0  # filter 4: constant positive
    image = viz.stem_filter_mosaic(kernel)
    assert image.shape == (2 * 8 - 1, 3 * 8 - 1, 3)  # ceil(sqrt(5)) = 3 columns, 2 rows
    np.testing.assert_allclose(image[0, 0], [1.0, 0.5, 0.5])
    np.testing.assert_allclose(image[1, 1], [0.5, 0.5, 0.25])
    np.testing.assert_allclose(image[8:15, 8:15], 1.0)  # filter 4 at row 1, col 1: all max
    np.testing.assert_allclose(image[8:15, 16:23], 1.0)  # empty slot: white
    np.testing.assert_allclose(image[0:7, 8:15], 0.5)  # zero filter 1: grey
    grey = viz.stem_filter_mosaic(kernel[:, :, :1])  # one input channel: grey tiles
    np.testing.assert_allclose(grey[0, 0], [1.0, 1.0, 1.0])
    np.testing.assert_allclose(grey[1, 1], [0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="3 or 1 input"):
        viz.stem_filter_mosaic(np.zeros((3, 3, 4, 8)))
    fig = viz.plot_stem_filters(kernel, tmp_path / "stem.png")
    np.testing.assert_array_equal(fig.axes[0].images[0].get_array(), image)
    pixels = _png(tmp_path / "stem.png", fig)
    # Filter 0's two taps, in the mosaic's colours.
    for rgb in ((255, 128, 128), (128, 128, 64)):
        assert _shows(pixels, rgb, tol=1), rgb


def test_training_curves(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "split": "train", "loss": 2.0 / s, "lr": 0.1,
                         "note": "x", "flag": True}) for s in (1, 2, 3)]
    lines += [json.dumps({"step": 3, "split": "eval", "loss": 0.9, "top1": 0.5})]
    lines += [json.dumps({"step": 4, "eval/top5": 0.9}), '{"step": 5, "spl']
    path.write_text("\n".join(lines) + "\n")
    with pytest.warns(UserWarning, match="skipped 1 line"):
        metrics = viz.read_metrics(path)
    assert sorted(metrics) == ["eval/loss", "eval/top1", "eval/top5", "train/loss", "train/lr"]
    np.testing.assert_array_equal(metrics["train/loss"][0], [1, 2, 3])
    np.testing.assert_allclose(metrics["train/loss"][1], [2.0, 1.0, 2 / 3])
    assert viz.curve_panels(metrics) == {"loss": ["eval/loss", "train/loss"],
                                         "lr": ["train/lr"], "top1": ["eval/top1"],
                                         "top5": ["eval/top5"]}
    fig = viz.plot_training_curves(metrics, tmp_path / "curves.png", panels=["loss", "top1"])
    loss_lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    np.testing.assert_allclose(loss_lines["train/loss"].get_ydata(), [2.0, 1.0, 2 / 3])
    assert [ax.get_title() for ax in fig.axes if ax.get_visible()] == ["loss", "top1"]
    pixels = _png(tmp_path / "curves.png", fig)
    # eval/loss and train/loss in matplotlib's first two colours.
    assert _shows(pixels, (31, 119, 180)) and _shows(pixels, (255, 127, 14))
    with pytest.raises(ValueError, match="no metric for panel"):
        viz.plot_training_curves(metrics, None, panels=["accuracy"])
