"""The first hour: every command-line mistake is one line naming the problem and the fix,
exit status 2, no traceback, nothing created; runs say what they did and where it went."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.e2e  # subprocesses: see pyproject.toml
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT, **extra}


def _cli(module: str, *args: str, cwd=None, env=None, timeout=240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"resnext_jax.{module}", *args],
                          cwd=cwd or ROOT, env=env or _env(), capture_output=True, text=True,
                          timeout=timeout)


def _one_line_error(done: subprocess.CompletedProcess, status: int, *words: str) -> str:
    assert done.returncode == status, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, done.stderr[-3000:]
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


MAIN_MISTAKES = {
    "missing config": (["--config=configs/nonexistent.py"], ["no config", "digits"]),
    "misspelt key": (["--config=digits", "--config.batchsize=3"],
                     ["unknown config key 'batchsize'", "did you mean 'batch_size'?"]),
    "unknown model": (["--config=digits", "--config.model.name=resnex50"],
                      ["unknown model 'resnex50'", "resnet50"]),
    "workdir in /proc": (["--config=digits", "--workdir=/proc/foo"], ["/proc/foo",
                                                                      "cannot be written"]),
    "workdir under a file": (["--config=digits", "--workdir={tmp}/file.txt/run"],
                             ["is not a folder"]),
    "missing dataset": (["--config=resnext50_32x4d", "--config.data.data_dir={tmp}/tfds"],
                        ["tfds build imagenet2012 --manual_dir"]),
    "indivisible batch": (["--config=digits", "--config.batch_size=13",
                           "--config.grad_accum_steps=2"], ["batch_size=13", "multiple of 2"]),
    "workdir where nothing may be written": (["--config=digits", "--workdir=/sys/run"],
                                             ["cannot be written"]),
    "zero batch": (["--config=digits", "--config.batch_size=0"],
                   ["batch_size=0 must be positive"]),
}


@pytest.mark.parametrize("case", sorted(MAIN_MISTAKES))
def test_main_mistakes(case, tmp_path):
    (tmp_path / "file.txt").write_text("not a folder")
    args, words = MAIN_MISTAKES[case]
    args = [a.format(tmp=tmp_path) for a in args]
    if not any(a.startswith("--workdir") for a in args):
        args.append(f"--workdir={tmp_path}/run")
    _one_line_error(_cli("main", *args), 2, *words)
    assert not (tmp_path / "run").exists()  # nothing created


def test_main_help_lists_the_configs():
    done = _cli("main", "--help")
    assert done.returncode == 0 and "digits, finetune" in done.stdout


def test_extract_and_convert_mistakes(tmp_path):
    _one_line_error(_cli("extract", "--model", "resnex50", str(tmp_path), "--topk", "1"), 2,
                    "unknown model 'resnex50'")
    _one_line_error(_cli("extract", "--model", "tiny_resnext", str(tmp_path / "missing"),
                         "--topk", "1"), 2, "no such file or folder")
    _one_line_error(_cli("convert", str(tmp_path / "missing.pth"), "x.msgpack"), 2,
                    "no such file")


TOOL_MISTAKES = {  # (module, args, words): each one line, exit 2, nothing created
    "convert to a folder": ("convert", ["{w}", "{tmp}/out.msgpack"], ["is a folder"]),
    "convert negative classes": ("convert", ["{w}", "{tmp}/x.msgpack", "--num-classes", "-3"],
                                 ["--num-classes: -3 is negative"]),
    "export into a file": ("export", ["{w}", "{tmp}/file.txt"], ["is a file"]),
    "export negative size": ("export", ["{w}", "{tmp}/e", "--image-size", "-7"],
                             ["--image-size: -7 is not a positive integer"]),
    "export zero size": ("export", ["{w}", "{tmp}/e", "--image-size", "0"],
                         ["--image-size: 0 is not a positive integer"]),
    "extract zero batch": ("extract", ["{tmp}", "--model", "tiny_resnext", "--out",
                                       "{tmp}/f.npz", "--batch-size", "0"],
                           ["--batch-size: 0 is not a positive integer"]),
    "extract negative batch": ("extract", ["{tmp}", "--model", "tiny_resnext", "--out",
                                           "{tmp}/f.npz", "--batch-size", "-4"], ["-4"]),
    "extract no workers": ("extract", ["{tmp}", "--model", "tiny_resnext", "--out",
                                       "{tmp}/f.npz", "--workers", "0"], ["--workers"]),
    "extract zero input": ("extract", ["{tmp}", "--model", "tiny_resnext", "--out",
                                       "{tmp}/f.npz", "--input-size", "0"], ["--input-size"]),
    "extract mean above 1": ("extract", ["{tmp}", "--model", "tiny_resnext", "--out",
                                         "{tmp}/f.npz", "--mean", "2,2,2"], ["0-1 scale"]),
    "unknown flag": ("convert", ["{w}", "{tmp}/x.msgpack", "--bogus"],
                     ["unrecognized arguments: --bogus", "see --help"]),
}


@pytest.mark.parametrize("case", sorted(TOOL_MISTAKES))
def test_tool_mistakes_are_one_line_and_create_nothing(case, tmp_path):
    module, args, words = TOOL_MISTAKES[case]
    (tmp_path / "out.msgpack").mkdir()
    (tmp_path / "file.txt").write_text("not a folder")
    weights = tmp_path / "w.msgpack"
    rx_code = ("import jax, jax.numpy as jnp, resnext_jax as rx, sys; "
               "m = rx.create_model('tiny_resnext'); "
               "v = jax.jit(m.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3))); "
               "rx.Pretrained.from_variables(m, v).save(sys.argv[1])")
    subprocess.run([sys.executable, "-c", rx_code, str(weights)], check=True, env=_env(),
                   capture_output=True)
    before = sorted(os.listdir(tmp_path))
    args = [a.format(tmp=tmp_path, w=weights) for a in args]
    _one_line_error(_cli(module, *args), 2, *words)
    assert sorted(os.listdir(tmp_path)) == before  # nothing created (no .parts, no output)


def test_an_unreachable_hub_is_one_line_in_seconds(tmp_path):
    env = _env(HF_ENDPOINT="http://127.0.0.1:9", HF_HUB_CACHE=str(tmp_path / "hub"))
    env.pop("HF_HUB_OFFLINE", None)
    done = _cli("convert", "timm/seresnext50_32x4d.racm_in1k", str(tmp_path / "w.msgpack"),
                env=env)
    _one_line_error(done, 2, "cannot be reached", "hf download")


@pytest.fixture(scope="module")
def outside(tmp_path_factory):
    """The README's main command, short, from a folder outside the repository."""
    cwd = tmp_path_factory.mktemp("elsewhere")
    args = ["--config=digits", "--workdir=runs/digits", "--config.num_train_steps=4",
            "--config.checkpoint.every_steps=2"]
    return cwd, args, _cli("main", *args, cwd=cwd)


