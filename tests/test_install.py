"""Installed as a user installs it: a wheel built from this checkout, in a fresh venv, used from another directory.

The venv gets this wheel's code and nothing else of the project; its third-party dependencies are the ones
already installed for the tests (a .pth file adds their site-packages after the venv's own, without running
that folder's own .pth files, so the checkout's editable install is not seen). Building from a copy of the
sources keeps build/ and *.egg-info out of the working tree.
"""

from __future__ import annotations

import configparser
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pipeline.config import shipped_configs

ROOT = Path(__file__).resolve().parents[1]
BUILD_INPUTS = ("pipeline", "data_prep", "configs", "setup.cfg", "pyproject.toml", "README.md", "MANIFEST.in")


def _setup_cfg() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    return parser


def _listed_packages() -> set[str]:
    return {line.strip() for line in _setup_cfg()["options"]["packages"].splitlines() if line.strip()}


def test_setup_cfg_lists_every_package():
    """setup.cfg lists its packages (find: cannot map configs/ to pipeline.configs): a new package folder must be added."""
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("pipeline", "data_prep")
        for init in (ROOT / top).rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    listed = _listed_packages()
    missing = sorted(on_disk - listed)
    assert not missing, f"setup.cfg [options] packages lacks {missing}: a wheel would not contain them"
    stale = sorted(p for p in listed - on_disk if p != "pipeline.configs")
    assert not stale, f"setup.cfg [options] packages lists {stale}, which are not package folders"
    assert "pipeline.configs = configs" in _setup_cfg()["options"]["package_dir"]


def _run(args, cwd, env=None, timeout=120):
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_runs_from_anywhere(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in BUILD_INPUTS:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif (ROOT / name).is_file():
            shutil.copy2(ROOT / name, src / name)

    pip = [sys.executable, "-m", "pip"]
    build = _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", tmp_path / "dist", src], tmp_path)
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("actrec-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    assert {f"pipeline/configs/{name}.yaml" for name in shipped_configs()} <= names
    assert not any(n.startswith("configs/") for n in names)  # package data, not a top-level `configs` folder

    venv = tmp_path / "venv"
    made = _run([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    purelib = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path).stdout.strip())
    (purelib / "actrec_test_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    installed = _run([*pip, "--python", python, "install", "--no-deps", "--no-index", "-q", wheel], tmp_path)
    assert installed.returncode == 0, installed.stderr[-2000:]

    elsewhere = tmp_path / "elsewhere"  # a user's own project directory: no configs/, no pipeline/
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    actrec = venv / "bin" / "actrec"

    where = _run([python, "-c", "import pipeline, pipeline.config as c; print(pipeline.__file__); print(c.shipped_config_dir()); "
                  "print(','.join(c.shipped_configs()))"], elsewhere, env)
    assert where.returncode == 0, where.stderr[-2000:]
    module, config_dir, names = where.stdout.split()
    assert Path(module).is_relative_to(purelib) and not Path(module).is_relative_to(ROOT)
    assert Path(config_dir) == purelib / "pipeline" / "configs"
    assert names.split(",") == shipped_configs()

    show = _run([actrec, "config", "show", "--config", "commands", "--set", "train.epochs=3"], elsewhere, env)
    assert show.returncode == 0, show.stderr[-2000:]
    assert "kind: speech" in show.stdout and "units: 128" in show.stdout and "num_layers: 2" in show.stdout and "epochs: 3" in show.stdout
    assert "#   model.streamable: true" in show.stdout  # the derived key, from the installed package

    unknown = _run([actrec, "config", "show", "--config", "comands"], elsewhere, env)
    assert unknown.returncode == 2
    expected = f"unknown config 'comands'; shipped: {', '.join(shipped_configs())} (or give a path to a YAML file)"
    assert unknown.stderr.strip().splitlines()[-1].endswith(expected)
    assert "Traceback" not in unknown.stderr
