"""The ResNet module as a classifier, a backbone and a submodule; its errors."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import resnext_jax as rx


def _images(n=2, size=32, seed=0):
    return jax.random.normal(jax.random.key(seed), (n, size, size, 3), jnp.float32)


@pytest.mark.parametrize("name,info", [
    ("resnext50_32x4d", [(64, 2), (256, 4), (512, 8), (1024, 16), (2048, 32)]),
    ("seresnext26t_32x4d", [(64, 2), (256, 4), (512, 8), (1024, 16), (2048, 32)]),
    ("legacy_senet154", [(128, 2), (256, 4), (512, 8), (1024, 16), (2048, 32)]),
    ("resnet18", [(64, 2), (64, 4), (128, 8), (256, 16), (512, 32)]),
    ("resnext29_8x64d", [(64, 1), (256, 1), (512, 2), (1024, 4)]),
])
def test_feature_info_and_feature_shapes(name, info):
    model = rx.create_model(name, num_classes=0)
    assert [(f["num_chs"], f["reduction"]) for f in model.feature_info] == info
    size = 64 if model.stem == "cifar" else 224
    x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    assert "fc" not in variables["params"]
    features = jax.eval_shape(functools.partial(model.apply, method="forward_intermediates"),
                              variables, x)
    assert set(features) == {level["module"] for level in model.feature_info}
    for level in model.feature_info:
        shape = features[level["module"]].shape
        side = size // level["reduction"]
        assert shape == (2, side, side, level["num_chs"]), level
    last = jax.eval_shape(functools.partial(model.apply, method="forward_features"),
                          variables, x)
    assert last.shape == features[model.feature_info[-1]["module"]].shape
    assert jax.eval_shape(model.apply, variables, x).shape == (2, model.num_features)


@pytest.mark.parametrize("name", ["tiny_resnet", "tiny_resnext", "tiny_seresnext",
                                  "tiny_seresnext_d", "tiny_legacy_seresnext",
                                  "tiny_legacy_senet", "tiny_resnext_cifar"])
def test_tiny_models_compute_logits_and_features(name):
    model = rx.create_model(name)
    x = _images(size=37)  # odd size: exercises ceil-mode and padding paths
    variables = model.init(jax.random.key(0), x)
    logits = model.apply(variables, x)
    assert logits.shape == (2, 10) and np.isfinite(logits).all()
    last = model.apply(variables, x, method=model.forward_features)
    pooled = model.apply(variables, last, pre_logits=True, method=model.forward_head)
    np.testing.assert_array_equal(last, model.apply(variables, x, method="forward_intermediates")
                                  [model.feature_info[-1]["module"]])
    # The classifier's input is the pooled last stage.
    np.testing.assert_allclose(pooled @ variables["params"]["fc"]["kernel"]
                               + variables["params"]["fc"]["bias"], logits, rtol=1e-4,
                               atol=1e-5)


@pytest.mark.parametrize("pool,width", [("avg", 512), ("max", 512), ("avgmax", 512),
                                        ("catavgmax", 1024)])
def test_headless_model_returns_pooled_features(pool, width):
    model = rx.create_model("tiny_resnext", num_classes=0, global_pool=pool)
    x = _images()
    variables = model.init(jax.random.key(0), x)
    assert model.apply(variables, x).shape == (2, width) == (2, model.num_features)


def test_zero_init_makes_a_fresh_block_the_identity_of_its_shortcut():
    # With bn3's scale zeroed the residual branch is 0, so a block returns relu(shortcut).
    model = rx.ResNet(layers=(2,), stage_planes=(8,), stem_features=16, cardinality=4,
                      base_width=16, se="timm", num_classes=0)
    x = _images(size=16)

    def run(m, x):
        stem = m.stem_layers(x, False)[1]
        first = m.stages[0][0](stem, False)  # projection shortcut (16 -> 32 channels)
        return stem, first, m.stages[0][1](first, False)  # identity shortcut

    variables = model.init(jax.random.key(0), x)
    stem, first, second = model.apply(variables, x, method=run)
    np.testing.assert_array_equal(second, first)  # first >= 0, so relu(first) == first
    np.testing.assert_allclose(first, nn.relu(_projection(variables, stem)), rtol=1e-5,
                               atol=1e-6)
    variables = model.clone(zero_init_last=False).init(jax.random.key(0), x)
    stem, first, second = model.apply(variables, x, method=run)
    assert not np.allclose(first, nn.relu(_projection(variables, stem)), atol=1e-3)
    assert not np.allclose(second, first, atol=1e-3)


def _projection(variables, x):
    """The block's 1x1 projection + eval-mode BN, by hand."""
    p = variables["params"]["layer1_0"]["downsample"]
    s = variables["batch_stats"]["layer1_0"]["downsample"]["bn"]
    y = jnp.einsum("nhwc,cd->nhwd", x, p["conv"]["kernel"][0, 0])
    return (y - s["mean"]) / jnp.sqrt(s["var"] + 1e-5) * p["bn"]["scale"] + p["bn"]["bias"]


