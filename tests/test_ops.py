"""Every lowering computes XLA's numbers: outputs, input and kernel gradients."""

import os
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnext_jax import create_model, ops
from resnext_jax.ops.grouped import use_direct

FAST = [name for name in ops.LOWERINGS if name not in ("xla", "auto")]

# (groups, in per group, out per group, kernel, stride, size): narrow groups (direct forward),
# wide groups (XLA forward), a widening grouped conv (SENet-154), 1x1 dots, the 7x7 stem,
# odd sizes so that strided convolutions drop a last row.
CONV_CASES = [
    (4, 4, 4, 3, 1, 8),
    (4, 4, 4, 3, 2, 9),
    (2, 8, 8, 3, 2, 8),
    (2, 4, 8, 3, 1, 7),
    (2, 16, 16, 3, 2, 7),
    (1, 8, 16, 1, 1, 6),
    (1, 8, 16, 1, 2, 7),
    (1, 3, 8, 7, 2, 11),
    (1, 8, 8, 3, 1, 6),
]
TOL = {jnp.float32: 2e-5, jnp.bfloat16: 2e-2}


def _conv_inputs(groups, cin, cout, k, size, dtype, batch=2):
    kx, kk, kr = jax.random.split(jax.random.key(groups * 100 + cin * 10 + k), 3)
    x = jax.random.normal(kx, (batch, size, size, groups * cin)).astype(dtype)
    kernel = (jax.random.normal(kk, (k, k, cin, groups * cout)) / np.sqrt(k * k * cin))
    return x, kernel.astype(dtype), kr


