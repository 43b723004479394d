"""resnext_jax.extract: image reading, preprocessing, batching, resumable output, top-k."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import resnext_jax as rx
from resnext_jax import extract as ex
from resnext_jax import extract_inputs, extract_store
from resnext_jax.transforms import ImageError

SIZE = 32
PRE = rx.Transform(size=SIZE, crop_pct=0.8)


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
    """A locally made weight file standing in for downloaded weights (1000 classes), which
    carries its transform (SIZE, crop 0.8)."""
    model = rx.create_model("tiny_seresnext", num_classes=1000, zero_init_last=False)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))
    path = tmp_path_factory.mktemp("w") / "tiny.msgpack"
    cfg = rx.PretrainedCfg("tiny_seresnext.test", None, None, PRE)
    rx.Pretrained(model, variables, cfg, None).save(path)
    return model, variables, path


def test_list_images_and_load_image(images):
    files = extract_inputs.list_images([images])
    assert [f.relative_to(images).as_posix() for f in files] == sorted(
        READABLE + ["broken.jpg", "notes.txt"])
    with pytest.raises(FileNotFoundError, match="no such file"):
        extract_inputs.list_images([images / "missing"])
    for name in READABLE:
        assert rx.load_image(images / name, PRE).shape == (SIZE, SIZE, 3)
    for name in ("notes.txt", "broken.jpg"):
        with pytest.raises(ImageError, match="not a readable image"):
            rx.load_image(images / name, PRE)


def test_transform_resizes_short_side_and_center_crops(tmp_path):
    # 80x40, left half black, right half white: the shorter side to 20 (40x20), then the
    # central 20 columns (offset 10) keep the edge in the middle.
    image = np.zeros((40, 80, 3), np.uint8)
    image[:, 40:] = 255
    Image.fromarray(image).save(tmp_path / "wide.png")
    transform = rx.Transform(size=20, crop_pct=1.0, mean=(0, 0, 0), std=(1, 1, 1))
    out = rx.load_image(tmp_path / "wide.png", transform)
    assert out.shape == (20, 20, 3)
    np.testing.assert_allclose(out[:, :9], 0.0, atol=1e-6)
    np.testing.assert_allclose(out[:, 11:], 1.0, atol=1e-6)
    # Normalisation: a flat grey image becomes (v / 255 - mean) / std exactly.
    Image.new("RGB", (50, 30), (51, 102, 153)).save(tmp_path / "flat.png")
    flat = rx.load_image(tmp_path / "flat.png", PRE)
    mean, std = np.array(rx.transforms.IMAGENET_MEAN), np.array(rx.transforms.IMAGENET_STD)
    expected = (np.array([51, 102, 153]) / 255 - mean) / std
    np.testing.assert_allclose(flat, np.broadcast_to(expected, flat.shape), rtol=1e-5)


def _pre_logits(model, variables, batch):
    return jax.jit(lambda v, x: model.apply(v, x, method=lambda m, x: m.forward_head(
        m.forward_features(x), pre_logits=True)))(variables, batch)


def test_transform_comes_from_the_weights_and_flags_replace_its_fields(
        images, weights, tmp_path):
    """A file that records a weight set's transform (torchvision's 224/232 crop) is read
    with it; --input-size replaces the size and keeps the crop."""
    model, variables, _ = weights
    tagged = tmp_path / "tagged.msgpack"
    rx.Pretrained(model, variables, rx.get_pretrained_cfg("resnext50_32x4d.tv2_in1k"),
                  None).save(tagged)
    out = tmp_path / "tagged.npz"
    assert ex.main(["--pretrained", str(tagged), str(images / "a.png"), "--out", str(out),
                    "--input-size", "64", "--no-progress"]) == 0
    with np.load(out) as data:
        features = data["features"]
    expected, imagenet = (_pre_logits(model, variables, rx.load_image(images / "a.png", t)[None])
                          for t in (rx.Transform(64, 224 / 232), rx.Transform(64)))
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-5)
    assert not np.allclose(features, imagenet, rtol=1e-4, atol=1e-5)


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
        batch = np.stack([rx.load_image(f, PRE) for f in files])
        expected = _pre_logits(model, variables, batch)
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
    index = (tmp_path / "maps.files.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in index] == [
        str(images / "a.png"), str(images / "sub" / "e.webp")]


def test_any_file_name_and_a_bad_image_never_cost_the_others(weights, tmp_path, capsys):
    """Names that are not UTF-8 or hold a newline keep their rows; an image too elongated
    to resize (under Pillow's bomb limit) is skipped, not fatal, and leaves no .parts."""
    from PIL import Image

    _, _, path = weights
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    names = [b"plain.png", b"new\nline.png", b"latin1-\xe9.png"]
    for name in names:
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(
            os.path.join(os.fsencode(folder), name), format="PNG")
    Image.new("L", (80_000_000 // 1000, 1)).resize((2_000_000, 1)).save(folder / "long.png")
    out = tmp_path / "f.npy"
    assert ex.main(["--model", "tiny_seresnext", "--num-classes", "1000", "--pretrained",
                    str(path), str(folder), "--out", str(out), "--input-size", str(SIZE),
                    "--no-progress"]) == 0
    features = np.load(out)
    rows = [json.loads(line) for line in (tmp_path / "f.files.jsonl").read_text().splitlines()]
    assert len(rows) == features.shape[0] == 3
    assert sorted(os.fsencode(r) for r in rows) == sorted(
        os.path.join(os.fsencode(folder), n) for n in names)
    err = capsys.readouterr().err
    assert "not valid UTF-8" in err and "too elongated" in err
    assert not (tmp_path / "f.npy.parts").exists()


def test_interrupted_run_resumes_from_its_chunks(images, weights, tmp_path, monkeypatch):
    model, variables, _ = weights
    files = extract_inputs.list_images([images])
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
    extract_store.ChunkStore(tmp_path / "other.npz", {"layer": "layer1"})
    with pytest.raises(ValueError, match="another run"):
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
    logits = jax.jit(model.apply)(variables, rx.load_image(images / "a.png", PRE)[None])
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


def test_topk_names_come_from_labels_or_are_class_indices(images, tmp_path, capsys):
    model = rx.create_model("tiny_resnext", num_classes=3)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))
    path = tmp_path / "three.msgpack"
    rx.Pretrained(model, variables, rx.PretrainedCfg("tiny_resnext.three", None, None, PRE, 3),
                  None).save(path)
    run = ["--pretrained", str(path), str(images / "a.png"), "--topk", "3", "--no-progress"]

    def printed_names() -> list[str]:
        ranked = capsys.readouterr().out.strip().split(": ", 1)[1].split(", ")
        return sorted(entry.rsplit(" (", 1)[0] for entry in ranked)

    assert ex.main(run) == 0
    assert printed_names() == ["0", "1", "2"]
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nfox\n")
    assert ex.main([*run, "--labels", str(labels)]) == 0
    assert printed_names() == ["cat", "dog", "fox"]
    labels.write_text("cat\ndog\n")
    assert ex.main([*run, "--labels", str(labels)]) == 2
    assert f"{labels} has 2 labels for a 3-class model" in capsys.readouterr().err


def test_random_weights_of_a_model_without_weight_set_get_imagenets_transform(
        images, tmp_path, capsys):
    """--model alone: weights initialised from key 0, images read with ImageNet's transform,
    both said on stderr."""
    out = tmp_path / "random.npz"
    assert ex.main(["--model", "tiny_resnext_cifar", str(images / "a.png"), "--out", str(out),
                    "--batch-size", "1", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "the weights are random" in err
    assert "these weights carry no transform; using ImageNet's" in err
    model = rx.create_model("tiny_resnext_cifar")
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
    expected = _pre_logits(model, variables, rx.load_image(images / "a.png", rx.Transform())[None])
    with np.load(out) as data:
        np.testing.assert_allclose(data["features"], expected, rtol=1e-4, atol=1e-5)


def test_grey_models_read_grey_images_with_their_own_transform(images, tmp_path, capsys):
    """A one-channel model (like the digits model) whose file carries its transform needs no
    flags; a stage it does not have is a one-line usage error."""
    model = rx.create_model("tiny_resnext_cifar", in_chans=1)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
    path = tmp_path / "grey.msgpack"
    grey_t = rx.Transform(8, 1.0, mean=(0.5,), std=(0.5,), channels=1)
    rx.Pretrained(model, variables, rx.PretrainedCfg("tiny_resnext_cifar.grey", None, None,
                                                     grey_t), None).save(path)
    out = tmp_path / "grey.npz"
    assert ex.main(["--pretrained", str(path), str(images / "b.jpg"), "--out", str(out),
                    "--no-progress"]) == 0
    assert "ImageNet" not in capsys.readouterr().err  # no note about default transforms
    grey = rx.load_image(images / "b.jpg", grey_t)
    assert grey.shape == (8, 8, 1)
    expected = _pre_logits(model, variables, grey[None])
    with np.load(out) as data:
        np.testing.assert_allclose(data["features"], expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(SystemExit) as stop:
        ex.main(["--pretrained", str(path), str(images / "b.jpg"), "--out", str(out),
                 "--layer", "layer4"])
    assert stop.value.code == 2
    assert "--layer layer4: this model has pre_logits, logits, stem, layer1, layer2, layer3" \
        in capsys.readouterr().err


def test_resumed_chunks_must_be_of_the_same_inputs_and_weights(images, weights, tmp_path,
                                                                monkeypatch):
    """The chunks a killed run left are not resumed by a run on other inputs or with other
    weights: that run is refused, naming what differs."""
    model, variables, _ = weights
    first = extract_inputs.list_images([images])
    _spy_forward(monkeypatch, fail_on_call=2)
    with pytest.raises(KeyboardInterrupt):
        ex.extract(model, variables, first, tmp_path / "x.npz", PRE, batch_size=2,
                   chunk_batches=1, progress=False)
    other = extract_inputs.list_images([images / "sub"])
    with pytest.raises(ValueError, match="another run \\(its inputs differ\\)"):
        ex.extract(model, variables, other, tmp_path / "x.npz", PRE, progress=False)
    changed = jax.tree_util.tree_map(lambda v: v + 1, variables)
    with pytest.raises(ValueError, match="its weights differ"):
        ex.extract(model, changed, first, tmp_path / "x.npz", PRE, progress=False)


def test_decoding_stays_a_few_batches_ahead(tmp_path, monkeypatch):
    """Memory does not grow with the folder: files are decoded as batches are consumed."""
    for i in range(100):
        Image.new("RGB", (8, 8), (i, i, i)).save(tmp_path / f"{i:03d}.png")
    reads = []
    monkeypatch.setattr(extract_inputs, "load_image", lambda path, pre: reads.append(path) or
                        np.zeros((4, 4, 3), np.float32))
    batches = extract_inputs.image_batches(extract_inputs.list_images([tmp_path]), PRE, 4, 2,
                                           lambda p, r: None)
    next(batches)
    assert len(reads) <= 4 + 2 * 4 + 1  # the batch, two ahead, one being submitted
    assert sum(len(names) for _, names in batches) == 96
