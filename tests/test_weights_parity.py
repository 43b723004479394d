"""Ported weights reproduce the reference implementations' outputs (fp32, max abs <= 1e-4).

Golden fixtures: tests/make_weight_fixtures.py builds small configurations of every source
layout with torchvision / timm (random weights and BN statistics) and stores their outputs.
The live test repeats the check on full-size timm models when torch and timm are installed.
"""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file
from weight_fixtures import FIXTURES, MANIFEST, fixture_model, fixture_state

import resnext_jax as rx
from resnext_jax.weights import detect_layout, torch_to_flax

TOL = 1e-4


def _nhwc(x: np.ndarray) -> np.ndarray:
    return x.transpose(0, 2, 3, 1) if x.ndim == 4 else x


@pytest.mark.parametrize("name", sorted(MANIFEST["fixtures"]))
def test_fixture_parity(name: str) -> None:
    entry = MANIFEST["fixtures"][name]
    state = fixture_state(name)
    # timm's plain ResNeXt uses exactly torchvision's names, so it is detected as such.
    plain_timm = entry["layout"] == "timm" and "se" not in entry["resnet"]
    assert detect_layout(state) == ("torchvision" if plain_timm else entry["layout"])
    model = fixture_model(name)
    variables, report = torch_to_flax(state, model)
    assert report.ok and report.loaded > 0
    assert rx.count_params(variables) == entry["params"]
    ref = load_file(os.path.join(FIXTURES, f"{name}.outputs.safetensors"))
    x = jnp.asarray(_nhwc(ref["input"]))
    features = model.apply(variables, x, method=model.forward_intermediates)
    features["pre_logits"] = model.apply(variables, features["layer4"], pre_logits=True,
                                         method=model.forward_head)
    features["logits"] = model.apply(variables, features["layer4"], method=model.forward_head)
    for key, want in ref.items():
        if key == "input":
            continue
        got = np.asarray(features[key])
        assert got.shape == _nhwc(want).shape, key
        err = np.abs(got - _nhwc(want)).max()
        assert err <= TOL, f"{name} {key}: max abs diff {err:.2e} > {TOL}"


def _randomise_bn(model: object, seed: int) -> None:
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(0.4 * torch.rand(n, generator=gen) + 0.8)
                module.bias.copy_(0.1 * torch.randn(n, generator=gen))
                module.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                module.running_var.copy_(0.5 * torch.rand(n, generator=gen) + 0.75)


@pytest.mark.e2e  # full-size models in both frameworks: minutes on 2 cores
@pytest.mark.parametrize("name", ["resnext50_32x4d", "seresnext50_32x4d"])
def test_live_full_size_parity(name: str, tmp_path: object) -> None:
    torch = pytest.importorskip("torch", reason="live parity needs torch (.ci/run installs it)")
    timm = pytest.importorskip("timm", reason="live parity needs timm (.ci/run installs it)")
    from safetensors.torch import save_file

    torch.manual_seed(0)
    reference = timm.create_model(name, pretrained=False).eval()
    _randomise_bn(reference, 1)
    path = os.path.join(str(tmp_path), f"{name}.safetensors")
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, path)
    x = torch.randn(2, 3, 160, 128, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        stages = reference.forward_intermediates(x, intermediates_only=True)
        want = {"stem": stages[0], **{f"layer{i}": s for i, s in enumerate(stages[1:], 1)},
                "logits": reference(x)}
    loaded = rx.load(path, name)
    model, variables = loaded.model, loaded.variables
    xs = jnp.asarray(x.numpy().transpose(0, 2, 3, 1))
    got = model.apply(variables, xs, method=model.forward_intermediates)
    got["logits"] = model.apply(variables, xs)
    for key, ref in want.items():
        err = np.abs(np.asarray(got[key]) - _nhwc(ref.numpy())).max()
        print(f"{name} {key}: max abs diff {err:.2e}, max |ref| {ref.abs().max():.2f}")
        assert err <= TOL, f"{name} {key}: max abs diff {err:.2e} > {TOL}"


@pytest.mark.parametrize("name", sorted(MANIFEST["fixtures"]))
def test_export_loads_strictly_into_the_reference(name: str, tmp_path: object) -> None:
    torch = pytest.importorskip("torch", reason="needs torch (.ci/run installs it)")
    pytest.importorskip("timm", reason="needs timm (.ci/run installs it)")
    pytest.importorskip("torchvision", reason="needs torchvision (.ci/run installs it)")
    from make_weight_fixtures import FIXTURES as BUILDERS
    from safetensors.torch import load_file as load_torch

    loaded = rx.load(os.path.join(FIXTURES, f"{name}.safetensors"), fixture_model(name))
    path = os.path.join(str(tmp_path), "export.safetensors")
    loaded.export_torch(path, layout=MANIFEST["fixtures"][name]["layout"])
    reference = BUILDERS[name][2]()
    reference.load_state_dict(load_torch(path), strict=True)
    ref = load_file(os.path.join(FIXTURES, f"{name}.outputs.safetensors"))
    with torch.no_grad():
        logits = reference.eval()(torch.from_numpy(ref["input"])).numpy()
    np.testing.assert_array_equal(logits, ref["logits"])
