"""The `actrec` command line as a user meets it: help texts, one-line errors, exit codes."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def actrec(*args, timeout=300):
    exe = shutil.which("actrec")
    cmd = [exe] if exe else [sys.executable, "-m", "pipeline.cli"]
    # As a user runs it: TensorFlow's log level left to the CLI (other test modules lower it in this process).
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


def test_help_lists_every_command():
    result = actrec("--help")
    assert result.returncode == 0
    for command in ("data", "index", "config", "preprocess", "train"):
        assert command in result.stdout


@pytest.mark.parametrize("command", [["data", "actions"], ["data", "commands"], ["index"], ["config", "show"], ["preprocess"], ["train"]])
def test_subcommand_help(command):
    result = actrec(*command, "--help")
    assert result.returncode == 0 and "usage: actrec" in result.stdout
    assert len(result.stdout.splitlines()) >= 5  # describes flags, not only usage


@pytest.mark.parametrize(
    "args, expected",
    [
        (["config", "show", "--set", "train.epoch=3"], "unknown key 'train.epoch' (did you mean 'train.epochs'?)"),
        (["config", "show", "--set", "train.epochs=many"], "key 'train.epochs' expected int"),
        (["config", "show", "--config", "nope.yaml"], "nope.yaml: config file not found"),
        (["index", "no/such/dir", "--out", "/tmp/m.csv"], "no/such/dir: dataset folder not found"),
        (["preprocess", "--run-dir", "/tmp/actrec-x", "--set", "data.root=no/such/dir"], "no/such/dir: dataset folder not found"),
        (["train", "--run-dir", "/tmp/actrec-no-run"], "no cached features (features/index.json missing); run `actrec preprocess"),
        (["evaluate", "--run-dir", "README.md"], "README.md: is a file; --run-dir names a run directory"),
    ],
)
def test_user_mistakes_are_one_line(args, expected):
    result = actrec(*args)
    assert result.returncode == 2
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert lines == [lines[0]] and expected in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_config_show_prints_resolved_yaml():
    result = actrec("config", "show", "--config", "configs/commands.yaml", "--set", "train.epochs=3")
    assert result.returncode == 0
    assert "epochs: 3" in result.stdout and "kind: speech" in result.stdout
