"""The zoo as Flax NNX modules: the same outputs, gradients and weights as the linen models,
BatchNorm switched by .train() / .eval(), and an NNX training loop that learns."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import resnext_jax as rx


@pytest.fixture(scope="module")
def linen():
    model = rx.create_model("tiny_seresnext", zero_init_last=False)
    x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
    return model, jax.jit(model.init)(jax.random.key(0), x[:1]), x


def test_nnx_gives_the_linen_outputs_in_both_modes(linen):
    model, variables, x = linen
    module = rx.nnx.ResNetNNX(model, variables=variables)
    train_out, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    np.testing.assert_array_equal(module(x), train_out)  # NNX modules start in train mode
    stats = jax.tree_util.tree_leaves(module.variables()["batch_stats"])
    for got, want in zip(stats, jax.tree_util.tree_leaves(updates["batch_stats"]), strict=True):
        np.testing.assert_array_equal(got, want)  # the running statistics moved
    module.eval()
    np.testing.assert_array_equal(module(x), model.apply(module.variables(), x))
    want = model.apply(module.variables(), x, method=model.forward_intermediates)
    got = module.forward_intermediates(x)
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    np.testing.assert_array_equal(module.forward_features(x), want["layer4"])


def test_nnx_gives_the_linen_gradients(linen):
    model, variables, x = linen

    def linen_loss(params):
        out, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                             train=True, mutable=["batch_stats"])
        return jnp.mean(out ** 2)

    want = jax.jit(jax.grad(linen_loss))(variables["params"])
    module = rx.nnx.ResNetNNX(model, variables=variables)
    got = nnx.jit(nnx.grad(lambda m: jnp.mean(m(x) ** 2)))(module)
    flat = {path[1:]: leaf.get_value() for path, leaf in got.flat_state()}
    for path, value in jax.tree_util.tree_flatten_with_path(want)[0]:
        key = tuple(p.key for p in path)
        np.testing.assert_allclose(flat[key], value, rtol=1e-5, atol=1e-6, err_msg=str(key))


def test_nnx_loads_pretrained_weights_with_their_transform(linen, tmp_path):
    model, variables, x = linen
    cfg = rx.PretrainedCfg("tiny_seresnext.x", None, None, rx.Transform(size=48))
    rx.Pretrained(model, variables, cfg, None).save(tmp_path / "w.msgpack")
    module = rx.nnx.load(tmp_path / "w.msgpack")
    module.eval()
    assert module.transform.size == 48
    np.testing.assert_allclose(module(x), model.apply(variables, x), rtol=1e-6, atol=1e-6)


def test_an_nnx_training_loop_lowers_the_loss():
    model = rx.nnx.create_model("tiny_seresnext", num_classes=3)
    optimizer = nnx.Optimizer(model, optax.adamw(1e-2), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, images, labels):
        def loss_fn(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(images), labels).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    images = jax.random.normal(jax.random.key(0), (8, 32, 32, 3))
    labels = jnp.arange(8) % 3
    losses = [float(step(model, optimizer, images, labels)) for _ in range(6)]
    assert losses[-1] < 0.5 * losses[0], losses