def _conv_loss_and_grads(lowering, x, kernel, stride, groups, cotangent):
    pad = ((kernel.shape[0] - 1) // 2,) * 2

    def loss(x, kernel):
        y = ops.conv2d(x, kernel, strides=stride, padding=(pad, pad), feature_group_count=groups,
                       lowering=lowering)
        return jnp.sum(y.astype(jnp.float32) * cotangent), y

    (_, y), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(x, kernel)
    return y, grads


def _assert_close(actual, expected, dtype, what):
    actual, expected = np.asarray(actual, np.float32), np.asarray(expected, np.float32)
    assert actual.shape == expected.shape, what
    scale = max(float(np.abs(expected).max()), 1e-6)
    err = float(np.abs(actual - expected).max()) / scale
    assert err <= TOL[dtype], f"{what}: max error {err:.2e} relative to {scale:.2e}"


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "g{}_{}to{}_k{}_s{}_hw{}".format(*c))
def test_conv_lowerings_match_xla(case, dtype):
    groups, cin, cout, k, stride, size = case
    x, kernel, kr = _conv_inputs(groups, cin, cout, k, size, dtype)
    out = (size + 2 * ((k - 1) // 2) - k) // stride + 1
    cotangent = jax.random.normal(kr, (x.shape[0], out, out, groups * cout))
    y_ref, (dx_ref, dk_ref) = _conv_loss_and_grads("xla", x, kernel, stride, groups, cotangent)
    assert y_ref.dtype == dtype
    for lowering in FAST:
        y, (dx, dk) = _conv_loss_and_grads(lowering, x, kernel, stride, groups, cotangent)
        assert y.dtype == dtype and dx.dtype == dtype and dk.dtype == dtype
        _assert_close(y, y_ref, dtype, f"{lowering} output")
        _assert_close(dx, dx_ref, dtype, f"{lowering} input gradient")
        _assert_close(dk, dk_ref, dtype, f"{lowering} kernel gradient")


def test_direct_form_is_used_for_narrow_groups_only():
    assert use_direct((3, 3, 4, 128), 32) and use_direct((3, 3, 8, 256), 32)
    assert not use_direct((3, 3, 16, 512), 32)  # wide groups: XLA's forward
    assert not use_direct((3, 3, 4, 64), 1)  # dense: XLA's convolution


@pytest.mark.parametrize("lowering", FAST)
def test_vmap_and_grad_of_vmap(lowering):
    x, kernel, _ = _conv_inputs(4, 4, 4, 3, 8, jnp.float32, batch=6)
    x = x.reshape(3, 2, *x.shape[1:])  # a leading vmapped axis over batches of 2

    def f(lowering, kernel):
        conv = lambda v: ops.conv2d(v, kernel, strides=2, padding=((1, 1), (1, 1)),  # noqa: E731
                                    feature_group_count=4, lowering=lowering)
        return jnp.sum(jax.vmap(conv)(x) ** 2)

    ref, ref_grad = jax.jit(jax.value_and_grad(lambda k: f("xla", k)))(kernel)
    val, grad = jax.jit(jax.value_and_grad(lambda k: f(lowering, k)))(kernel)
    _assert_close(val, ref, jnp.float32, "vmapped output")
    _assert_close(grad, ref_grad, jnp.float32, "kernel gradient through vmap")


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("ceil_mode,pad,size", [(False, 1, 9), (True, 0, 8), (False, 1, 8)])
def test_max_pool_lowerings_match_xla(ceil_mode, pad, size, dtype):
    # Rounded ReLU outputs: many ties, so the gradient's choice of maximum is exercised.
    x = jnp.round(jax.nn.relu(jax.random.normal(jax.random.key(size), (2, size, size, 3))) * 2)
    x = x.astype(dtype)
    results = {}
    for lowering in ops.LOWERINGS:
        def loss(x, lowering=lowering):
            y = ops.max_pool(x, 3, 2, pad, ceil_mode=ceil_mode, lowering=lowering)
            return jnp.sum(y.astype(jnp.float32) * jnp.arange(y.size).reshape(y.shape)), y
        results[lowering] = jax.jit(jax.value_and_grad(loss, has_aux=True))(x)
    (_, y_ref), dx_ref = results["xla"]
    for lowering, ((_, y), dx) in results.items():
        np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(y_ref, np.float32))
        np.testing.assert_array_equal(np.asarray(dx, np.float32), np.asarray(dx_ref, np.float32),
                                      err_msg=f"{lowering} max-pool gradient")


@pytest.mark.parametrize("platform", ["cpu", "gpu", "tpu"])
def test_auto_picks_for_each_platform_a_lowering_with_xlas_numbers(platform):
    """What "auto" resolves to for a platform is a concrete lowering, and it computes the
    reference's output and gradients (checked on this CPU, which runs every lowering)."""
    chosen = ops.resolve("auto", platform)
    assert chosen in ops.LOWERINGS and chosen != "auto"
    assert ops.resolve(chosen, platform) == chosen
    x, kernel, kr = _conv_inputs(4, 4, 4, 3, 9, jnp.float32)
    cotangent = jax.random.normal(kr, (x.shape[0], 5, 5, 16))
    y_ref, grads_ref = _conv_loss_and_grads("xla", x, kernel, 2, 4, cotangent)
    y, grads = _conv_loss_and_grads(chosen, x, kernel, 2, 4, cotangent)
    for got, want, what in zip((y, *grads), (y_ref, *grads_ref), ("output", "dx", "dk"),
                               strict=True):
        _assert_close(got, want, jnp.float32, f"{chosen} {what}")


def test_unknown_lowerings_are_refused():
    with pytest.raises(ValueError, match="unknown lowering 'cudnn'"):
        ops.conv2d(jnp.zeros((1, 4, 4, 2)), jnp.zeros((1, 1, 2, 2)), lowering="cudnn")
    with pytest.raises(ValueError, match="unknown lowering"):
        ops.max_pool(jnp.zeros((1, 4, 4, 2)), lowering="fastest")


def test_tiny_seresnext_train_step_matches_xla():
    """A whole network (stem, max-pool, grouped / 1x1 / strided convs, SE): the same logits and
    gradients from ``fast`` under XLA's default compiler options and from the model as it comes
    (its default lowering) under ``ops.compiler_options()``.

    ``zero_init_last=False`` so that the residual branches reach the output, and maps of at
    least 2x2 at the last stage so that train-mode BatchNorm statistics are well conditioned.
    """
    x = jax.random.normal(jax.random.key(0), (4, 64, 64, 3))
    weights = jax.random.normal(jax.random.key(2), (4, 10))
    results = {}
    tuned = ops.compiler_options()
    for lowering, options in [("xla", {}), ("fast", {}), (None, tuned)]:
        fields = {"lowering": lowering} if lowering else {}
        model = create_model("tiny_seresnext", zero_init_last=False, **fields)
        variables = model.init(jax.random.key(1), x)

        def loss(params, model=model, variables=variables):
            logits, _ = model.apply({**variables, "params": params}, x, train=True,
                                    mutable=["batch_stats"])
            return jnp.sum(logits * weights), logits

        step = jax.jit(jax.value_and_grad(loss, has_aux=True), compiler_options=options)
        results[lowering, bool(options)] = step(variables["params"])
    (_, ref_logits), ref_grads = results.pop(("xla", False))
    flat_ref = dict(jax.tree_util.tree_leaves_with_path(ref_grads))
    for (_, logits), grads in results.values():
        _assert_close(logits, ref_logits, jnp.float32, "logits")
        for path, g in jax.tree_util.tree_leaves_with_path(grads):
            _assert_close(g, flat_ref[path], jnp.float32, jax.tree_util.keystr(path))


def test_compiler_options_are_this_platforms_and_compile_here():
    assert ops.compiler_options() == ops.compiler_options(backend=jax.default_backend())
    x = jnp.arange(12.0).reshape(3, 4)
    tuned = jax.jit(lambda x: jnp.sum(x * x, axis=0), compiler_options=ops.compiler_options())
    np.testing.assert_array_equal(tuned(x), jnp.sum(x * x, axis=0))


def test_inference_leaves_no_library_fusion_under_the_options():
    """One set of options serves inference too: its global pooling and SE squeezes are
    products, not reductions, so nothing goes to YNNPACK (which by default takes the
    products too, and a reduction swallowed the last blocks)."""
    model = create_model("tiny_seresnext")
    x = jnp.zeros((2, 64, 64, 3))
    variables = jax.eval_shape(model.init, jax.random.key(0), x)

    def fusions(options):
        compiled = jax.jit(model.apply, compiler_options=options).lower(variables, x).compile()
        return compiled.as_text().count("kind=kCustom")

    assert fusions({}) > 0  # XLA's defaults hand the products to YNNPACK
    assert fusions(ops.compiler_options()) == 0


@pytest.mark.parametrize("platform", ["cpu", "gpu", "tpu"])
def test_auto_dtype_is_the_platforms_fastest_and_a_named_dtype_stays(platform):
    fastest = ops.fastest_dtype(platform)
    assert jnp.issubdtype(fastest, jnp.floating)
    assert ops.resolve_dtype("auto", platform) == fastest
    assert ops.resolve_dtype(jnp.float16, platform) == jnp.float16


def test_a_model_with_dtype_auto_computes_in_the_fastest_dtype_of_the_platform():
    """Decided when the model is traced, for the platform compiled for: this CPU here (a TPU
    mesh in tests/test_aot.py). Parameters stay float32."""
    model = create_model("tiny_resnext", dtype="auto")
    x = jnp.zeros((1, 32, 32, 3))
    out, variables = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), x))
    assert out.dtype == ops.fastest_dtype(jax.default_backend())
    assert {p.dtype for p in jax.tree_util.tree_leaves(variables["params"])} == {
        jnp.dtype(jnp.float32)}


