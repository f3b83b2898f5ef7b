"""Exported files as Android / iOS / web runtimes read them: TFLite Model Metadata read back with the metadata schema's
own generated reader, and a speech run's model_mediapipe.tflite loaded and run by MediaPipe Tasks' AudioClassifier.

MediaPipe pulls numpy 2, so it gets a venv of its own (from the package index); the test environment compares what
it prints with `actrec predict --model model_float.tflite`. The speech run is tests/fault_corpus.py's tiny tone run
(words `no` at 1500 Hz and `yes` at 440 Hz), exported once per pytest process.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

from pipeline.stages.predict import predict
from tests import fault_corpus as fc
from tests.test_litert import fresh_venv

MEDIAPIPE = "mediapipe==1.2.3"
# Run in the MediaPipe venv: argv = .tflite file, WAVs. READ: the metadata (with the schema's generated reader) and the
# zipped labels; CLASSIFY: AudioClassifier on each WAV. Prints JSON {metadata, labels_in_zip, top: {wav: [[label, score]]}}.
READ = r"""
import json, sys, wave, zipfile
import numpy as np
from mediapipe.tasks.metadata import metadata_schema_py_generated as meta_fb
from mediapipe.tasks.metadata import schema_py_generated as model_fb

path, wavs = sys.argv[1], sys.argv[2:]
content = open(path, "rb").read()
model = model_fb.Model.GetRootAs(content, 0)
(buffer,) = [model.Metadata(i).Buffer() for i in range(model.MetadataLength()) if model.Metadata(i).Name() == b"TFLITE_METADATA"]
data = model.Buffers(buffer).DataAsNumpy().tobytes()
assert meta_fb.ModelMetadata.ModelMetadataBufferHasIdentifier(data, 0)
m = meta_fb.ModelMetadata.GetRootAs(data, 0)
sub = m.SubgraphMetadata(0)

def tensor(t):
    content = t.Content()
    kind = content.ContentPropertiesType() if content else 0
    out = {"name": t.Name().decode(), "description": (t.Description() or b"").decode(), "content_type": kind,
           "files": [[t.AssociatedFiles(i).Name().decode(), t.AssociatedFiles(i).Type()] for i in range(t.AssociatedFilesLength())]}
    if kind == meta_fb.ContentProperties.AudioProperties:
        audio = meta_fb.AudioProperties()
        audio.Init(content.ContentProperties().Bytes, content.ContentProperties().Pos)
        out["audio"] = [audio.SampleRate(), audio.Channels()]
    return out

metadata = {"name": m.Name().decode(), "version": m.Version().decode(), "description": m.Description().decode(),
            "author": m.Author().decode(), "min_parser_version": m.MinParserVersion().decode(),
            "files": [m.AssociatedFiles(i).Name().decode() for i in range(m.AssociatedFilesLength())],
            "inputs": [tensor(sub.InputTensorMetadata(i)) for i in range(sub.InputTensorMetadataLength())],
            "outputs": [tensor(sub.OutputTensorMetadata(i)) for i in range(sub.OutputTensorMetadataLength())],
            "subgraphs": model.SubgraphsLength()}
labels = zipfile.ZipFile(path).read("labels.txt").decode().splitlines()
top = {}
"""
CLASSIFY = r"""
from mediapipe.tasks.python import audio
from mediapipe.tasks.python.components.containers import audio_data
from mediapipe.tasks.python.core import base_options

options = audio.AudioClassifierOptions(base_options=base_options.BaseOptions(model_asset_path=path),
                                       running_mode=audio.RunningMode.AUDIO_CLIPS, max_results=1)
with audio.AudioClassifier.create_from_options(options) as classifier:
    for name in wavs:
        with wave.open(name) as w:
            samples = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768.0
            rate = w.getframerate()
        results = classifier.classify(audio_data.AudioData.create_from_array(samples, rate))
        top[name] = [[r.classifications[0].categories[0].category_name, r.classifications[0].categories[0].score] for r in results]