def test_bf16_compute_with_fp32_params_is_close_to_fp32():
    x = _images(size=64)
    fp32 = rx.create_model("tiny_seresnext", zero_init_last=False)
    bf16 = fp32.clone(dtype=jnp.bfloat16)
    variables = fp32.init(jax.random.key(0), x)
    bf16_variables = bf16.init(jax.random.key(0), x)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(bf16_variables))
    logits16 = bf16.apply(variables, x)
    assert logits16.dtype == jnp.bfloat16
    logits32 = fp32.apply(variables, x)
    scale = np.abs(logits32).max()
    np.testing.assert_allclose(logits16.astype(jnp.float32), logits32, atol=0.05 * scale)


def test_drop_path_and_dropout_only_in_training():
    model = rx.create_model("tiny_resnext", drop_rate=0.5, drop_path_rate=0.3,
                            zero_init_last=False)
    x = _images()
    variables = model.init(jax.random.key(0), x)
    np.testing.assert_array_equal(model.apply(variables, x), model.apply(variables, x))
    train = [model.apply(variables, x, train=True, mutable=["batch_stats"],
                         rngs={"dropout": jax.random.key(i)})[0] for i in range(2)]
    assert not np.allclose(train[0], train[1])
    # Stochastic depth grows linearly with the block index, timm's rule.
    assert [b.drop_path for b in _blocks(model, variables, x)] == pytest.approx(
        [0.0, 0.1, 0.2, 0.3])


def _blocks(model, variables, x):
    return model.apply(variables, x, method=lambda m, x: [
        b for stage in m.stages for b in stage])


def test_remat_gives_the_same_values_and_gradients():
    x = _images()
    model = rx.create_model("tiny_seresnext", zero_init_last=False)
    variables = model.init(jax.random.key(0), x)

    def loss(params, m):
        out, _ = m.apply({**variables, "params": params}, x, train=True,
                         mutable=["batch_stats"])
        return jnp.sum(out ** 2)

    plain = jax.jit(jax.value_and_grad(loss), static_argnums=1)(variables["params"], model)
    remat = jax.jit(jax.value_and_grad(loss), static_argnums=1)(
        variables["params"], model.clone(remat=True))
    np.testing.assert_allclose(plain[0], remat[0], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 plain[1], remat[1])


class Detector(nn.Module):
    """A user's model with a ResNeXt backbone as a submodule."""

    @nn.compact
    def __call__(self, x, train=False):
        backbone = rx.create_model("tiny_seresnext", num_classes=0)
        features = backbone.forward_intermediates(x, train)
        return nn.Dense(4)(features["layer3"].mean(axis=(1, 2)))


def test_backbone_as_submodule_under_jit_and_grad_in_both_bn_modes():
    x = _images()
    detector = Detector()
    variables = detector.init(jax.random.key(0), x)
    assert "ResNet_0" in variables["params"] and "batch_stats" in variables

    @jax.jit
    def loss_fn(params, batch_stats, train):
        return jnp.mean(detector.apply({"params": params, "batch_stats": batch_stats}, x,
                                       train=True, mutable=["batch_stats"])[0] ** 2)

    grads = jax.grad(loss_fn)(variables["params"], variables["batch_stats"], True)
    assert jax.tree.structure(grads) == jax.tree.structure(variables["params"])
    _, updated = detector.apply(variables, x, train=True, mutable=["batch_stats"])
    before = variables["batch_stats"]["ResNet_0"]["stem"]["bn1"]["mean"]
    after = updated["batch_stats"]["ResNet_0"]["stem"]["bn1"]["mean"]
    assert not np.allclose(before, after)  # train mode updates running statistics
    eval_out = jax.jit(detector.apply)(variables, x)
    assert eval_out.shape == (2, 4)


