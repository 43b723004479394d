"""Execute the notebooks headless with tiny settings, offline; any error fails the test.

Each notebook reads its parameters from the JSON object in ``RESNEXT_NOTEBOOK_PARAMS``; here a
weight file made on the spot stands in for the Hub, and images are made locally.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import resnext_jax as rx

pytestmark = pytest.mark.e2e  # subprocesses: see pyproject.toml

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


@pytest.fixture(scope="module")
def local_weights(tmp_path_factory):
    """A tiny SE-ResNeXt with a 1000-class head, saved as our own weight file."""
    model = rx.create_model("tiny_seresnext", num_classes=1000, zero_init_last=False)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    path = tmp_path_factory.mktemp("weights") / "tiny_seresnext_in1k.msgpack"
    cfg = rx.PretrainedCfg("tiny_seresnext.in1k", None, None, rx.Transform(size=32))
    rx.Pretrained(model, variables, cfg, None).save(path)
    return str(path)


def run_notebook(name: str, params: dict, workdir: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert all(not c.get("outputs") and not c.get("execution_count") for c in nb.cells
               if c.cell_type == "code"), f"{name}: outputs must be stripped in the repository"
    env = {"RESNEXT_NOTEBOOK_PARAMS": json.dumps(params), "HF_HUB_OFFLINE": "1",
           "JAX_PLATFORMS": "cpu", "MPLBACKEND": "Agg",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                         resources={"metadata": {"path": str(workdir)}})
        client.execute()  # raises CellExecutionError on the first failing cell
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


def outputs_text(nb) -> str:
    return "\n".join(o.get("text", "") + json.dumps(o.get("data", {}).get("text/plain", ""))
                     for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def test_01_quickstart(local_weights, tmp_path):
    image = tmp_path / "images" / "photo.png"
    image.parent.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(image)
    nb = run_notebook("01_quickstart.ipynb", dict(
        pretrained=local_weights, num_classes=1000, input_size=32, image=str(image)), tmp_path)
    text = outputs_text(nb)
    assert "pre_logits" in text and "(1, 512)" in text  # the features cell ran
    with np.load(tmp_path / "quickstart_features.npz") as saved:
        assert saved["features"].shape == (1, 512)


def test_02_finetune(local_weights, tmp_path):
    nb = run_notebook("02_finetune_your_images.ipynb", dict(
        demo_per_class=6, pretrained=local_weights, input_size=32, epochs=2, batch_size=8,
        workdir=str(tmp_path / "run")), tmp_path)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [r["step"] for r in lines if "eval/top1" in r] == [10]  # 40 images: 5 steps/epoch
    trained = rx.load(tmp_path / "run")
    assert trained.model.num_classes == 10 and trained.cfg.model == "tiny_seresnext"
    assert trained.transform.size == 32
    assert "(0." in outputs_text(nb) or "(1." in outputs_text(nb)  # the CLI's top-k lines


def test_03_inside_se_resnext(tmp_path):
    nb = run_notebook("03_inside_se_resnext.ipynb", dict(
        config="digits", steps=4, data_dir=str(tmp_path / "tfds"),
        workdir=str(tmp_path / "run")), tmp_path)
    text = outputs_text(nb)
    assert "newest checkpoint: step 4" in text  # the run was reopened
    for block in ("layer1_0", "layer2_0", "layer3_0"):
        assert f"{block}   class specificity" in text
    for png in ("curves", "se_excitations", "grouped_filters", "stem"):
        assert (tmp_path / "run" / f"{png}.png").stat().st_size > 0
    assert rx.load(tmp_path / "run").model.se == "timm"


def test_04_sharding_demo_runs(tmp_path):
    """Notebook 04 is mostly commands for clusters; its 8-simulated-device demo must run."""
    text = outputs_text(run_notebook("04_tpu_pod_and_multi_gpu.ipynb", {}, tmp_path))
    assert "per-device rows: [2, 2, 2, 2, 2, 2, 2, 2]" in text
    stats_diff = float(text.split("8 devices vs 1: ")[1].split()[0])
    assert stats_diff < 1e-4


def test_kernelspec_with_huge_pages(tmp_path, monkeypatch):
    """docs/speed.md: a Jupyter kernel installed with ``--env GLIBC_TUNABLES ...`` starts
    with the tunable (glibc reads it only at start-up, so a running kernel cannot)."""
    from jupyter_client.manager import start_new_kernel

    subprocess.run([sys.executable, "-m", "ipykernel", "install", "--prefix", str(tmp_path),
                    "--name", "resnext-huge-pages", "--env", "GLIBC_TUNABLES",
                    "glibc.malloc.hugetlb=1"], check=True, capture_output=True, timeout=120)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)  # only the kernelspec may set it
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "share" / "jupyter"))
    manager, client = start_new_kernel(kernel_name="resnext-huge-pages", startup_timeout=120)
    try:
        seen = []
        client.execute_interactive(
            "import os; print(os.environ.get('GLIBC_TUNABLES'))", timeout=60,
            output_hook=lambda msg: seen.append(msg["content"].get("text", "")))
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    assert "".join(seen).strip() == "glibc.malloc.hugetlb=1"
