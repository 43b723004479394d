"""What installs with what: the core (models, weights) imports no TensorFlow, no training
library and no image library; notebooks and benchmarks use only public names."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import tomllib

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXTRAS_ONLY = ("tensorflow", "tensorflow_datasets", "optax", "orbax", "ml_collections",
               "clu", "PIL", "matplotlib", "tqdm", "sklearn", "torch")

CORE_USE = r"""
import importlib.abc, importlib.metadata as md, re, sys

def closure(names):  # the distributions a core install brings: requirements without extras
    seen, todo = set(), list(names)
    while todo:
        name = re.split(r"[<>=!~;\[ ]", todo.pop())[0].strip().lower().replace("_", "-")
        if name not in seen:
            seen.add(name)
            try:
                todo += [r for r in md.requires(name) or [] if "extra ==" not in r]
            except md.PackageNotFoundError:
                pass
    return seen

CORE = closure(["resnext_jax"])
BLOCKED = {module for module, dists in md.packages_distributions().items()
           if not {d.lower().replace("_", "-") for d in dists} & CORE} | set(EXTRAS_ONLY)

class Block(importlib.abc.MetaPathFinder):  # as if only the core were installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Block())
import jax, jax.numpy as jnp
import resnext_jax as rx
model = rx.create_model("tiny_seresnext")
variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
rx.Pretrained.from_variables(model, variables).export_torch(sys.argv[1])
loaded = rx.load(sys.argv[1])
print(loaded.model.apply(loaded.variables, jnp.ones((2, 32, 32, 3))).shape)
from resnext_jax.export import export, load_exported
export(loaded, sys.argv[1] + ".export", image_size=32)
run, _ = load_exported(sys.argv[1] + ".export")
assert run(jnp.ones((1, 32, 32, 3))).shape == (1, 10)
print("flatbuffers" in BLOCKED, "tensorflow" in BLOCKED)
"""


@pytest.mark.e2e  # a fresh process
def test_core_loads_runs_and_exports_without_the_extras(tmp_path):
    """Everything outside the core's requirements is blocked, including what other extras
    brought into this environment (flatbuffers came with TensorFlow)."""
    script = f"EXTRAS_ONLY = {EXTRAS_ONLY!r}\n{CORE_USE}"
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "w.safetensors")],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["(2,", "10)", "False", "True"], done.stdout


def test_core_dependencies_are_a_backbone_users():
    project = tomllib.load(open(os.path.join(ROOT, "pyproject.toml"), "rb"))["project"]
    core = {d.split(">")[0].split("=")[0].split(";")[0].strip().lower()
            for d in project["dependencies"]}
    assert core == {"jax", "flax", "numpy", "safetensors", "huggingface_hub", "flatbuffers"}
    extras = project["optional-dependencies"]

    def names(extra):
        return {d.split(">")[0].split(";")[0].strip() for d in extras[extra]}

    assert not names("train") & {"tensorflow", "tensorflow-cpu"}  # Colab has its own
    assert names("tf") == {"tensorflow", "tensorflow-cpu"}


def _imports(path: str, module: str) -> set[str]:
    """The ``resnext_jax`` modules a file imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module if node.level == 0 else ".".join(
                module.split(".")[:-node.level] + [node.module])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if _module_file(sub) else base)
    return {m for m in found if m.startswith("resnext_jax")}


def _module_file(module: str) -> str | None:
    base = os.path.join(ROOT, *module.split("."))
    for candidate in (base + ".py", os.path.join(base, "__init__.py")):
        if os.path.isfile(candidate):
            return candidate
    return None


def test_no_import_cycles_between_modules():
    """Package ``__init__`` files re-export their children; between modules, imports go one
    way, with no cycle hidden behind a lazy import."""
    graph = {}
    for folder, _, files in os.walk(os.path.join(ROOT, "resnext_jax")):
        for f in files:
            if f.endswith(".py") and f != "__init__.py":
                path = os.path.join(folder, f)
                module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                graph[module] = {m for m in _imports(path, module) if m in graph or
                                 (_module_file(m) or "").endswith(".py")
                                 and not _module_file(m).endswith("__init__.py")}
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in graph.get(node, ()):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def _private_uses(source: str) -> list[str]:
    """``x._name`` attribute uses (not dunders) in Python source."""
    tree = ast.parse(source)
    return [f"{ast.unparse(node)}" for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and node.attr.startswith("_")
            and not node.attr.startswith("__")]


def _notebook_code(path: str) -> str:
    cells = json.load(open(path))["cells"]
    lines = [line for c in cells if c["cell_type"] == "code" for line in "".join(
        c["source"]).splitlines() if not line.lstrip().startswith(("!", "%"))]
    return "\n".join(lines)


@pytest.mark.parametrize("path", sorted(
    [os.path.join("notebooks", f) for f in os.listdir(os.path.join(ROOT, "notebooks"))
     if f.endswith(".ipynb")]
    + [os.path.join("benchmarks", f) for f in os.listdir(os.path.join(ROOT, "benchmarks"))
       if f.endswith(".py")]))
def test_notebooks_and_benchmarks_use_only_public_names(path):
    full = os.path.join(ROOT, path)
    source = _notebook_code(full) if path.endswith(".ipynb") else open(full).read()
    assert _private_uses(source) == [], path