@pytest.mark.parametrize("name", ["tiny_resnext", "tiny_seresnext"])
def test_a_few_sgd_steps_reduce_the_loss(name):
    model = rx.create_model(name, num_classes=4)
    x = _images(n=8, size=32)
    labels = jnp.arange(8) % 4
    variables = model.init(jax.random.key(0), x)
    tx = optax.sgd(0.05, momentum=0.9)

    @jax.jit
    def step(params, batch_stats, opt_state):
        def loss_fn(params):
            logits, state = model.apply({"params": params, "batch_stats": batch_stats}, x,
                                        train=True, mutable=["batch_stats"])
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            return loss, state["batch_stats"]
        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), batch_stats, opt_state, loss

    params, batch_stats = variables["params"], variables["batch_stats"]
    opt_state = tx.init(params)
    losses = []
    for _ in range(8):
        params, batch_stats, opt_state, loss = step(params, batch_stats, opt_state)
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("shape,dtype,error,match", [
    ((32, 32, 3), jnp.float32, ValueError, "rank 4"),
    ((1, 3, 32, 32), jnp.float32, ValueError, "looks like NCHW"),
    ((1, 32, 32, 1), jnp.float32, ValueError, "expected 3 channels"),
    ((1, 32, 32, 3), jnp.uint8, TypeError, "floating-point"),
    ((1, 16, 16, 3), jnp.float32, ValueError, "smaller than the network's total stride 32"),
    ((0, 32, 32, 3), jnp.float32, ValueError, "an empty batch"),
])
def test_bad_input_errors(shape, dtype, error, match):
    model = rx.create_model("tiny_resnext")
    with pytest.raises(error, match=match):
        jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct(shape, dtype))


@pytest.mark.parametrize("overrides,match", [
    (dict(block="basic"), "basic block has no grouped conv"),
    (dict(layers=(1, 1, 1)), "one depth per stage"),
    (dict(layers=(1, 0, 1, 1)), "every stage needs a block"),
    (dict(global_pool="mean"), "global_pool='mean'"),
    (dict(se="cadene"), "se='cadene'"),
    (dict(drop_path_rate=1.5), "drop_path_rate"),
    (dict(stem="huge"), "unknown stem 'huge'"),
])
def test_contradictory_options_are_named(overrides, match):
    model = rx.create_model("tiny_resnext", **overrides)
    with pytest.raises(ValueError, match=match):
        jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 32, 32, 3),
                                                                           jnp.float32))


def test_train_from_freezes_the_parts_before_it_at_apply_time():
    """No gradient reaches the parts before ``train_from``, and their BatchNorm stays in
    eval mode (statistics unchanged); the later parts train."""
    model = rx.ResNet(layers=(1, 1, 1), stage_planes=(4, 8, 8), stem_features=8, stem_width=8,
                      cardinality=2, base_width=32, num_classes=3, zero_init_last=False)
    x = _images(size=16)
    variables = model.init(jax.random.key(0), x)

    def loss(params):
        out, updates = model.apply({**variables, "params": params}, x, train=True,
                                   train_from="layer2", mutable=["batch_stats"])
        return jnp.sum(out ** 2), updates["batch_stats"]

    grads, stats = jax.grad(loss, has_aux=True)(variables["params"])
    for part, trains in [("stem", False), ("layer1_0", False), ("layer2_0", True),
                         ("layer3_0", True), ("fc", True)]:
        moved = any(np.any(g != 0) for g in jax.tree_util.tree_leaves(grads[part]))
        assert moved == trains, part
        if part != "fc":
            same = jax.tree_util.tree_map(np.array_equal, stats[part],
                                          variables["batch_stats"][part])
            assert all(jax.tree_util.tree_leaves(same)) != trains, part
    with pytest.raises(ValueError, match="train_from='layer9' is not one of"):
        model.apply(variables, x, train_from="layer9")


@pytest.mark.parametrize("option,hint", [("features_only", "forward_intermediates"),
                                         ("train_from", "when the model is applied")])
def test_timm_options_that_are_not_fields_say_what_to_use(option, hint):
    with pytest.raises(TypeError, match=hint):
        rx.create_model("tiny_resnext", **{option: True})
