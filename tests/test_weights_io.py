"""Weight files, Hub ids, strict mapping errors, heads, our own format and the round trip:
everything through ``resnext_jax.load`` and :class:`resnext_jax.Pretrained`."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hub_cache import go_offline, hub_cache
from weight_fixtures import (
    FIXTURES,
    MANIFEST,
    assert_same_variables,
    fixture_model,
    fixture_state,
    flat_variables,
    random_model,
)

import resnext_jax as rx
from resnext_jax.weights import (
    WeightsError,
    WeightsFileError,
    detect_layout,
    flax_to_torch,
    read_state_dict,
    torch_to_flax,
    write_safetensors,
)
from resnext_jax.weights.hub import resolve_hub

FIXTURE = "timm_seresnext"
FIXTURE_FILE = os.path.join(FIXTURES, f"{FIXTURE}.safetensors")


@pytest.fixture(scope="module")
def tiny() -> tuple[rx.ResNet, dict]:
    return random_model("tiny_seresnext")


# --- round trip and layouts ----------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(MANIFEST["fixtures"]))
def test_torch_flax_torch_round_trip_is_lossless(name: str, tmp_path: object) -> None:
    state = fixture_state(name)
    loaded = rx.load(os.path.join(FIXTURES, f"{name}.safetensors"), fixture_model(name))
    layout = MANIFEST["fixtures"][name]["layout"]
    path = os.path.join(str(tmp_path), "export.safetensors")
    loaded.export_torch(path, layout=layout)
    back = read_state_dict(path)
    assert back.keys() == state.keys()
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):  # a step counter flax does not keep
            assert back[key] == 0 and back[key].dtype == value.dtype
            assert back[key].shape == value.shape == ()
        else:
            np.testing.assert_array_equal(back[key], value, err_msg=key)


def test_export_defaults_to_the_models_layout(tiny: tuple) -> None:
    model, variables = tiny
    assert detect_layout(flax_to_torch(variables, model)) == "timm"
    legacy = rx.create_model("tiny_legacy_seresnext")
    shapes = jax.eval_shape(legacy.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    names = flax_to_torch(jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes),
                          legacy)
    assert "layer0.conv1.weight" in names and "last_linear.weight" in names
    assert "layer1.0.se_module.fc1.weight" in names


def test_export_refuses_variables_of_another_model(tiny: tuple) -> None:
    model, variables = tiny
    with pytest.raises(WeightsError, match=r"16 unexpected: params/layer1_0/se/fc1/bias.*"
                       r"2 other shapes: params/fc/bias \(10,\) instead of \(3,\)"):
        flax_to_torch(variables, rx.create_model("tiny_resnext", num_classes=3))


def test_unknown_layout_is_named() -> None:
    with pytest.raises(WeightsError, match="x.pt: cannot tell the weight layout.*encoder.weight"):
        torch_to_flax({"encoder.weight": np.zeros(2), "decoder.bias": np.zeros(2)},
                      fixture_model(FIXTURE), source="x.pt")


def test_wrapper_prefix_and_half_precision_load() -> None:
    state = fixture_state(FIXTURE)
    model = fixture_model(FIXTURE)
    want, _ = torch_to_flax(state, model)
    half = {f"module.{k}": (v.astype(np.float16) if v.dtype == np.float32 else v)
            for k, v in state.items()}
    got, _ = torch_to_flax(half, model)
    for key, value in flat_variables(got).items():
        assert value.dtype == np.float32
        np.testing.assert_allclose(value, flat_variables(want)[key], rtol=1e-3, atol=1e-3)


# --- strict errors: nothing half-loaded ----------------------------------------------------

def test_missing_keys_are_named_with_model_and_file(tmp_path: object) -> None:
    state = fixture_state(FIXTURE)
    del state["layer2.0.conv2.weight"], state["layer3.1.se.fc1.bias"]
    path = os.path.join(str(tmp_path), "partial.safetensors")
    write_safetensors(path, state)
    with pytest.raises(WeightsError) as err:
        rx.load(path, fixture_model(FIXTURE))
    text = str(err.value)
    assert path in text and "nothing was loaded" in text
    assert "2 missing from the file: layer2.0.conv2.weight, layer3.1.se.fc1.bias" in text


def test_checkpoint_of_another_architecture_is_refused() -> None:
    state = fixture_state("timm_seresnext")
    with pytest.raises(WeightsError) as err:
        torch_to_flax(state, fixture_model("timm_resnext"), source="se.safetensors")
    text = str(err.value)
    assert "se.safetensors (timm layout)" in text
    assert "15 missing from the file: layer2.1.bn1.bias" in text
    assert "unexpected in the file: layer1.0.se.fc1.bias" in text


def test_shape_mismatches_are_named_with_both_shapes() -> None:
    model = fixture_model("timm_seresnext_d", cardinality=8, base_width=8)  # same widths
    with pytest.raises(WeightsError) as err:
        torch_to_flax(fixture_state("timm_seresnext_d"), model)
    assert "layer1.0.conv2.weight (file (8, 2, 3, 3), model (8, 1, 3, 3))" in str(err.value)


def test_error_names_the_zoo_model_the_file_fits(tiny: tuple) -> None:
    model, variables = tiny
    state = flax_to_torch(variables, model)
    with pytest.raises(WeightsError, match="the file matches 'tiny_seresnext'"):
        torch_to_flax(state, rx.create_model("tiny_resnext"), model_name="tiny_resnext")


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_damaged_safetensors_fails_naming_the_file(damage: str, tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "bad.safetensors")
    data = open(FIXTURE_FILE, "rb").read()
    data = data[: len(data) // 2] if damage == "truncate" else b"\x07" * 64 + data[64:]
    open(path, "wb").write(data)
    with pytest.raises(WeightsFileError, match="bad.safetensors is not a readable safetensors"):
        rx.load(path, fixture_model(FIXTURE))


def test_unknown_source_and_extension(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(WeightsFileError, match="no such file"):
        rx.load("missing/weights.safetensors")
    with pytest.raises(WeightsFileError, match="neither a file or folder, a model or weight"):
        rx.load("not-a-weight-set")
    monkeypatch.chdir(tmp_path)
    os.mkdir("runs")  # runs/best: a mistyped local path, not a Hub repo to try for a minute
    with pytest.raises(WeightsFileError, match="no such file or folder: runs/best"):
        rx.load("runs/best")
    other = os.path.join(str(tmp_path), "w.h5")
    open(other, "wb").write(b"x")
    with pytest.raises(WeightsFileError, match="unknown checkpoint type"):
        read_state_dict(other)


# --- the classifier head -------------------------------------------------------------------

def test_a_model_with_another_head_gets_a_new_one_and_says_so() -> None:
    full = rx.load(FIXTURE_FILE, fixture_model(FIXTURE))
    for how in ({"model": fixture_model(FIXTURE, num_classes=5)},
                {"model": fixture_model(FIXTURE), "num_classes": 5}):
        with pytest.warns(UserWarning, match="10-class head.*new classifier head for 5"):
            got = rx.load(FIXTURE_FILE, **how)
        assert got.variables["params"]["fc"]["kernel"].shape == (64 * 4, 5)
        assert any("new head" in note for note in got.report.notes)
        for key, value in flat_variables(full.variables).items():
            if key[1] != "fc":
                np.testing.assert_array_equal(flat_variables(got.variables)[key], value)
        assert jax.eval_shape(got.model.apply, got.variables,
                              jnp.ones((1, 32, 32, 3))).shape == (1, 5)


def test_backbone_without_head() -> None:
    with pytest.raises(TypeError, match="forward_intermediates"):
        rx.load(FIXTURE_FILE, fixture_model(FIXTURE), features_only=True)
    pooled = rx.load(FIXTURE_FILE, fixture_model(FIXTURE), num_classes=0)
    assert "fc" not in pooled.variables["params"] and pooled.model.num_classes == 0


def test_create_model_returns_the_module_and_points_to_load() -> None:
    model = rx.create_model("seresnext50_32x4d")
    assert isinstance(model, rx.ResNet)
    assert rx.get_pretrained_cfg("seresnext50_32x4d").name == "seresnext50_32x4d.racm_in1k"
    with pytest.raises(TypeError, match=r"resnext_jax.load\('seresnext50_32x4d'\)"):
        rx.create_model("seresnext50_32x4d", pretrained=True)


def test_load_cannot_change_the_architecture() -> None:
    with pytest.raises(WeightsError, match=r"architecture fields \['cardinality'\]"):
        rx.load(FIXTURE_FILE, fixture_model(FIXTURE), cardinality=8)


# --- our own files -------------------------------------------------------------------------

def test_own_file_round_trip_keeps_arrays_architecture_and_transform(
        tiny: tuple, tmp_path: object) -> None:
    model, variables = tiny
    cfg = rx.PretrainedCfg("tiny_seresnext.test", None, 12.5,
                           rx.Transform(size=40, crop_pct=0.9, interpolation="bicubic"))
    path = os.path.join(str(tmp_path), "tiny.msgpack")
    rx.Pretrained(model, variables, cfg, None).save(path)
    back = rx.load(path)
    assert_same_variables(back.variables, variables)
    assert back.cfg == cfg and back.transform.size == 40
    assert back.model == model
    assert rx.load(path, "tiny_seresnext").cfg == cfg


def test_own_file_is_as_strict_as_create_model(tiny: tuple, tmp_path: object) -> None:
    from resnext_jax.weights import native

    model, variables = tiny
    path = os.path.join(str(tmp_path), "tiny.msgpack")
    native.write(path, variables, model, model_name="tiny_seresnext")
    with pytest.raises(WeightsError, match="holds 'tiny_seresnext' weights, not 'tiny_resnext'"):
        rx.load(path, "tiny_resnext")
    with pytest.raises(WeightsError, match="se: file 'timm', model None"):
        rx.load(path, rx.create_model("tiny_resnext"))
    # A file whose metadata names another architecture than its arrays: refused, not loaded
    # with the SE weights dropped.
    liar = os.path.join(str(tmp_path), "liar.msgpack")
    native.write(liar, variables, rx.create_model("tiny_resnext"), model_name="tiny_resnext")
    with pytest.raises(WeightsError, match="does not fit its own architecture.*unexpected: "
                       "params/layer1_0/se"):
        rx.load(liar)


def test_a_flipped_bit_in_our_own_file_is_refused(tiny: tuple, tmp_path: object) -> None:
    model, variables = tiny
    path = os.path.join(str(tmp_path), "tiny.msgpack")
    rx.Pretrained(model, variables, rx.PretrainedCfg("tiny_seresnext.x", None, None),
                  None).save(path)
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0x10
    open(path, "wb").write(bytes(data))
    with pytest.raises(WeightsFileError, match="damaged"):
        rx.load(path)


# --- PyTorch pickles: tests/test_pth.py -----------------------------------------------------

# --- Hugging Face Hub cache ----------------------------------------------------------------

@pytest.fixture
def offline_cache(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> str:
    return go_offline(tmp_path, monkeypatch)


def test_hub_id_resolves_from_offline_cache(offline_cache: str) -> None:
    expected = hub_cache(offline_cache, "timm/fixture.test_in1k", FIXTURE_FILE)
    assert resolve_hub("hf-hub:timm/fixture.test_in1k") == expected
    got = rx.load("timm/fixture.test_in1k", fixture_model(FIXTURE))
    assert_same_variables(got.variables, rx.load(FIXTURE_FILE, fixture_model(FIXTURE)).variables)


def test_load_from_hub_id_finds_its_model(offline_cache: str, tiny: tuple,
                                          tmp_path: object) -> None:
    model, variables = tiny
    exported = os.path.join(str(tmp_path), "tiny.safetensors")
    rx.Pretrained(model, variables, rx.PretrainedCfg("tiny_seresnext.x", None, None),
                  None).export_torch(exported)
    hub_cache(offline_cache, "someone/tiny_seresnext.test", exported)
    loaded = rx.load("someone/tiny_seresnext.test")  # the only zoo model the tensors fit
    assert loaded.model == model
    assert_same_variables(loaded.variables, variables)


def test_offline_miss_is_explained(offline_cache: str) -> None:
    with pytest.raises(WeightsFileError, match="racm_in1k.*offline mode is on"):
        rx.load("seresnext50_32x4d")
    with pytest.raises(WeightsFileError, match="no Hugging Face Hub copy: download https"):
        rx.load("legacy_seresnext50_32x4d")
    with pytest.raises(WeightsError, match="is for model 'seresnext50_32x4d', not"):
        rx.load("seresnext50_32x4d.racm_in1k", "resnext50_32x4d")


# --- pretrained configs --------------------------------------------------------------------

def test_pretrained_configs() -> None:
    # The sources' figures (torchvision's weight metadata, timm's results tables).
    published = {"resnext50_32x4d.tv_in1k": 77.618, "resnext50_32x4d.tv2_in1k": 81.198,
                 "resnext101_32x8d.tv_in1k": 79.312, "resnext101_32x8d.tv2_in1k": 82.834,
                 "resnext101_64x4d.tv_in1k": 83.246, "seresnext50_32x4d.racm_in1k": 81.268,
                 "legacy_seresnext50_32x4d.in1k": 79.080}
    for name, top1 in published.items():
        assert rx.get_pretrained_cfg(name).top1 == top1
    for cfg in map(rx.get_pretrained_cfg, rx.list_pretrained()):
        assert cfg.model in rx.list_models() and (cfg.hf_hub_id or cfg.url)
        t = cfg.transform
        assert 0.8 < t.crop_pct <= 1 and t.interpolation in ("bilinear", "bicubic")
    assert rx.get_pretrained_cfg("seresnext50_32x4d").name == "seresnext50_32x4d.racm_in1k"
    legacy = rx.list_pretrained("legacy_*")
    assert legacy == sorted(legacy) and "legacy_seresnext50_32x4d.in1k" in legacy
    assert all(n.startswith("legacy_") for n in legacy)
    with pytest.raises(rx.errors.UsageError, match="did you mean 'seresnext50_32x4d.racm_in1k'"):
        rx.get_pretrained_cfg("seresnext50_32x4d.racm_in2k")


def test_an_unreachable_hub_is_named_within_seconds(tmp_path, monkeypatch):
    """Not offline mode, but no network: huggingface_hub retries for half a minute and then
    says the file is missing; this says the Hub cannot be reached, in a few seconds."""
    import time

    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    start = time.perf_counter()
    with pytest.raises(WeightsFileError, match="cannot be reached.*`hf download timm/"):
        rx.load("seresnext50_32x4d.racm_in1k")
    assert time.perf_counter() - start < 5


def test_writes_never_follow_a_link_planted_at_a_temporary_name(tiny, tmp_path):
    """A fixed PATH.tmp would let a link planted there redirect the write to another file."""
    from resnext_jax.files import atomic_write

    model, variables = tiny
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    saved = rx.Pretrained(model, variables, rx.PretrainedCfg("tiny_seresnext.x", None, None),
                          None)
    writers = {"w.msgpack": saved.save, "w.safetensors": saved.export_torch,
               "plain.bin": lambda path: atomic_write(path, b"data")}
    for name, write in writers.items():
        (tmp_path / f"{name}.tmp").symlink_to(victim)
        write(tmp_path / name)
        assert victim.read_text() == "keep me", name
        assert (tmp_path / name).stat().st_size > 0 and not (tmp_path / name).is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".tmp")) == [
        "plain.bin", "victim.txt", "w.msgpack", "w.safetensors"]  # no temporary files left


def test_auto_dtype_resolves_on_load() -> None:
    """``dtype="auto"`` on a model given as a module (``clone``) computes in the fastest
    dtype of the platform it runs on, as for a model given by name."""
    loaded = rx.load(FIXTURE_FILE, fixture_model(FIXTURE), dtype="auto")
    x = jnp.zeros((1, 32, 32, 3))
    assert loaded.model.apply(loaded.variables, x).dtype == rx.ops.fastest_dtype()


# --- provenance: a published set's name and accuracy only for that set's bytes ---------------

def test_file_weights_never_claim_the_published_set(tmp_path):
    """Random weights in timm's layout, loaded by model name, are not the model's published
    set: no set name, accuracy or Hub id in the config, the card, config.json or a re-save."""
    name = "seresnext50_32x4d"  # racm_in1k, 81.268 % top-1
    published = rx.get_pretrained_cfg(name)
    model, variables = random_model(name)
    fresh = rx.Pretrained.from_variables(model, variables, origin="test init")
    assert (fresh.cfg.name, fresh.cfg.top1, fresh.cfg.origin) == (name, None, "test init")
    fresh.export_torch(tmp_path / "w.safetensors")
    loaded = rx.load(tmp_path / "w.safetensors", name)
    cfg = loaded.cfg
    assert (cfg.name, cfg.top1, cfg.hf_hub_id, cfg.url) == (name, None, None, None)
    assert cfg.origin == str(tmp_path / "w.safetensors") and cfg.transform == rx.Transform()
    folder = rx.save_pretrained(loaded, tmp_path / "card")
    for file in ("README.md", "config.json"):
        text = open(os.path.join(folder, file)).read()
        assert published.name not in text and f"{published.top1:.3f}" not in text, file
        assert published.name.partition(".")[2] not in text, file
    loaded.save(tmp_path / "w.msgpack")
    assert rx.load(tmp_path / "w.msgpack").cfg.name == name


def test_a_file_claiming_a_published_set_loses_the_claim(tmp_path, tiny):
    """Our file format records a config; a claim to be a published set cannot be checked
    from the file, so it is dropped on load."""
    model, variables = tiny
    published = rx.get_pretrained_cfg("seresnext26d_32x4d")
    forged = rx.Pretrained(model, variables, published,
                           rx.Pretrained.from_variables(model, variables).report)
    forged.save(tmp_path / "forged.msgpack")
    cfg = rx.load(tmp_path / "forged.msgpack").cfg
    assert cfg.top1 is None and cfg.hf_hub_id is None and cfg.name != published.name


def test_a_weight_set_loaded_by_name_keeps_its_name(tmp_path, offline_cache):
    name = "seresnext26d_32x4d"
    cfg = rx.get_pretrained_cfg(name)
    model, variables = random_model(name)
    rx.Pretrained.from_variables(model, variables).export_torch(tmp_path / "w.safetensors",
                                                                layout="timm")
    hub_cache(offline_cache, cfg.hf_hub_id, str(tmp_path / "w.safetensors"))
    for source in (cfg.name, cfg.hf_hub_id, name):
        assert rx.load(source).cfg == cfg


def test_from_variables_for_tiny_models(tmp_path, tiny):
    model, variables = tiny
    pretrained = rx.Pretrained.from_variables(model, variables)
    assert pretrained.cfg.name == "tiny_seresnext" and pretrained.cfg.top1 is None
    pretrained.save(tmp_path / "t.msgpack")
    pretrained.export_torch(tmp_path / "t.safetensors")
    assert rx.load(tmp_path / "t.msgpack").cfg.model == "tiny_seresnext"
    with pytest.raises(rx.WeightsError, match="do not fit the model"):
        rx.Pretrained.from_variables(rx.create_model("tiny_resnext"), variables)
