"""Serving and sharing: StableHLO and ONNX export (any batch size), Hub-ready folders that
this project, timm and PyTorch read."""

from __future__ import annotations

import importlib.util
import json
import logging
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import resnext_jax as rx
from resnext_jax import export
from resnext_jax.weights import read_state_dict


def _random(name: str) -> rx.Pretrained:
    model = rx.create_model(name, zero_init_last=False)  # every residual branch counts
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    cfg = rx.PretrainedCfg(f"{name}.test", None, 42.5,
                           rx.Transform(size=32, interpolation="bicubic"))
    return rx.Pretrained(model, variables, cfg, None)


@pytest.fixture(scope="module")
def tiny():
    return _random("tiny_seresnext")


@pytest.mark.parametrize("output", ["logits", "features"])
def test_stablehlo_export_runs_any_batch_size(tiny, tmp_path, output):
    spec = export.export(tiny, tmp_path, output=output)
    assert spec["transform"]["interpolation"] == "bicubic" and spec["input"]["shape"][0] == \
        "batch"
    run, _ = export.load_exported(tmp_path)
    model = tiny.model
    method = model.forward_intermediates if output == "features" else model.__call__
    for batch in (1, 3):  # traced once, with a symbolic batch
        x = np.random.default_rng(batch).normal(size=(batch, 32, 32, 3)).astype(np.float32)
        for got, want in zip(jax.tree_util.tree_leaves(run(x)),
                             jax.tree_util.tree_leaves(model.apply(tiny.variables, x,
                                                                   method=method)),
                             strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_export_command_line_and_its_mistakes(tiny, tmp_path, capsys):
    tiny.save(tmp_path / "w.msgpack")
    assert export.main([str(tmp_path / "w.msgpack"), str(tmp_path / "out"), "--output",
                        "pre_logits"]) == 0
    run, spec = export.load_exported(tmp_path / "out")
    assert run(np.zeros((2, 32, 32, 3), np.float32)).shape == (2, 512)
    headless = rx.Pretrained(tiny.model.clone(num_classes=0), {
        "params": {k: v for k, v in tiny.variables["params"].items() if k != "fc"},
        "batch_stats": tiny.variables["batch_stats"]}, tiny.cfg, None)
    with pytest.raises(rx.errors.UsageError, match="no classifier head"):
        export.export(headless, tmp_path / "x")


@pytest.mark.parametrize("name,output", [("tiny_seresnext", "logits"),
                                         ("tiny_resnext", "pre_logits"),
                                         ("tiny_seresnext", "features")])
def test_onnx_export_runs_any_batch_size_in_onnxruntime(name, output, tmp_path, caplog):
    if importlib.util.find_spec("jax2onnx") is None:  # not imported here: export imports it
        pytest.skip("jax2onnx is not installed")
    ort = pytest.importorskip("onnxruntime")
    pretrained = _random(name)
    pretrained.save(tmp_path / "w.msgpack")
    with caplog.at_level(logging.DEBUG):
        assert export.main([str(tmp_path / "w.msgpack"), str(tmp_path / "out"), "--output",
                            output, "--format", "onnx"]) == 0
    # The converter's plugin scan and serializer notices stay out of the console.
    assert not [r for r in caplog.records if r.name.startswith(("jax2onnx", "onnx_ir"))]
    spec = json.loads((tmp_path / "out" / "model.json").read_text())
    assert spec["format"] == "onnx" and spec["input"]["shape"][0] == "batch"
    session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == spec["outputs"]
    model, variables = pretrained.model, pretrained.variables
    for batch in (1, 3):  # one graph, a dynamic batch dimension
        x = np.random.default_rng(batch).normal(size=(batch, 32, 32, 3)).astype(np.float32)
        got = dict(zip(spec["outputs"], session.run(None, {"images": x}), strict=True))
        if output == "features":
            want = model.apply(variables, x, method=model.forward_intermediates)
        elif output == "logits":
            want = {output: model.apply(variables, x)}
        else:
            last = model.apply(variables, x, method=model.forward_features)
            want = {output: model.apply(variables, last, pre_logits=True,
                                        method=model.forward_head)}
        assert got.keys() == want.keys()
        for key, value in want.items():
            np.testing.assert_allclose(got[key], value, rtol=1e-4, atol=1e-4, err_msg=key)


def test_onnx_export_without_the_converter_says_what_to_install(tiny, tmp_path, monkeypatch,
                                                                capsys):
    monkeypatch.setitem(sys.modules, "jax2onnx", None)  # as if not installed
    tiny.save(tmp_path / "w.msgpack")
    assert export.main([str(tmp_path / "w.msgpack"), str(tmp_path / "out"),
                        "--format", "onnx"]) == 2
    assert "pip install --no-deps jax2onnx" in capsys.readouterr().err
    with pytest.raises(rx.errors.UsageError, match="format='tflite'"):
        export.export(tiny, tmp_path / "x", format="tflite")


def test_save_pretrained_reads_back_every_way(tiny, tmp_path):
    folder = rx.save_pretrained(tiny, tmp_path / "hub", metrics={"eval/top1": 0.425},
                                training_config={"batch_size": 64})
    ours = rx.load(folder)  # model.msgpack: the same arrays, architecture and transform
    for a, b in zip(jax.tree_util.tree_leaves(ours.variables),
                    jax.tree_util.tree_leaves(tiny.variables), strict=True):
        np.testing.assert_array_equal(a, b)
    assert ours.cfg == tiny.cfg
    # The PyTorch-layout copy, as timm and PyTorch read it: the same logits.
    torch_layout = rx.load(f"{folder}/model.safetensors")
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(torch_layout.model.apply(torch_layout.variables, x),
                               tiny.model.apply(tiny.variables, x), rtol=1e-6, atol=1e-6)
    assert "fc.weight" in read_state_dict(f"{folder}/model.safetensors")
    config = json.loads((tmp_path / "hub" / "config.json").read_text())
    assert config["architecture"] == "tiny_seresnext" and config["num_classes"] == 10
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32]
    assert config["pretrained_cfg"]["interpolation"] == "bicubic"
    card = (tmp_path / "hub" / "README.md").read_text()
    assert "top-1: 42.500 %" in card and '"batch_size": 64' in card and "eval/top1" in card
