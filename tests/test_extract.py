"""resnext_jax.extract: image reading, preprocessing, batching, resumable output, top-k."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import resnext_jax as rx
from resnext_jax import extract as ex

SIZE = 32
PRE = ex.Preprocess(size=SIZE, crop_pct=0.8)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Mixed sizes and formats, a nested folder, a text file, a truncated JPEG, a hidden file."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)

    def rgb(h, w):
        return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)

    Image.fromarray(rgb(40, 60)).convert("RGBA").save(root / "a.png")
    Image.fromarray(rgb(50, 30)).convert("L").save(root / "b.jpg", quality=95)
    Image.fromarray(rgb(45, 45)).convert("P").save(root / "c.gif")
    Image.fromarray(rgb(70, 36)).save(root / "d.bmp")
    (root / "sub").mkdir()
    Image.fromarray(rgb(36, 90)).save(root / "sub" / "e.webp")
    (root / "notes.txt").write_text("not an image")
    Image.fromarray(rgb(64, 64)).save(root / "broken.jpg")
    (root / "broken.jpg").write_bytes((root / "broken.jpg").read_bytes()[:300])
    Image.fromarray(rgb(40, 40)).save(root / ".hidden.png")
    return root


READABLE = ["a.png", "b.jpg", "c.gif", "d.bmp", "sub/e.webp"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A locally made weight file standing in for downloaded weights (1000 classes)."""
    model = rx.create_model("tiny_seresnext", num_classes=1000, zero_init_last=False)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))
    path = tmp_path_factory.mktemp("w") / "tiny.msgpack"
    rx.save_weights(path, variables, model, model_name="tiny_seresnext")
    return model, variables, path


def test_list_images_and_load_image(images):
    files = ex.list_images([images])
    assert [f.relative_to(images).as_posix() for f in files] == sorted(
        READABLE + ["broken.jpg", "notes.txt"])
    with pytest.raises(FileNotFoundError, match="no such file"):
        ex.list_images([images / "missing"])
    for name in READABLE:
        assert ex.load_image(images / name, PRE).shape == (SIZE, SIZE, 3)
    for name in ("notes.txt", "broken.jpg"):
        with pytest.raises(ex.ImageError, match="not a readable image"):
            ex.load_image(images / name, PRE)


def test_preprocess_resizes_short_side_and_center_crops(tmp_path):
    # Column index encoded in red: after nearest resize 80x40 -> 40x20 and a 20-wide center
    # crop (left offset 10), output column j shows source column 2 * (10 + j) + 1.
    row = np.arange(80, dtype=np.uint8)
    image = np.stack(np.broadcast_arrays(row[None, :], np.zeros((40, 1), np.uint8),
                                         np.full((40, 1), 255, np.uint8)), -1)
    Image.fromarray(image.astype(np.uint8)).save(tmp_path / "wide.png")
    pre = ex.Preprocess(size=20, crop_pct=1.0, interpolation="nearest", mean=(0, 0, 0),
                        std=(1, 1, 1))
    out = ex.load_image(tmp_path / "wide.png", pre)
    assert out.shape == (20, 20, 3)
    np.testing.assert_allclose(out[0, :, 0] * 255, 2 * (10 + np.arange(20)) + 1, atol=1e-4)
    np.testing.assert_allclose(out[..., 2], 1.0)
    # Normalisation: a flat grey image becomes (v / 255 - mean) / std exactly.
    Image.new("RGB", (50, 30), (51, 102, 153)).save(tmp_path / "flat.png")
    flat = ex.load_image(tmp_path / "flat.png", PRE)
    expected = (np.array([51, 102, 153]) / 255 - np.array(ex.IMAGENET_MEAN)) / ex.IMAGENET_STD
    np.testing.assert_allclose(flat, np.broadcast_to(expected, flat.shape), rtol=1e-5)


def test_preprocessing_comes_from_the_weights_config(weights, tmp_path):
    parser = ex.build_parser()
    hub = parser.parse_args(["--model", "seresnext50_32x4d", "--pretrained",
                             "timm/seresnext50_32x4d.racm_in1k", "x", "--out", "o.npz"])
    assert ex._preprocess_for(hub) == ex.Preprocess(224, 0.875, "bicubic")
    model, variables, _ = weights
    tagged = tmp_path / "tagged.msgpack"
    rx.save_weights(tagged, variables, model, pretrained="resnext50_32x4d.tv2_in1k")
    args = parser.parse_args(["--model", "m", "--pretrained", str(tagged), "x", "--topk", "1",
                              "--input-size", "64"])
    assert ex._preprocess_for(args) == ex.Preprocess(64, 224 / 232, "bilinear")
    assert ex.preprocess_for(True, "seresnext26d_32x4d") == ex.Preprocess(224, 0.875, "bicubic")
    assert ex.preprocess_for(None, "seresnext50_32x4d") is None
    assert ex.preprocess_for("timm/unknown_model.x", "seresnext50_32x4d") is None


