"""Exported files run on LiteRT (ai-edge-litert) without TensorFlow, as an app or an edge device runs them.

A fresh venv gets ai-edge-litert, numpy, the media libraries and the config's two small pure dependencies from the
package index (no tensorflow, no keras), imports pipeline.runtime.tflite from this checkout and classifies test
clips and WAVs with `TFLiteClassifier(file).predict_file(path)`: the probabilities must be those of
`actrec predict --model file` (pipeline.stages.predict.predict) in the test environment.

The exported files are the float exports of the session's action run (a copy of tests/conftest.py's trained_run) and of
the tiny speech run of tests/fault_corpus.py, made once per pytest process and shared with test_predict and test_faults.
The venv is installed with the test environment's pip (no pip of its own) and without byte-compiling (Python compiles
what it imports): both only save time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import soundfile

from pipeline.stages.predict import predict
from tests import fault_corpus as fc

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-5  # max |dprob| between the TensorFlow-free venv and `actrec predict --model`
# What an inference-only install needs, at the versions of this environment (same decoders, same resampler, same
# runtime, so the same inputs reach the same kernels): pipeline.config reads YAML through omegaconf.
RUNTIME_PACKAGES = ("ai-edge-litert", "numpy", "opencv-python-headless", "av", "soundfile", "librosa", "soxr", "omegaconf", "pyyaml")
HEAVY = ("tensorflow", "keras", "tensorflow_io")
# Runs in the venv: argv = checkout, model file, media files -> JSON {'probs': {path: [K floats]}, 'labels': [...]}.
CLASSIFY = """
import importlib.util, json, sys
sys.path.insert(0, sys.argv[1])
from pipeline.runtime.tflite import TFLiteClassifier
classifier = TFLiteClassifier(sys.argv[2])
probs = {path: classifier.predict_file(path).tolist() for path in sys.argv[3:]}
print(json.dumps({"probs": probs, "labels": classifier.labels,
                  "installed": [m for m in %r if importlib.util.find_spec(m) is not None],
                  "imported": sorted(m for m in sys.modules if m.split(".")[0] in %r)}))
""" % (HEAVY, HEAVY)


def _clean_env() -> dict:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


def test_runtime_modules_do_not_import_tensorflow():
    """What decoding and the interpreter need (runtime.tflite, runtime.stream, runtime.decode, media, config) imports neither
    TF nor Keras."""
    code = ("import sys; import pipeline.runtime.tflite, pipeline.runtime.stream, pipeline.runtime.decode, pipeline.media.video, pipeline.media.audio, "
            f"pipeline.media.probe, pipeline.config, ai_edge_litert.interpreter; print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def fresh_venv(venv: Path, packages: list[str]) -> Path:
    """The python of a new venv at `venv` holding `packages` only, installed by this environment's pip (the venv has no
    pip of its own) from the package index, without byte-compiling."""
    made = subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr[-2000:]
    python = venv / "bin" / "python"
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-compile", *packages],
                               capture_output=True, text=True, timeout=1800, env=_clean_env())
    assert installed.returncode == 0, installed.stderr[-3000:]
    return python


@pytest.fixture(scope="module")
def litert_python(tmp_path_factory) -> Path:
    """The python of a fresh venv with RUNTIME_PACKAGES only, installed by pip from the package index."""
    start = time.perf_counter()
    pins = [f"{name}=={version(name)}" for name in RUNTIME_PACKAGES]
    python = fresh_venv(tmp_path_factory.mktemp("litert") / "venv", pins)
    checked = subprocess.run([sys.executable, "-m", "pip", "--python", python, "check"], capture_output=True, text=True, timeout=120,
                             env=_clean_env())
    assert checked.returncode == 0, checked.stdout[-2000:]
    print(f"\nLiteRT venv ({', '.join(pins)}): {time.perf_counter() - start:.0f} s")
    return python


def classify_in_venv(python: Path, model: Path, paths: list[Path], cwd: Path) -> dict:
    out = subprocess.run([python, "-c", CLASSIFY, ROOT, model, *paths], cwd=cwd, capture_output=True, text=True,
                         timeout=600, env=_clean_env())
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["installed"] == [] and result["imported"] == [], result  # no TensorFlow to import, none imported
    return result


def assert_same_as_predict(run: Path, model: Path, paths: list[Path], python: Path, cwd: Path) -> float:
    """Max |dprob| of the venv's predict_file against `actrec predict --model` on each file."""
    expected = predict(run, paths, model=str(model))
    got = classify_in_venv(python, model, paths, cwd)
    assert got["labels"] == (model.parent / "labels.txt").read_text().splitlines()
    worst = 0.0
    for path, want in zip(paths, expected):
        assert want["error"] is None, want
        probs = np.asarray(got["probs"][str(path)], np.float32)
        assert probs.argmax() == np.argmax(want["probs"])
        worst = max(worst, float(np.abs(probs - want["probs"]).max()))
    print(f"\n{model.name}: {len(paths)} {paths[0].suffix} files, max |dprob| LiteRT venv vs actrec predict --model = {worst:.1e}")
    assert worst <= TOLERANCE
    return worst


@pytest.mark.slow  # builds a venv from the package index (~1-2 min) and exports a run
def test_action_clips_without_tensorflow(litert_python, trained_run, dataset, tmp_path, tmp_path_factory):
    run = fc.shared_copy(trained_run, tmp_path_factory, "trained_run_exported")  # the session's run stays as it was
    fc.shared_float_export(run)
    clips = sorted(dataset.glob("*/v_*_g01_*.mp4"))  # the test clips: MP4, 22.05 kHz sound resampled to 16 kHz
    assert_same_as_predict(run, run / "export/model_float.tflite", clips, litert_python, tmp_path)


def _tone_wav(path: Path, hz: float, offset: float, amplitude: float, seconds: float, rate: int) -> Path:
    """A mono WAV: silence with a 0.6-s sine at `hz` from `offset` seconds."""
    t = np.arange(round(seconds * rate)) / rate
    wave = np.where((t >= offset) & (t < offset + 0.6), amplitude * np.sin(2 * np.pi * hz * t), 0.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, wave.astype(np.float32), rate, subtype="PCM_16")
    return path


@pytest.mark.slow  # the venv, and the tiny speech run trained and exported (shared with test_faults and test_predict)
def test_speech_wavs_without_tensorflow(litert_python, tmp_path, tmp_path_factory):
    root, run = fc.shared_speech_run(tmp_path_factory)  # words no (1500 Hz) and yes (440 Hz); speaker 0 is the test split
    fc.shared_float_export(run)
    # the test WAVs, and two at 22.05 kHz (resampled): longer and shorter than the 1-s window (centre crop; zero padding)
    wavs = [root / "no/spk00000_nohash_0.wav", root / "yes/spk00000_nohash_0.wav",
            _tone_wav(tmp_path / "long.wav", 1500.0, 0.7, 0.3, seconds=2.0, rate=22050),
            _tone_wav(tmp_path / "short.wav", 440.0, 0.0, 0.3, seconds=0.5, rate=22050)]
    assert_same_as_predict(run, run / "export/model_float.tflite", wavs, litert_python, tmp_path)
