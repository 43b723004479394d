"""The conversion command line: PyTorch layouts <-> our own files, with a report."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hub_cache import go_offline, hub_cache
from weight_fixtures import assert_same_variables, random_model

import resnext_jax as rx
from resnext_jax import convert
from resnext_jax.weights import native, read_state_dict


@pytest.fixture(scope="module")
def tiny() -> tuple[rx.ResNet, dict]:
    return random_model("tiny_seresnext")


def _export(tiny: tuple, path: str) -> None:
    model, variables = tiny
    rx.Pretrained(model, variables, rx.PretrainedCfg("tiny_seresnext.x", None, None),
                  None).export_torch(path)


def test_cli_round_trip(tiny: tuple, tmp_path: object, capsys: pytest.CaptureFixture) -> None:
    _, variables = tiny
    src = os.path.join(str(tmp_path), "timm.safetensors")
    _export(tiny, src)
    ours = os.path.join(str(tmp_path), "ours.msgpack")
    assert convert.main([src, ours]) == 0  # the model is found from the shapes
    report = capsys.readouterr().out
    assert "model:    tiny_seresnext" in report
    assert "layout:   timm" in report and "read back identical" in report
    assert "no missing, unexpected or mismatched keys" in report
    meta, saved = native.read(ours)
    assert meta["model_name"] == "tiny_seresnext"
    assert_same_variables(saved, variables)
    back = os.path.join(str(tmp_path), "back.safetensors")
    assert convert.main([ours, back]) == 0
    original, exported = read_state_dict(src), read_state_dict(back)
    assert original.keys() == exported.keys()
    for key in original:
        np.testing.assert_array_equal(original[key], exported[key])


def test_cli_reports_errors(tiny: tuple, tmp_path: object,
                            capsys: pytest.CaptureFixture) -> None:
    src = os.path.join(str(tmp_path), "timm.safetensors")
    _export(tiny, src)
    out = os.path.join(str(tmp_path), "x.msgpack")
    assert convert.main([src, out, "--model", "tiny_resnext"]) == 2
    err = capsys.readouterr().err
    assert "error: cannot load" in err and "'tiny_resnext'" in err
    assert "unexpected in the file: layer1.0.se.fc1.bias" in err
    assert not os.path.exists(out)
    assert convert.main([src, os.path.join(str(tmp_path), "x.npz"), "--model",
                         "tiny_seresnext"]) == 2
    assert "must end in .msgpack or .safetensors" in capsys.readouterr().err


def test_cli_new_head(tiny: tuple, tmp_path: object, capsys: pytest.CaptureFixture) -> None:
    src = os.path.join(str(tmp_path), "timm.safetensors")
    _export(tiny, src)
    out = os.path.join(str(tmp_path), "five.msgpack")
    with pytest.warns(UserWarning):
        assert convert.main([src, out, "--model", "tiny_seresnext", "--num-classes", "5"]) == 0
    assert "new head for 5 classes" in capsys.readouterr().out
    five = rx.load(out)
    assert five.model.num_classes == 5
    assert jax.eval_shape(five.model.apply, five.variables,
                          jnp.ones((1, 32, 32, 3))).shape == (1, 5)


def test_cli_hub_weight_set_keeps_its_transform(tmp_path: object,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture) -> None:
    offline_cache = go_offline(tmp_path, monkeypatch)
    model, variables = random_model("seresnext26t_32x4d")  # full size, random values
    exported = os.path.join(str(tmp_path), "export.safetensors")
    rx.Pretrained(model, variables, rx.get_pretrained_cfg("seresnext26t_32x4d"),
                  None).export_torch(exported)
    hub_cache(offline_cache, "timm/seresnext26t_32x4d.bt_in1k", exported)
    out = os.path.join(str(tmp_path), "w.msgpack")
    assert convert.main(["timm/seresnext26t_32x4d.bt_in1k", out]) == 0
    report = capsys.readouterr().out
    assert "model:    seresnext26t_32x4d, 16,806,976 parameters" in report
    assert "transform: 224x224 crop, crop_pct 0.8750, bicubic" in report
    assert native.read(out)[0]["pretrained_cfg"]["name"] == "seresnext26t_32x4d.bt_in1k"
    again = rx.load(out)  # the file's own transform; its claim to be the set is not kept
    assert again.transform == rx.get_pretrained_cfg("seresnext26t_32x4d").transform
    assert again.cfg.name == "seresnext26t_32x4d" and again.cfg.hf_hub_id is None