def test_readme_main_command_from_outside_the_repository(outside):
    """Configs are found by name from any folder; the run ends with a summary of where its
    outputs are, and a rerun says the run is finished."""
    cwd, args, done = outside
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resnext_jax.load('runs/digits')" in done.stderr
    assert "oneDNN" not in done.stderr and "Traceback" not in done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["eval/top1"] >= 0
    again = _cli("main", *args, cwd=cwd)
    assert "already finished (step 4 of 4)" in again.stderr


def test_eval_prints_its_result_before_a_write_that_fails(outside, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(outside[0] / "runs" / "digits", run)
    (run / "eval_metrics.jsonl").mkdir()  # the append will fail, as on a read-only disk
    done = _cli("main", "--config=digits", f"--workdir={run}", "--mode=eval")
    assert json.loads(done.stdout.splitlines()[-1])["weights"] == "step 4"
    _one_line_error(done, 1, "eval_metrics.jsonl")
    # The console holds our lines only: orbax's notices about read-only managers stay out.
    assert "checkpoint_manager" not in done.stderr and "read only" not in done.stderr


def test_sigterm_in_start_up_is_a_clean_stop_inside_a_library_that_wraps_errors(monkeypatch,
                                                                                   capsys):
    """A SIGTERM that lands while a library turns every Exception into its own error (as
    protobuf's JSON parser inside tfds.builder did in CI) is still a clean stop."""
    from resnext_jax import main as cli

    def start_up() -> None:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)  # the handler raises in here
        except Exception as e:
            raise ValueError("Failed to parse JSON") from e

    monkeypatch.setattr(cli, "_main", start_up)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        cli.main([])
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert "stopped by SIGTERM before training started" in capsys.readouterr().err