def _spy_forward(monkeypatch, fail_on_call=None):
    """Record the input shapes of every forward call; optionally interrupt one call."""
    shapes = []
    make = ex.make_forward

    def wrapped(*args, **kwargs):
        forward = make(*args, **kwargs)

        def call(variables, batch):
            shapes.append(batch.shape)
            if len(shapes) == fail_on_call:
                raise KeyboardInterrupt
            return forward(variables, batch)
        call.devices = forward.devices
        return call

    monkeypatch.setattr(ex, "make_forward", wrapped)
    return shapes


def test_cli_features_match_the_model_and_unreadable_files_are_skipped(
        images, weights, tmp_path, monkeypatch, capsys):
    model, variables, path = weights
    shapes = _spy_forward(monkeypatch)
    out = tmp_path / "feats.npz"
    assert ex.main(["--model", "tiny_seresnext", "--num-classes", "1000", "--pretrained",
                    str(path), str(images), "--out", str(out), "--batch-size", "2",
                    "--input-size", str(SIZE), "--crop-pct", "0.8", "--no-progress"]) == 0
    assert shapes == [(2, SIZE, SIZE, 3)] * 3  # 5 images: one shape, last batch padded
    with np.load(out) as data:
        files = [str(images / n) for n in READABLE]
        assert data["files"].tolist() == files
        assert sorted(data["skipped"].tolist()) == [str(images / "broken.jpg"),
                                                    str(images / "notes.txt")]
        batch = np.stack([ex.load_image(f, PRE) for f in files])
        expected = jax.jit(lambda v, x: model.apply(v, x, method=lambda m, x: m.forward_head(
            m.forward_features(x)["layer4"], pre_logits=True)))(variables, batch)
        np.testing.assert_allclose(data["features"], expected, rtol=1e-4, atol=1e-5)
    assert not (tmp_path / "feats.npz.parts").exists()
    err = capsys.readouterr().err
    assert "skipped" in err and "notes.txt" in err and "5 image(s)" in err


