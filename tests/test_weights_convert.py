"""Our own weight files (msgpack + architecture) and the conversion command line."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_weights_io import _assert_same, _hub_cache, go_offline, random_model

import resnext_jax as rx
from resnext_jax import convert
from resnext_jax.weights import (
    WeightsError,
    WeightsFileError,
    export_torch,
    read_state_dict,
    read_weights,
)


@pytest.fixture(scope="module")
def tiny() -> tuple[rx.ResNet, dict]:
    return random_model("tiny_seresnext")


def test_save_and_load_our_weights(tiny: tuple, tmp_path: object) -> None:
    model, variables = tiny
    path = os.path.join(str(tmp_path), "w.msgpack")
    rx.save_weights(path, variables, model, model_name="tiny_seresnext")
    _assert_same(rx.load_weights(path, model), variables)
    rebuilt, loaded = rx.load_model(path, dtype=jnp.bfloat16)
    assert rebuilt.layers == model.layers and rebuilt.dtype == jnp.bfloat16
    _assert_same(loaded, variables)
    built, from_create = rx.create_model("tiny_seresnext", pretrained=path)
    _assert_same(from_create, variables)


def test_our_weights_refuse_another_architecture(tiny: tuple, tmp_path: object) -> None:
    model, variables = tiny
    path = os.path.join(str(tmp_path), "w.msgpack")
    rx.save_weights(path, variables, model, model_name="tiny_seresnext")
    with pytest.raises(WeightsError, match="weights of tiny_seresnext.*se: file 'timm', model "
                       "None"):
        rx.load_weights(path, rx.create_model("tiny_resnext"))
    with pytest.raises(WeightsError, match="10-class head.*num_classes=3"):
        rx.load_pretrained(rx.create_model("tiny_seresnext", num_classes=3), path)
    with pytest.warns(UserWarning, match="re-initialised for 3 classes"):
        _, head3 = rx.create_model("tiny_seresnext", pretrained=path, num_classes=3)
    assert head3["params"]["fc"]["kernel"].shape == (512, 3)
    np.testing.assert_array_equal(head3["params"]["layer4_0"]["conv2"]["kernel"],
                                  variables["params"]["layer4_0"]["conv2"]["kernel"])


def test_truncated_weights_file(tiny: tuple, tmp_path: object) -> None:
    model, variables = tiny
    path = os.path.join(str(tmp_path), "w.msgpack")
    rx.save_weights(path, variables, model)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(WeightsFileError, match="w.msgpack is not a readable resnext_jax"):
        rx.load_weights(path, model)


def test_cli_round_trip(tiny: tuple, tmp_path: object, capsys: pytest.CaptureFixture) -> None:
    model, variables = tiny
    src = os.path.join(str(tmp_path), "timm.safetensors")
    export_torch(src, variables, model)
    ours = os.path.join(str(tmp_path), "ours.msgpack")
    assert convert.main([src, ours]) == 0  # the model is found from the shapes
    report = capsys.readouterr().out
    assert "tiny_seresnext (the only zoo model the checkpoint's shapes fit)" in report
    assert "layout:   timm" in report and "read back identical" in report
    assert "no missing, unexpected or mismatched keys" in report
    meta, saved = read_weights(ours)
    assert meta["model_name"] == "tiny_seresnext"
    _assert_same(saved, variables)
    back = os.path.join(str(tmp_path), "back.safetensors")
    assert convert.main([ours, back]) == 0
    assert "from the file's metadata" in capsys.readouterr().out
    original, exported = read_state_dict(src), read_state_dict(back)
    assert original.keys() == exported.keys()
    for key in original:
        np.testing.assert_array_equal(original[key], exported[key])


def test_cli_reports_errors(tiny: tuple, tmp_path: object,
                            capsys: pytest.CaptureFixture) -> None:
    model, variables = tiny
    src = os.path.join(str(tmp_path), "timm.safetensors")
    export_torch(src, variables, model)
    out = os.path.join(str(tmp_path), "x.msgpack")
    assert convert.main([src, out, "--model", "tiny_resnext"]) == 1
    err = capsys.readouterr().err
    assert "error: cannot load" in err and "'tiny_resnext'" in err
    assert "unexpected in the file: layer1.0.se.fc1.bias" in err
    assert not os.path.exists(out)
    assert convert.main([src, os.path.join(str(tmp_path), "x.npz"), "--model",
                         "tiny_seresnext"]) == 1
    assert "must end in .msgpack or .safetensors" in capsys.readouterr().err


def test_cli_new_head(tiny: tuple, tmp_path: object, capsys: pytest.CaptureFixture) -> None:
    model, variables = tiny
    src = os.path.join(str(tmp_path), "timm.safetensors")
    export_torch(src, variables, model)
    out = os.path.join(str(tmp_path), "five.msgpack")
    with pytest.warns(UserWarning):
        assert convert.main([src, out, "--model", "tiny_seresnext", "--num-classes", "5"]) == 0
    assert "new head for 5 classes" in capsys.readouterr().out
    five, loaded = rx.load_model(out)
    assert five.num_classes == 5
    assert jax.eval_shape(five.apply, loaded, jnp.ones((1, 32, 32, 3))).shape == (1, 5)


def test_cli_hub_weight_set_keeps_its_preprocessing(tmp_path: object,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture) -> None:
    offline_cache = go_offline(tmp_path, monkeypatch)
    model, variables = random_model("seresnext26t_32x4d")  # full size, random values
    exported = os.path.join(str(tmp_path), "export.safetensors")
    export_torch(exported, variables, model)
    _hub_cache(offline_cache, "timm/seresnext26t_32x4d.bt_in1k", exported)
    out = os.path.join(str(tmp_path), "w.msgpack")
    assert convert.main(["timm/seresnext26t_32x4d.bt_in1k", out]) == 0
    report = capsys.readouterr().out
    assert "seresnext26t_32x4d (the only zoo model" in report
    assert "16,806,976 parameters" in report
    assert "preprocess: 224x224 crop, crop_pct 0.8750, bicubic" in report
    assert read_weights(out)[0]["pretrained"] == "seresnext26t_32x4d.bt_in1k"