def test_huge_pages_hint(monkeypatch):
    assert ops.huge_pages_hint("gpu") is None
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")
    assert ops.huge_pages_hint("cpu") is None
    monkeypatch.setenv("GLIBC_TUNABLES", "")
    hint = ops.huge_pages_hint("cpu")
    if hint is not None:  # Linux, glibc >= 2.35, transparent huge pages available
        assert "GLIBC_TUNABLES=glibc.malloc.hugetlb=1" in hint


REEXEC = """
import os, sys
from resnext_jax.ops import reexec_with_huge_pages
print(os.getpid(), flush=True)
reexec_with_huge_pages()
print(os.getpid(), os.environ.get("GLIBC_TUNABLES"), sys.argv[1:])
"""


@pytest.mark.parametrize("tunables, after", [
    (None, "glibc.malloc.hugetlb=1"),
    ("glibc.malloc.arena_max=2", "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"),
    ("glibc.malloc.hugetlb=0", "glibc.malloc.hugetlb=0"),  # the opt-out
])
def test_command_lines_restart_themselves_with_huge_pages(tunables, after, monkeypatch):
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    if ops.huge_pages_hint("cpu") is None:  # with no tunable set, None means unsupported
        pytest.skip("no glibc >= 2.35 with transparent huge pages here")
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if tunables:
        env["GLIBC_TUNABLES"] = tunables
    done = subprocess.run([sys.executable, "-c", REEXEC, "--flag", "a b"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    *starts, last = done.stdout.splitlines()
    pid, seen, argv = last.split(None, 2)
    # One restart at most; exec keeps the process id, the command line and the environment.
    assert starts == [pid] * (1 if tunables == after else 2)
    assert seen == after and argv == "['--flag', 'a b']"


def test_direct_form_is_computed_once_per_use():
    """The compiled gradient holds the direct form's multiply-adds (>= 36 multiplies) in
    exactly two computations, the forward and the input gradient, however many consumers
    (BatchNorm statistics, normalisation, ReLU, the gradient) read its output."""
    x, kernel, _ = _conv_inputs(8, 4, 4, 3, 6, jnp.float32)

    def loss(x, kernel):
        y = ops.conv2d(x, kernel, padding=((1, 1), (1, 1)), feature_group_count=8, lowering="fast")
        mean, var = y.mean((0, 1, 2)), y.var((0, 1, 2))
        return jnp.sum(jax.nn.relu((y - mean) / jnp.sqrt(var + 1e-5)) ** 2)

    hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, kernel).compile().as_text()
    bodies = re.findall(r"^%[\w.\-]+ [^\n]*\{\n(.*?)\n\}", hlo, re.M | re.S)
    assert sum(body.count(" multiply(") >= 36 for body in bodies) == 2


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_direct_form_propagates_non_finite_values_like_xla(bad):
    """The direct form runs behind a conditional on the input's first element being finite,
    whose other branch is XLA's convolution: either way the same numbers."""
    x, kernel, _ = _conv_inputs(8, 4, 4, 3, 6, jnp.float32)
    assert use_direct(kernel.shape, 8)
    cases = [(x.at[0, 0, 0, 0].set(bad), kernel),  # the predicate's element: XLA's branch
             (x.at[1, 2, 3, 5].set(bad), kernel),
             (x, kernel.at[0, 0, 0, 0].set(bad)), (x, kernel.at[1, 2, 3, 5].set(bad))]
    for inputs, k in cases:
        out = {lo: ops.conv2d(inputs, k, padding=((1, 1), (1, 1)), feature_group_count=8,
                              lowering=lo)
               for lo in ("xla", "fast")}
        np.testing.assert_array_equal(np.isnan(out["fast"]), np.isnan(out["xla"]))
        finite = np.isfinite(out["xla"])
        np.testing.assert_allclose(np.asarray(out["fast"])[finite],
                                   np.asarray(out["xla"])[finite], rtol=1e-4, atol=1e-4)


SHARDED = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from resnext_jax import ops
    assert jax.device_count() == 4, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("data",))
    x = jax.random.normal(jax.random.key(0), (8, 9, 9, 16))
    x = jax.device_put(x, NamedSharding(mesh, P("data")))
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 4, 16)) / 6
    def loss(x, kernel, lowering):
        y = ops.conv2d(x, kernel, strides=2, padding=((1, 1), (1, 1)), feature_group_count=4,
                       lowering=lowering)
        y = ops.max_pool(jax.nn.relu(y), 3, 2, 1, lowering=lowering)
        return jnp.sum(y ** 2)
    out = {}
    for lowering in ("xla", "einsum_grad", "fast"):
        step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)), static_argnums=2)
        val, (dx, dk) = step(x, kernel, lowering)
        assert dx.sharding.is_equivalent_to(x.sharding, 4), dx.sharding
        out[lowering] = (val, dx, dk)
    for lowering in ("einsum_grad", "fast"):
        for a, b in zip(out[lowering], out["xla"]):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    print("sharded ok")
""")


@pytest.mark.e2e
def test_sharded_jit_over_four_cpu_devices():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-c", SHARDED], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and "sharded ok" in done.stdout, done.stderr[-3000:]
