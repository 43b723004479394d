"""Shapes and semantics of the building blocks in resnext_jax.layers and resnext_jax.ops."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnext_jax import layers, ops


def _rand(shape, seed=0):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


@pytest.mark.parametrize("stride,groups", [(1, 1), (2, 1), (1, 4), (2, 8)])
def test_conv_matches_flax_conv_with_torch_padding(stride, groups):
    x = _rand((2, 9, 9, 16))
    conv = layers.Conv(32, 3, stride, feature_group_count=groups)
    variables = conv.init(jax.random.key(1), x)
    assert variables["params"]["kernel"].shape == (3, 3, 16 // groups, 32)
    reference = nn.Conv(32, (3, 3), stride, padding=((1, 1), (1, 1)),
                        feature_group_count=groups, use_bias=False)
    np.testing.assert_allclose(conv.apply(variables, x), reference.apply(variables, x),
                               rtol=1e-5, atol=1e-5)


def test_stride2_padding_is_symmetric_not_xla_same():
    # For stride 2 on an even size, 'SAME' pads (0, 1); PyTorch pads (1, 1).
    x = _rand((1, 8, 8, 4))
    conv = layers.Conv(4, 3, 2)
    variables = conv.init(jax.random.key(1), x)
    same = nn.Conv(4, (3, 3), 2, padding="SAME", use_bias=False).apply(variables, x)
    assert not np.allclose(conv.apply(variables, x), same, atol=1e-3)


def test_conv_rejects_indivisible_groups():
    with pytest.raises(ValueError, match="divisible by feature_group_count=4"):
        layers.Conv(8, 3, feature_group_count=4).init(jax.random.key(0), jnp.zeros((1, 4, 4, 6)))


def test_conv_computes_in_dtype_with_param_dtype_params():
    conv = layers.Conv(8, 3, dtype=jnp.bfloat16, param_dtype=jnp.float32)
    x = _rand((1, 6, 6, 4))
    variables = conv.init(jax.random.key(0), x)
    assert variables["params"]["kernel"].dtype == jnp.float32
    assert conv.apply(variables, x).dtype == jnp.bfloat16


@pytest.mark.parametrize("channels,timm,legacy", [(256, 16, 16), (2048, 128, 128),
                                                  (72, 8, 4), (200, 16, 12)])
def test_se_width_rules(channels, timm, legacy):
    assert layers.se_features(channels, "timm") == timm
    assert layers.se_features(channels, "legacy") == legacy
    with pytest.raises(ValueError, match="unknown SE width rule"):
        layers.se_features(channels, "cadene")


def test_squeeze_excite_gate_equals_hand_computation():
    x = _rand((2, 3, 3, 32))
    se = layers.SqueezeExcite(rule="legacy")
    variables = se.init(jax.random.key(1), x)
    p = jax.tree.map(np.asarray, variables["params"])
    assert p["fc1"]["kernel"].shape == (32, 2) and p["fc2"]["kernel"].shape == (2, 32)
    squeezed = np.asarray(x).mean(axis=(1, 2))
    hidden = np.maximum(squeezed @ p["fc1"]["kernel"] + p["fc1"]["bias"], 0)
    gate = 1 / (1 + np.exp(-(hidden @ p["fc2"]["kernel"] + p["fc2"]["bias"])))
    out, state = se.apply(variables, x, mutable=["intermediates"])
    np.testing.assert_allclose(state["intermediates"]["gate"][0], gate, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out, np.asarray(x) * gate[:, None, None, :], rtol=1e-5,
                               atol=1e-6)


def test_drop_path_identity_at_eval_and_per_sample_in_training():
    x = jnp.ones((4096, 2, 2, 3))
    drop = layers.DropPath(0.25)
    assert drop.apply({}, x, deterministic=True) is x
    y = np.asarray(drop.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)}))
    per_sample = y.reshape(len(y), -1)
    # Each sample is either dropped or kept whole, rescaled by 1 / keep.
    np.testing.assert_allclose(np.unique(per_sample), [0.0, 1 / 0.75], rtol=1e-6)
    assert (per_sample.min(axis=1) == per_sample.max(axis=1)).all()
    assert abs((per_sample[:, 0] == 0).mean() - 0.25) < 0.03


def _torch_max_pool(x, k, s, p, ceil_mode):
    """Brute-force PyTorch MaxPool2d semantics (NHWC)."""
    n, h, w, c = x.shape
    def out_size(size):
        o = (size + 2 * p - k + ((s - 1) if ceil_mode else 0)) // s + 1
        return o - 1 if ceil_mode and (o - 1) * s >= size + p else o
    out = np.empty((n, out_size(h), out_size(w), c), x.dtype)
    for i in range(out.shape[1]):
        for j in range(out.shape[2]):
            r0, c0 = i * s - p, j * s - p
            window = x[:, max(r0, 0):min(r0 + k, h), max(c0, 0):min(c0 + k, w)]
            out[:, i, j] = window.max(axis=(1, 2))
    return out


@pytest.mark.parametrize("size", [7, 8, 112, 113])
@pytest.mark.parametrize("pad,ceil_mode", [(1, False), (0, True)])
def test_max_pool_matches_torch_semantics(size, pad, ceil_mode):
    x = np.asarray(_rand((1, size, size, 2)))
    got = ops.max_pool(jnp.asarray(x), 3, 2, pad, ceil_mode=ceil_mode)
    np.testing.assert_array_equal(got, _torch_max_pool(x, 3, 2, pad, ceil_mode))


@pytest.mark.parametrize("size", [6, 7])
def test_avg_pool_ceil_counts_only_covered_pixels(size):
    x = np.asarray(_rand((1, size, size, 3)))
    got = np.asarray(ops.avg_pool_ceil(jnp.asarray(x)))
    out = math.ceil(size / 2)
    assert got.shape == (1, out, out, 3)
    for i in range(out):
        for j in range(out):
            window = x[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2]
            np.testing.assert_allclose(got[:, i, j], window.mean(axis=(1, 2)), rtol=1e-6)


def test_global_pools():
    x = _rand((2, 3, 3, 5))
    avg, mx = np.asarray(x).mean(axis=(1, 2)), np.asarray(x).max(axis=(1, 2))
    np.testing.assert_allclose(layers.global_pool(x, "avg"), avg, rtol=1e-6)
    np.testing.assert_allclose(layers.global_pool(x, "max"), mx, rtol=1e-6)
    np.testing.assert_allclose(layers.global_pool(x, "avgmax"), (avg + mx) / 2, rtol=1e-6)
    np.testing.assert_allclose(layers.global_pool(x, "catavgmax"),
                               np.concatenate([avg, mx], -1), rtol=1e-6)
    with pytest.raises(ValueError, match="unknown global_pool 'mean'"):
        layers.global_pool(x, "mean")


@pytest.mark.parametrize("kind", layers.GLOBAL_POOLS)
def test_global_pools_keep_bfloat16_and_average_in_float32(kind):
    x = _rand((2, 16, 16, 5)) + 64  # a bfloat16 sum of these loses the fractions
    got = layers.global_pool(x.astype(jnp.bfloat16), kind)
    assert got.dtype == jnp.bfloat16
    want = layers.global_pool(x.astype(jnp.bfloat16).astype(jnp.float32), kind)
    np.testing.assert_array_equal(np.asarray(got, np.float32),
                                  np.asarray(want.astype(jnp.bfloat16), np.float32))


@pytest.mark.parametrize("kind,widths", [("7x7", [64]), ("deep", [32, 32, 64]),
                                         ("deep_tiered", [24, 32, 64]), ("cifar", [64]),
                                         ("legacy_deep", [32, 32, 64])])
def test_stem_widths_and_reductions(kind, widths):
    norm = functools.partial(nn.BatchNorm, momentum=0.9, epsilon=1e-5)
    stem = layers.Stem(kind, 64, 32, layers.Conv, norm, ops.max_pool)
    x = jnp.zeros((1, 32, 32, 3))
    variables = jax.eval_shape(lambda x: stem.init(jax.random.key(0), x, False), x)
    kernels = [variables["params"][f"conv{i + 1}"]["kernel"].shape[-1]
               for i in range(len(widths))]
    assert kernels == widths
    pre_pool, out = jax.eval_shape(lambda v, x: stem.apply(v, x, False), variables, x)
    expected = 32 if kind == "cifar" else 16
    assert pre_pool.shape == (1, expected, expected, 64)
    assert out.shape[1] == (32 if kind == "cifar" else 8)


def test_pools_are_differentiable_under_jit():
    x = jnp.ones((1, 7, 7, 2))
    grad = jax.jit(jax.grad(lambda x: ops.avg_pool_ceil(x).sum()))(x)[0, :, :, 0]
    # Interior pixels share a 2x2 window; the last row / column sit in 2x1 windows.
    assert grad[0, 0] == 0.25 and grad[0, 6] == 0.5 and grad[6, 6] == 1.0
    y = _rand((1, 8, 8, 2))
    grad = jax.jit(jax.grad(lambda y: ops.max_pool(y, 3, 2, 1).sum()))(y)
    assert grad.sum() == 16 * 2  # each of the 4x4x2 outputs routes 1 to its maximum
