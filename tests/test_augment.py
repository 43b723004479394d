"""TrivialAugment Wide and RandAugment (resnext_jax/data/augment.py) against the references.

tests/fixtures/augment_ops.npz holds what torchvision 0.29 (TrivialAugmentWide) and timm
1.0.31 (RandAugment ops) make of three small images with Pillow, for fixed draws; it was
written by tests/make_augment_fixtures.py.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from resnext_jax import data
from resnext_jax.data import augment
from resnext_jax.transforms import Transform

FIXTURE = np.load(os.path.join(os.path.dirname(__file__), "fixtures", "augment_ops.npz"))
CASES = json.loads(str(FIXTURE["cases"]))
GEOMETRIC = {"ShearX", "ShearY", "Rotate", "TranslateX", "TranslateY", "TranslateXRel",
             "TranslateYRel"}


def _ours(case: dict) -> np.ndarray:
    image = tf.constant(FIXTURE[f"image_{case['image']}"])
    if case["policy"] == "ta_wide":
        out = augment.ta_wide_op(image, augment.TA_WIDE_OPS.index(case["op"]), case["index"],
                                 case["negative"])
    else:
        out = augment.rand_op(image, augment.RAND_OPS.index(case["op"]), case["level"],
                              case["negative"], case["increasing"],
                              fill=tuple(int(v) for v in FIXTURE["fill"]))
    return out.numpy()


def test_fixture_covers_every_op_of_both_policies():
    tables = json.loads(str(FIXTURE["tables"]))
    assert tables["ta_wide_ops"] == list(augment.TA_WIDE_OPS)
    assert tables["rand_ops"] == list(augment.RAND_OPS)
    assert tables["shifts"] == list(augment.TA_WIDE_SHIFTS)
    assert tables["posterize_bits"] == list(augment.TA_WIDE_POSTERIZE_BITS)
    assert {c["op"] for c in CASES if c["policy"] == "ta_wide"} == set(augment.TA_WIDE_OPS)
    assert {c["op"] for c in CASES if c["policy"] == "rand"} == set(augment.RAND_OPS)


@pytest.mark.parametrize("op", sorted(set(augment.TA_WIDE_OPS) | set(augment.RAND_OPS)))
def test_ops_match_pillow_through_torchvision_and_timm(op):
    """Pixel values within 1 of the reference's (Pillow rounds in float32 or double where we
    may not); geometric ops may differ more on a pixel whose source lies exactly on the
    image's edge (0.2 % of values at most)."""
    cases = [(i, c) for i, c in enumerate(CASES) if c["op"] == op]
    assert cases
    for i, case in cases:
        ours, ref = _ours(case).astype(int), FIXTURE[f"out_{i}"].astype(int)
        assert ours.shape == ref.shape
        diff = np.abs(ours - ref)
        if op in GEOMETRIC:
            assert (diff > 1).mean() <= 0.002, case
        else:
            assert diff.max() <= 1, case
        assert (diff > 0).mean() <= 0.05, case  # an off-by-one, not a different image


def _image() -> tf.Tensor:
    rng = np.random.default_rng(3)
    return tf.constant(rng.integers(0, 256, (40, 52, 3), dtype=np.uint8))


@pytest.mark.parametrize("spec", ["ta_wide", "rand-m7-mstd0.5-inc1", "rand-m9-n3-mstd101"])
def test_policies_are_deterministic_from_the_seed_and_vary_across_seeds(spec):
    policy = augment.AutoAugment.parse(spec, fill=(124, 116, 104))
    apply = tf.function(policy.apply)
    image = _image()
    outs = [apply(image, tf.constant([7, i], tf.int64)).numpy() for i in range(40)]
    assert all(o.dtype == np.uint8 and o.shape == (40, 52, 3) for o in outs)
    np.testing.assert_array_equal(outs[5], apply(image, tf.constant([7, 5], tf.int64)))
    distinct = {o.tobytes() for o in outs}
    unchanged = sum(np.array_equal(o, image.numpy()) for o in outs)
    assert len(distinct) >= 25
    # TA Wide leaves the image as it was for Identity and zero magnitudes (about 1/7 of
    # draws); timm's two layers at p = 0.5 skip both a quarter of the time.
    assert 1 <= unchanged <= 20


def test_parse_reads_timm_strings_and_refuses_others():
    p = augment.AutoAugment.parse("rand-m7-mstd0.5-inc1")
    assert (p.kind, p.magnitude, p.magnitude_std, p.increasing, p.num_layers, p.prob) == (
        "rand", 7, 0.5, True, 2, 0.5)
    p = augment.AutoAugment.parse("rand-n3-m9-p1.0-mstd101")
    assert (p.num_layers, p.magnitude, p.prob, p.magnitude_std) == (3, 9, 1.0, float("inf"))
    assert augment.AutoAugment.parse("ta_wide").kind == "ta_wide"
    for bad in ("autoaug", "rand-x3", "rand-m"):
        with pytest.raises(ValueError, match="auto_augment"):
            augment.AutoAugment.parse(bad)
    with pytest.raises(ValueError, match="auto_augment"):
        data.Preprocess(auto_augment="trivial")


@pytest.mark.parametrize("spec", ["ta_wide", "rand-m9-mstd0.5-inc1"])
def test_train_preprocessing_with_a_policy_stays_in_the_normalised_range(spec):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    example = {"image": tf.io.encode_png(image), "label": tf.constant(3, tf.int64)}
    t = Transform(size=32)
    prep = data.Preprocess(t, image_size=32, auto_augment=spec)
    plain = data.Preprocess(t, image_size=32)
    lo = (0 - np.array(t.mean) * 255) / (np.array(t.std) * 255)
    hi = (255 - np.array(t.mean) * 255) / (np.array(t.std) * 255)
    changed = 0
    for i in range(12):
        seed = tf.constant([1, i], tf.int64)
        out = prep.train(example, seed)["image"].numpy()
        assert out.shape == (32, 32, 3) and out.dtype == np.float32
        assert np.all(out >= lo - 1e-5) and np.all(out <= hi + 1e-5)
        np.testing.assert_array_equal(out, prep.train(example, seed)["image"])
        changed += not np.allclose(out, plain.train(example, seed)["image"], atol=0.02)
    assert changed >= 6  # most draws change the crop; the crop itself is the same