"""
PRINT = 'print(json.dumps({"metadata": metadata, "labels_in_zip": labels, "top": top}))'


def run_in_venv(python: Path, script: str, *args) -> dict:
    out = subprocess.run([python, "-c", script, *map(str, args)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def mediapipe_python(tmp_path_factory) -> Path:
    """The python of a fresh venv with MediaPipe (and its own numpy 2), installed by pip from the package index."""
    start = time.perf_counter()
    python = fresh_venv(tmp_path_factory.mktemp("mediapipe") / "venv", [MEDIAPIPE])
    print(f"\nMediaPipe venv ({MEDIAPIPE}): {time.perf_counter() - start:.0f} s")
    return python


def tone_wav(path: Path, hz: float, offset: float, amplitude: float, rate: int = 16000) -> Path:
    """A 1-s mono 16-bit WAV: silence with a 0.6-s sine at `hz` from `offset` seconds."""
    t = np.arange(rate) / rate
    wave = np.where((t >= offset) & (t < offset + 0.6), amplitude * np.sin(2 * np.pi * hz * t), 0.0)
    soundfile.write(path, wave.astype(np.float32), rate, subtype="PCM_16")
    return path


@pytest.mark.slow  # a venv with MediaPipe from the package index, and the tiny speech run trained and exported (shared)
def test_mediapipe_audio_classifier_runs_the_speech_export(mediapipe_python, tmp_path, tmp_path_factory):
    root, run = fc.shared_speech_run(tmp_path_factory)
    export_dir = fc.shared_float_export(run)
    model = export_dir / "model_mediapipe.tflite"
    rng = np.random.default_rng(0)
    wavs = [root / "no/spk00000_nohash_0.wav", root / "yes/spk00000_nohash_0.wav"]  # the test split
    wavs += [tone_wav(tmp_path / f"tone{i}.wav", hz, rng.uniform(0.0, 0.4), rng.uniform(0.05, 0.5))
             for i, hz in enumerate([1500.0, 440.0] * 10)]
    got = run_in_venv(mediapipe_python, READ + CLASSIFY + PRINT, model, *wavs)

    labels = (export_dir / "labels.txt").read_text().splitlines()
    preprocessing = json.loads((export_dir / "preprocessing.json").read_text())
    meta = got["metadata"]
    assert got["labels_in_zip"] == labels and meta["files"] == ["labels.txt"]
    assert meta["subgraphs"] == 1  # RNNs unrolled: MediaPipe refuses files with several subgraphs
    assert meta["name"] == "actrec audio_rnn" and meta["author"] == "actrec" and meta["min_parser_version"] == "1.3.0"
    (waveform,) = meta["inputs"]
    assert waveform["name"] == "waveform" and waveform["audio"] == [preprocessing["audio"]["sample_rate"], 1]
    (probabilities,) = meta["outputs"]
    assert probabilities["name"] == "probabilities" and probabilities["files"] == [["labels.txt", 2]]  # TENSOR_AXIS_LABELS

    expected = predict(run, wavs, model=str(export_dir / "model_float.tflite"))
    agree = 0
    for wav, want in zip(wavs, expected):
        (window,) = got["top"][str(wav)]  # one 1-s window per 1-s WAV
        label, score = window
        i = int(np.argmax(want["probs"]))
        agree += label == labels[i]
        if label == labels[i]:
            assert abs(score - float(want["probs"][i])) < 1e-4, (wav, score, want["probs"])
    assert agree / len(wavs) >= 0.98, f"MediaPipe and actrec predict agree on {agree} of {len(wavs)}"


@pytest.mark.slow  # the tiny speech run trained and exported (shared)
def test_every_exported_file_carries_its_metadata(mediapipe_python, trained_run, tmp_path, tmp_path_factory):
    """The action run's files: frames described as RGB images, waveform as 16 kHz mono, labels on the output, in the
    subgraph's input order (what runtimes index by)."""
    from pipeline.deploy.tflite_read import signature_tensor_names
    from pipeline.runtime.tflite import SIGNATURE

    run = fc.shared_copy(trained_run, tmp_path_factory, "trained_run_exported")
    export_dir = fc.shared_float_export(run)
    for name in ("model_float.tflite", "head_float.tflite"):
        got = run_in_venv(mediapipe_python, READ + PRINT, export_dir / name)
        assert got["labels_in_zip"] == (export_dir / "labels.txt").read_text().splitlines()
        inputs, _ = signature_tensor_names((export_dir / name).read_bytes(), SIGNATURE)
        assert [t["name"] for t in got["metadata"]["inputs"]] == inputs
        content_types = {t["name"]: t["content_type"] for t in got["metadata"]["inputs"]}
        if name == "model_float.tflite":
            assert content_types == {"frames": 2, "frame_lengths": 1, "waveform": 4, "num_samples": 1}  # image, feature, audio
        else:
            assert set(content_types) == {"frame_features", "frame_lengths", "mfcc", "mfcc_length"}
        assert got["metadata"]["outputs"][0]["files"] == [["labels.txt", 2]]