def test_stage_maps_to_npy_with_index(images, weights, tmp_path):
    _, variables, path = weights
    out = tmp_path / "maps.npy"
    ex.main(["--model", "tiny_seresnext", "--num-classes", "1000", "--pretrained", str(path),
             str(images / "a.png"), str(images / "sub"), "--out", str(out), "--layer",
             "layer3", "--input-size", str(SIZE), "--no-progress"])
    maps = np.load(out)
    assert maps.shape == (2, SIZE // 16, SIZE // 16, 256)
    assert (tmp_path / "maps.files.txt").read_text().splitlines() == [
        str(images / "a.png"), str(images / "sub" / "e.webp")]


def test_interrupted_run_resumes_from_its_chunks(images, weights, tmp_path, monkeypatch):
    model, variables, _ = weights
    files = ex.list_images([images])
    full = ex.extract(model, variables, files, tmp_path / "ref.npz", PRE, batch_size=2,
                      chunk_batches=1, progress=False)
    out = tmp_path / "run.npz"
    _spy_forward(monkeypatch, fail_on_call=3)
    with pytest.raises(KeyboardInterrupt):
        ex.extract(model, variables, files, out, PRE, batch_size=2, chunk_batches=1,
                   progress=False)
    assert not out.exists()
    assert len(list((tmp_path / "run.npz.parts").glob("part-*.npz"))) == 2
    shapes = _spy_forward(monkeypatch)
    resumed = ex.extract(model, variables, files, out, PRE, batch_size=2, chunk_batches=1,
                         progress=False)
    assert len(shapes) == 1  # only the fifth image was left
    np.testing.assert_array_equal(resumed["files"], full["files"])
    np.testing.assert_allclose(resumed["features"], full["features"], rtol=1e-6)
    # Chunks of a run with other settings are never mixed in.
    (tmp_path / "other.npz.parts").mkdir()
    ex.ChunkStore(tmp_path / "other.npz", {"layer": "layer1"})
    with pytest.raises(ValueError, match="other settings"):
        ex.extract(model, variables, files, tmp_path / "other.npz", PRE, progress=False)
    with pytest.raises(ValueError, match="none of the 2 file"):
        ex.extract(model, variables, [images / "notes.txt", images / "broken.jpg"],
                   tmp_path / "none.npz", PRE, progress=False)
    with pytest.raises(ValueError, match=r"\.npz or \.npy"):
        ex.extract(model, variables, files, tmp_path / "x.csv", PRE)


def test_topk_prints_imagenet_labels(images, weights, tmp_path, capsys):
    model, variables, path = weights
    ex.main(["--model", "tiny_seresnext", "--num-classes", "1000", "--pretrained", str(path),
             str(images / "a.png"), "--topk", "3", "--input-size", str(SIZE), "--crop-pct",
             "0.8", "--no-progress"])
    line = capsys.readouterr().out.strip()
    logits = jax.jit(model.apply)(variables, ex.load_image(images / "a.png", PRE)[None])
    index, prob = ex.topk(np.asarray(logits), 3)
    names = [n.split(",")[0] for n in ex.imagenet_labels()]
    assert line == f"{images / 'a.png'}: " + ", ".join(
        f"{names[i]} ({p:.3f})" for i, p in zip(index[0], prob[0], strict=True))
    np.testing.assert_allclose(prob[0], np.sort(jax.nn.softmax(logits[0]))[::-1][:3],
                               rtol=1e-5)


def test_imagenet_labels_follow_the_tfds_synset_order():
    from importlib import resources

    labels = ex.imagenet_labels()
    synsets = resources.files("tensorflow_datasets.datasets.imagenet2012").joinpath(
        "labels.txt").read_text().split()
    assert len(labels) == len(synsets) == 1000
    # Spot checks of the sorted-synset order: n01440764 tench, n01443537 goldfish,
    # n02123045 tabby cat, n15075141 toilet tissue.
    assert synsets[0] == "n01440764" and labels[0].startswith("tench")
    assert synsets[1] == "n01443537" and labels[1].startswith("goldfish")
    assert synsets[281] == "n02123045" and labels[281].startswith("tabby")
    assert synsets[999] == "n15075141" and labels[999].startswith("toilet tissue")


def test_errors_name_the_problem(weights, images, tmp_path):
    with pytest.raises(SystemExit):
        ex.main(["--model", "tiny_seresnext", str(images)])  # neither --out nor --topk
    model = dataclasses.replace(weights[0], num_classes=0)
    with pytest.raises(ValueError, match="need a classifier head"):
        ex.make_forward(model, "pre_logits", with_logits=True)
    with pytest.raises(ValueError, match="unknown layer"):
        ex.make_forward(model, "layer9", with_logits=False)
    (tmp_path / "labels.txt").write_text("cat\ndog\n")
    with pytest.raises(ValueError, match="2 labels for a 3-class"):
        ex._label_names(str(tmp_path / "labels.txt"), 3)
    assert ex._label_names(None, 3) == ["0", "1", "2"]


def test_grey_models_read_grey_images(images, tmp_path):
    """A one-channel model (the digits model) gets grey inputs and its own mean / std."""
    model = rx.create_model("tiny_resnext_cifar", in_chans=1)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
    path = tmp_path / "grey.msgpack"
    rx.save_weights(path, variables, model)
    out = tmp_path / "grey.npz"
    args = ["--pretrained", str(path), str(images / "b.jpg"),  # the file names the model
            "--out", str(out), "--input-size", "8", "--crop-pct", "1", "--no-progress"]
    with pytest.raises(ValueError, match="1-channel input needs 1 mean and std"):
        ex.main(args)
    ex.main([*args, "--mean", "0.5", "--std", "0.5"])
    with pytest.raises(SystemExit):  # without a .msgpack, --model is needed
        ex.main(["--pretrained", "timm/seresnext50_32x4d.racm_in1k", "x", "--topk", "1"])
    pre = ex.Preprocess(8, 1.0, mean=(0.5,), std=(0.5,), channels=1)
    grey = ex.load_image(images / "b.jpg", pre)
    assert grey.shape == (8, 8, 1)
    expected = jax.jit(lambda v, x: model.apply(v, x, method=lambda m, x: m.forward_head(
        m.forward_features(x)["layer3"], pre_logits=True)))(variables, grey[None])
    with np.load(out) as data:
        np.testing.assert_allclose(data["features"], expected, rtol=1e-4, atol=1e-5)

