"""Input pipelines: imagenet2012 through tfds.testing.mock_data, a generated image folder,
the embedded digits. Shapes, ranges, determinism, exact resume, disjoint shards, exactly-once
eval, bad inputs."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf
from mock_tfds import mock_tfds

from resnext_jax import data
from resnext_jax.transforms import Transform

SPLITS = {"train": 50, "validation": 23}


@pytest.fixture
def imagenet(tmp_path):
    """``imagenet2012`` with split sizes in its metadata and mocked examples."""
    with mock_tfds(str(tmp_path), "imagenet2012", SPLITS):
        yield data.open_source("imagenet2012", data_dir=str(tmp_path))


PREP = data.Preprocess(Transform(size=32), image_size=32)


def _train(source, *, shards=2, process=0, processes=1, batch=8, seed=0, **kw):
    return data.TrainData(source, "train", PREP, global_batch=batch, num_shards=shards,
                          process_index=process, process_count=processes, seed=seed, **kw)


def _take(it, n):
    return [next(it) for _ in range(n)]


def _decode_labels(source, split):
    return [int(e["label"]) for e in source.read(split).as_numpy_iterator()]


def test_imagenet_train_batches_shapes_ranges_determinism(imagenet):
    assert imagenet.num_classes == 1000
    td = _train(imagenet)
    assert td.steps_per_epoch == 25 // 4  # 25 examples per shard, 4 per shard per batch
    first = _take(td.iterate(0), 8)  # crosses an epoch boundary (6 steps per epoch)
    b = first[0]
    assert b["image"].shape == (8, 32, 32, 3) and b["image"].dtype == np.float32
    assert b["label"].dtype == np.int32
    # normalised with ImageNet mean / std: pixel values 0..255 map into about [-2.2, 2.7]
    assert -2.2 < b["image"].min() < -1.0 and 1.5 < b["image"].max() < 2.7
    # global batch = 4 from shard 0 (labels 0-24) then 4 from shard 1 (25-49)
    assert all(lab < 25 for lab in b["label"][:4]) and all(lab >= 25 for lab in b["label"][4:])
    again = _take(_train(imagenet).iterate(0), 8)
    for x, y in zip(first, again, strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])
    other = _take(_train(imagenet, seed=1).iterate(0), 1)[0]
    assert not np.array_equal(other["label"], b["label"])
    # one epoch sees distinct examples; the next epoch is reshuffled
    epoch0 = np.concatenate([x["label"] for x in first[:6]])
    assert len(set(epoch0)) == len(epoch0)
    assert not np.array_equal(first[6]["label"], first[0]["label"])


def test_imagenet_resume_mid_epoch_is_exact(imagenet):
    full = _take(_train(imagenet).iterate(0), 9)
    resumed = _take(_train(imagenet).iterate(4), 5)
    for x, y in zip(full[4:], resumed, strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])  # same crops and flips too
        np.testing.assert_array_equal(x["label"], y["label"])


def test_repeated_augmentation_spreads_copies_and_resumes_exactly(imagenet):
    """repeats=2: each shard's 4 rows are 2 images, then the same 2 differently augmented;
    an epoch (still 6 steps) reads half as many images; a restart mid-epoch is exact."""
    td = _train(imagenet, repeats=2)
    assert td.steps_per_epoch == 6
    batches = _take(td.iterate(0), 9)
    for b in batches:
        for rows in (slice(0, 4), slice(4, 8)):  # shard 0's rows, then shard 1's
            labels, images = b["label"][rows], b["image"][rows]
            np.testing.assert_array_equal(labels[:2], labels[2:])
            assert labels[0] != labels[1]
            assert not np.array_equal(images[:2], images[2:])  # other crops of the same images
    epoch0 = np.concatenate([b["label"] for b in batches[:6]])
    assert len(set(epoch0)) == len(epoch0) // 2
    resumed = _take(_train(imagenet, repeats=2).iterate(4), 5)
    for x, y in zip(batches[4:], resumed, strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])
    for bad in (3, 4):  # 4 rows per shard: 3 does not divide them, 4 leaves groups of one
        with pytest.raises(ValueError, match="data.repeats"):
            _train(imagenet, repeats=bad)


def test_processes_read_disjoint_shards_and_assemble_the_same_global_batch(imagenet):
    one = _take(_train(imagenet, shards=2).iterate(0), 3)
    parts = [_take(_train(imagenet, shards=2, process=p, processes=2, batch=8).iterate(0), 3)
             for p in range(2)]
    seen = [set(), set()]
    for step in range(3):
        for p in range(2):
            assert parts[p][step]["image"].shape[0] == 4  # the process-local half
            seen[p] |= set(parts[p][step]["label"].tolist())
        glued = np.concatenate([parts[0][step]["image"], parts[1][step]["image"]])
        np.testing.assert_array_equal(glued, one[step]["image"])
    assert not seen[0] & seen[1]
    with pytest.raises(ValueError, match="num_shards=3 must be a multiple"):
        _train(imagenet, shards=3, processes=2, batch=6)


@pytest.mark.parametrize("processes,batch", [(1, 8), (2, 8), (3, 6)])
def test_eval_covers_every_example_exactly_once(imagenet, processes, batch):
    labels, steps = [], set()
    for p in range(processes):
        ed = data.EvalData(imagenet, "validation", PREP, global_batch=batch, process_index=p,
                           process_count=processes)
        batches = list(ed)
        steps.add(len(batches))
        for b in batches:
            assert b["image"].shape == (batch // processes, 32, 32, 3)
            labels += b["label"][b["mask"] == 1].tolist()
            assert np.all(b["image"][b["mask"] == 0] == 0)
    assert len(steps) == 1  # every process runs the same number of eval steps
    assert sorted(labels) == list(range(SPLITS["validation"]))


def test_inception_crop_and_center_crop_geometry():
    image = np.zeros((60, 100, 3), np.uint8)
    image[:, 20:80] = 255  # a centred 60x60 white square; the eval crop (0.875) is inside it
    example = {"image": tf.io.encode_png(image), "label": tf.constant(3, tf.int64)}
    prep = data.Preprocess(Transform(size=16, mean=(0, 0, 0), std=(1, 1, 1)), image_size=16)
    out = prep.eval(example)
    assert out["image"].shape == (16, 16, 3) and int(out["label"]) == 3
    np.testing.assert_allclose(out["image"].numpy(), 1.0)
    crops = [prep.train(example, tf.constant([7, i], tf.int64))["image"].numpy()
             for i in range(20)]
    assert all(c.shape == (16, 16, 3) for c in crops)
    assert len({c.tobytes() for c in crops}) > 10  # random area / aspect / flip
    assert any(c.min() == 0 for c in crops) and all(c.max() == 1.0 for c in crops)
    np.testing.assert_array_equal(crops[0], prep.train(example, tf.constant([7, 0],
                                                                            tf.int64))["image"])


def test_cifar_pad_crop_shifts_by_at_most_pad():
    image = np.arange(32 * 32, dtype=np.float32).reshape(32, 32, 1) % 251
    example = {"image": tf.io.encode_png(image.astype(np.uint8)), "label": tf.constant(0)}
    prep = data.Preprocess(Transform(size=32, channels=1, mean=(0,), std=(1 / 255,)),
                           image_size=32, train_kind="pad_crop", pad=4, flip=False)
    out = prep.train(example, tf.constant([1, 2], tf.int64))["image"].numpy()[..., 0]
    shifts = [(dy, dx) for dy in range(-4, 5) for dx in range(-4, 5)
              if np.array_equal(out[8:24, 8:24], image[8 + dy:24 + dy, 8 + dx:24 + dx, 0])]
    assert len(shifts) == 1


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 6), ("test", 3)):
        for c in ("cat", "dog", "fox"):
            os.makedirs(root / split / c)
            for i in range(per_class):
                img = rng.integers(0, 256, (20 + i, 30, 3), dtype=np.uint8)
                (root / split / c / f"{i}.jpg").write_bytes(tf.io.encode_jpeg(img).numpy())
    (root / "train" / "dog" / "broken.jpg").write_bytes(b"not an image")
    (root / "train" / "fox" / "notes.txt").write_text("ignored: not an image extension")
    return str(root)


def test_image_folder_through_the_same_pipeline(folder):
    source = data.open_source(folder)
    assert source.num_classes == 3 and source.skipped == 1
    assert source.num_examples("train") == 18 and source.num_examples("test") == 9
    assert sorted(_decode_labels(source, "train")) == [0] * 6 + [1] * 6 + [2] * 6
    td = data.TrainData(source, "train", PREP, global_batch=6, num_shards=1, process_index=0,
                        process_count=1, seed=0)
    b = next(td.iterate(0))
    assert b["image"].shape == (6, 32, 32, 3) and set(b["label"]) <= {0, 1, 2}
    parts = [set(_decode_read(source, s)) for s in range(2)]
    assert not parts[0] & parts[1] and len(parts[0] | parts[1]) == 18
    ed = data.EvalData(source, "test", PREP, global_batch=4, process_index=0, process_count=1)
    assert sum(int(b["mask"].sum()) for b in ed) == 9


def _decode_read(source, shard):
    return [e["image"] for e in source.read("train", shard, 2).as_numpy_iterator()]


def test_image_folder_bad_image_fails_when_asked(folder):
    with pytest.raises(ValueError, match=r"1 unreadable image\(s\).*broken.jpg"):
        data.open_source(folder, bad_images="fail")
    with pytest.raises(ValueError, match="data.bad_images='ignore'"):
        data.open_source(folder, bad_images="ignore")


def test_missing_dataset_says_how_to_prepare(tmp_path):
    with pytest.raises(data.DatasetNotFoundError, match="tfds build imagenet2012 --manual_dir"):
        data.open_source("imagenet2012", data_dir=str(tmp_path))
    with pytest.raises(data.DatasetNotFoundError, match="tfds build cifar10"):
        data.open_source("cifar10", data_dir=str(tmp_path))
    with pytest.raises(data.DatasetNotFoundError, match="neither a folder nor a TFDS"):
        data.open_source("no_such_dataset_xyz", data_dir=str(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(data.DatasetNotFoundError, match="no class subfolders"):
        data.open_source(str(tmp_path / "empty"))


def test_embedded_digits_builds_offline(tmp_path):
    source = data.open_source("sklearn_digits", data_dir=str(tmp_path))
    assert source.num_classes == 10
    assert source.num_examples("train") == 1437 and source.num_examples("test") == 360
    train, test = _decode_labels(source, "train"), _decode_labels(source, "test")
    assert np.bincount(test).min() >= 35  # stratified
    prep = data.Preprocess(Transform(size=8, crop_pct=1.0, channels=1, mean=(0.5,),
                                     std=(0.5,)),
                           image_size=8, train_kind="pad_crop", pad=1, flip=False)
    ed = data.EvalData(source, "test", prep, global_batch=64, process_index=0,
                       process_count=1, cache=True)
    batches = list(ed)
    assert sum(int(b["mask"].sum()) for b in batches) == 360
    assert batches[0]["image"].shape == (64, 8, 8, 1)
    assert -1.0 <= batches[0]["image"].min() and batches[0]["image"].max() <= 1.0
    assert len(train) == 1437
    # the file-reading path (no cache, shuffle buffer) resumes exactly too, across epochs
    td = data.TrainData(source, "train", prep, global_batch=64, num_shards=2, process_index=0,
                        process_count=1, seed=3, shuffle_buffer=256)
    full = _take(td.iterate(0), td.steps_per_epoch + 3)
    resumed = _take(td.iterate(td.steps_per_epoch - 2), 5)
    for x, y in zip(full[-5:], resumed, strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])


def _erased(prob: float, seed: int) -> np.ndarray:
    image = tf.zeros([48, 40, 3]) + 7.0  # no normal draw lands exactly on 7
    return data.preprocess.random_erase(image, tf.constant([seed, 1], tf.int64), prob).numpy()


@pytest.mark.parametrize("seed", range(8))
def test_random_erasing_fills_one_box_with_unit_noise(seed):
    """timm's RandomErasing(mode="pixel"): one box of 2-33 % of the image (up to rounding),
    standard normal noise in every channel, the rest untouched; the same for the same seed."""
    out = _erased(1.0, seed)
    box = np.all(out != 7.0, axis=-1)
    assert np.array_equal(box, np.any(out != 7.0, axis=-1))  # all channels or none
    rows, cols = np.nonzero(box)
    assert box[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()  # a rectangle
    assert 0.015 <= box.mean() <= 0.36
    noise = out[box]
    assert abs(noise.mean()) < 0.5 and 0.6 < noise.std() < 1.4
    np.testing.assert_array_equal(out, _erased(1.0, seed))
    assert not np.array_equal(out, _erased(1.0, seed + 100))
    np.testing.assert_array_equal(_erased(0.0, seed), np.full((48, 40, 3), 7.0, np.float32))


def test_random_erasing_modes_and_counts():
    """timm's ``const`` (torchvision's zeros) and ``rand`` (one N(0, 1) value per channel)
    fills, and ``max_count=3``: 1 to 3 boxes, each of at most a third of the area / count."""
    image = tf.zeros([48, 40, 3]) + 7.0
    counts = set()
    for seed in range(30):
        key = tf.constant([seed, 2], tf.int64)
        const = data.preprocess.random_erase(image, key, 1.0, mode="const").numpy()
        box = np.all(const != 7.0, axis=-1)
        assert box.any() and np.all(const[box] == 0)
        rand = data.preprocess.random_erase(image, key, 1.0, mode="rand").numpy()
        values = rand[np.all(rand != 7.0, axis=-1)]
        assert len(values) and np.all(values == values[0])  # one value per channel
        many = data.preprocess.random_erase(image, key, 1.0, max_count=3).numpy()
        erased = np.any(many != 7.0, axis=-1)
        assert 0.005 <= erased.mean() <= 0.36
        counts.add(_count_boxes(erased))  # boxes that overlap count as one
    assert counts == {1, 2, 3}
    tiny = tf.zeros([1, 1, 3]) + 7.0  # no box fits in one pixel: left as it was
    for seed in range(5):
        np.testing.assert_array_equal(data.preprocess.random_erase(
            tiny, tf.constant([seed, 2], tf.int64), 1.0, max_count=2), tiny)
    with pytest.raises(ValueError, match="random erasing"):
        data.Preprocess(erase_mode="zeros")


def _count_boxes(mask: np.ndarray) -> int:
    """Connected regions of a mask (4-neighbourhood)."""
    seen, count = np.zeros_like(mask), 0
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        count, stack = count + 1, [start]
        while stack:
            r, c = stack.pop()
            if 0 <= r < mask.shape[0] and 0 <= c < mask.shape[1] and mask[r, c] and \
                    not seen[r, c]:
                seen[r, c] = True
                stack += [(r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)]
    return count


def test_random_erasing_probability():
    erased = [bool(np.any(_erased(0.25, seed) != 7.0)) for seed in range(200)]
    assert 30 <= sum(erased) <= 70  # Binomial(200, 0.25): mean 50, sd 6


def test_train_preprocessing_erases_deterministically_from_the_example_seed():
    image = np.full((60, 100, 3), 128, np.uint8)
    example = {"image": tf.io.encode_jpeg(image), "label": tf.constant(1, tf.int64)}
    plain = data.Preprocess(Transform(size=32), image_size=32)
    erasing = data.Preprocess(Transform(size=32), image_size=32, erase_prob=1.0)
    for i in range(3):
        seed = tf.constant([5, i], tf.int64)
        ours, base = erasing.train(example, seed)["image"].numpy(), \
            plain.train(example, seed)["image"].numpy()
        changed = np.any(ours != base, axis=-1)
        assert 0.015 <= changed.mean() <= 0.36  # the crop and flip are the same, plus a box
        np.testing.assert_array_equal(ours, erasing.train(example, seed)["image"])
