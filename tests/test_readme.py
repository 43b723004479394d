"""The README and the pages under docs/, checked as a new user would: every
``<!-- snippet: NAME -->`` block runs verbatim in a fresh Python process on its own, offline
(random weights in a local Hugging Face cache stand in for the Hub; the files a snippet reads
are made here), every relative link and repository path a page names exists, and the main
command reaches the accuracy the README states."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hub_cache import hub_cache
from PIL import Image
from readme_snippets import PAGES, README, ROOT, read, snippet, snippet_names

import resnext_jax as rx

TEXT = read(README)
SNIPPETS = [name for page in PAGES for name in snippet_names(page)]


def _page_id(page: str) -> str:
    return os.path.relpath(page, ROOT)


# What each snippet leaves behind, checked in the same process after it ran.
CHECKS = {
    "quickstart": "[list(maps['layer4'].shape), list(pooled.shape)]",
    "pretrained": "[list(features.shape), transform.interpolation, "
                  "ten.model.num_classes]",
    "nnx": "[list(logits.shape), bool(np.isfinite(float(loss)))]",
    "serve-and-share": "[list(logits.shape), again.cfg == trained.cfg]",
    "load-trained": "[list(logits.shape), trained.cfg.model]",
    "finetune": "[finetuned.model.num_classes, finetuned.cfg.model]",
    "sharded-jit": "[list(logits.shape), sorted(features)]",
}
EXPECTED = {
    "quickstart": [[2, 7, 7, 2048], [2, 2048]],
    "pretrained": [[2, 2048], "bicubic", 10],
    "nnx": [[8, 3], True],
    "serve-and-share": [[5, 10], True],
    "load-trained": [[1, 10], "digits_seresnext"],
    "finetune": [2, "seresnext26d_32x4d"],
    "sharded-jit": [[2, 1000], ["layer1", "layer2", "layer3", "layer4", "stem"]],
}


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_every_python_block_is_a_checked_snippet(page):
    names = snippet_names(page)
    assert read(page).count("```python") == len(names), "mark every python block"
    assert set(names) <= set(CHECKS), "say what each snippet leaves behind (CHECKS)"


def test_snippet_names_are_unique_across_the_pages():
    assert len(SNIPPETS) == len(set(SNIPPETS)) and set(SNIPPETS) == set(CHECKS)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: str) -> set[str]:
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6} (.+)$", _prose(read(page)), re.M):
        slug = _slug(heading)
        seen[slug] = seen.get(slug, -1) + 1
    return {f"{slug}-{n}" if n else slug for slug, count in seen.items()
            for n in range(count + 1)}


def _prose(text: str) -> str:
    """``text`` without its fenced code blocks (a ``# comment`` there is no heading)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_links_and_paths_exist(page):
    """Relative links point at files that exist and ``#anchors`` at headings that exist;
    repository paths a page names (``tests/...``, ``benchmarks/...``) exist too."""
    text = read(page)
    prose = re.sub(r"`[^`\n]*`", "", _prose(text))  # code spans hold no links
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", prose):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        file = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
        if not file.startswith(ROOT) or not os.path.exists(file):
            broken.append(target)
        elif anchor and (not file.endswith(".md") or anchor not in _anchors(file)):
            broken.append(target)
    for path in re.findall(r"\b((?:resnext_jax|tests|benchmarks|configs|notebooks|docs)"
                           r"/[\w./-]*\w)", text):
        if not os.path.exists(os.path.join(ROOT, path)):
            broken.append(path)
    assert not broken, f"{_page_id(page)}: {broken}"


def _hub_copy(cache: str, weight_set: str, folder: str) -> None:
    """A Hub-cache copy of ``weight_set`` with random values."""
    cfg = rx.get_pretrained_cfg(weight_set)
    model = rx.create_model(cfg.model)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    rng = np.random.default_rng(0)
    variables = jax.tree_util.tree_map_with_path(
        lambda path, s: np.ones(s.shape, np.float32) if "var" in str(path[-1])
        else rng.normal(0, 0.02, s.shape).astype(np.float32), shapes)
    file = os.path.join(folder, f"{weight_set}.safetensors")
    rx.Pretrained.from_variables(model, variables).export_torch(file)
    hub_cache(cache, cfg.hf_hub_id, file)


def _env(sandbox) -> dict[str, str]:
    return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT, "HF_HUB_OFFLINE": "1",
            "HF_HUB_CACHE": str(sandbox / "hub-cache"), "TF_CPP_MIN_LOG_LEVEL": "2"}


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """A user's folder: the Hub sets the snippets name, a short run of the main command in
    runs/digits, a digit image and a folder of images to fine-tune on."""
    root = tmp_path_factory.mktemp("user")
    for weight_set in ("seresnext50_32x4d.racm_in1k", "seresnext26d_32x4d.bt_in1k"):
        _hub_copy(str(root / "hub-cache"), weight_set, str(root))
    done = subprocess.run(
        [sys.executable, "-m", "resnext_jax.main", "--config=digits", "--workdir=runs/digits",
         "--config.num_train_steps=8", "--config.checkpoint.every_steps=4",
         "--config.log_every_steps=4"],
        cwd=root, env=_env(root), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4).save(root / "digit.png")
    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        os.makedirs(root / "my_images" / label)
        for i in range(10):
            Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(
                root / "my_images" / label / f"{i}.png")
    return root


@pytest.mark.e2e  # fresh processes
@pytest.mark.parametrize("name", SNIPPETS)
def test_snippet_runs_verbatim_in_a_fresh_process(name, sandbox):
    code = (f"{snippet(name)}\nimport json as _json, numpy as np\n"
            f"print('CHECK', _json.dumps({CHECKS[name]}))")
    done = subprocess.run([sys.executable, "-c", code], cwd=sandbox, env=_env(sandbox),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    line = [x for x in done.stdout.splitlines() if x.startswith("CHECK ")][-1]
    assert json.loads(line[len("CHECK "):]) == EXPECTED[name]


@pytest.mark.e2e
def test_main_command_reaches_the_accuracy_the_readme_states(tmp_path):
    """The README's first command, as it is written, and its stated bound on test top-1."""
    command = re.search(r"&& (python -m resnext_jax\.main --config=digits [^\n]*)", TEXT)
    bound = re.search(r"to at least ([\d.]+) % test top-1", TEXT)
    assert command and bound, "the README states the main command and its accuracy"
    args = command.group(1).split()[1:]
    done = subprocess.run([sys.executable, *args], cwd=tmp_path,
                          env={**_env(tmp_path), "HF_HUB_CACHE": str(tmp_path / "hub")},
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    top1 = 100 * json.loads(done.stdout.strip().splitlines()[-1])["eval/top1"]
    assert top1 >= float(bound.group(1)), top1
