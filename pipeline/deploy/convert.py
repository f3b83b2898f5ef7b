"""Conversion: the deployable graph -> SavedModel -> TFLite flatbuffers, each format in a child process.

    InferenceGraphs(run) --save_model (batch 1)--> .saved_model_deployable/ --convert(mode)--> bytes
        --tflite_edit (bytes -> bytes)--> RUN/.export.tmp-PID/model_<mode>.tflite
    (head_float: the same from the head's SavedModel; saved_model/: the deployable graph, any batch)

Every file keeps the RNNs as WHILE loops, int8 included (see `calibratable_while_loops` for why the
stock converter crashes on them and how export avoids it). In the int8 file the MFCC, the motion
features, their normalisations and attention pooling stay float, in the dynamic file the MFCC's mel projection (see
`tflite_edit.kept_float`: with them quantized, the speech and action models fell to chance).

`run_conversions` runs `convert_main` in a child process: a converter that crashes (SIGSEGV) costs
that one format a one-line error, and the next child goes on with the formats left. The child gets
absolute paths and runs in the caller's working directory, so a run dir or a config path
(`preprocess.weights`) relative to it means the same file in both processes. It reports through
work/status.jsonl, one JSON line per event: {"state": "start" | "ok" | "error", "target": ..., ...}.
The child dies with its parent (`die_with_parent`, Linux): a killed export leaves no converter running.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.config import Config
from pipeline.deploy.graph import TFLITE_FILES, InferenceGraphs, InputSpec
from pipeline.deploy.tflite_edit import (
    FP16_INFERENCE_HINT,
    copy_while_passthrough_outputs,
    dequantize_kept_float,
    drop_metadata,
    fill_splat_constants,
    float16_float_constants,
    int8_float_constants,
    kept_float,
    strip_tensor_names,
    widen_small_float16_constants,
    without_calibration,
)
from pipeline.errors import UserError
from pipeline.runtime.stream import clip_feeds
from pipeline.runtime.tflite import OUTPUT, SIGNATURE, STREAM_SIGNATURE, clip_inputs, raw_input_config

REPRESENTATIVE_FILE = "representative.npz"  # the int8 calibration inputs, in the work folder
ABSENT_EVERY = 4  # audio-visual runs: every 4th calibration clip also without its sound and without its frames
STREAM_REPRESENTATIVE_FILE = "stream_representative.npz"  # the streaming int8 file's: hops and states
STATUS_FILE = "status.jsonl"  # the child's progress, in the work folder
LOG_FILE = "convert.log"  # what the converter printed, in the work folder
# The child imports the package the parent runs: its folder goes first on the import path unless it is there already
# (an installed package); the caller's working directory is not on it (`python -P`: a `pipeline` folder there would shadow it).
CHILD = ("import sys; sys.path.insert(0, sys.argv[1]) if sys.argv[1] not in sys.path else None; from pathlib import Path; "
         "from pipeline.deploy.convert import convert_main, die_with_parent; die_with_parent(int(sys.argv[5])); "
         "convert_main(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4].split(','))")
CRASH_FOR_TESTS = "ACTREC_EXPORT_CRASH"  # a format name: the converter child kills itself with SIGSEGV there
PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding this `pipeline` package


# ----------------------------------------------------------------------------- SavedModel and TFLite conversion


def save_model(model, path: Path, specs: Sequence[InputSpec], batch_size: int | None) -> None:
    """SavedModel with one named signature: {input name: tensor} -> {'probabilities': [B, K]}."""
    import keras
    import tensorflow as tf

    signature = {s.name: tf.TensorSpec((batch_size, *s.shape), s.dtype, name=s.name) for s in specs}
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(SIGNATURE, lambda inputs: {OUTPUT: model(inputs, training=False)}, input_signature=[signature])
    archive.write_out(str(path), verbose=False)


def save_mediapipe_model(graphs: InferenceGraphs, path: Path) -> None:
    """SavedModel of the MediaPipe speech graph: signature {'waveform': [1, N]} -> {'probabilities': [1, K]}."""
    import keras
    import tensorflow as tf

    model, n = graphs.mediapipe(), graphs.num_samples
    archive = keras.export.ExportArchive()
    archive.track(model)
    full = {"num_samples": tf.fill([1], n)}  # MediaPipe feeds whole windows (the stream's last one zero-padded)
    archive.add_endpoint(SIGNATURE, lambda inputs: {OUTPUT: model({**inputs, **full}, training=False)},
                         input_signature=[{"waveform": tf.TensorSpec((1, n), tf.float32, name="waveform")}])
    archive.write_out(str(path), verbose=False)


def save_step_model(stepper, path: Path) -> None:
    """SavedModel of a streaming step (pipeline.models.streaming): signature `step`, {newest input, states} -> {probabilities, states}."""
    import keras
    import tensorflow as tf

    signature = {s.name: tf.TensorSpec(s.shape, s.dtype, name=s.name) for s in (*stepper.inputs(), *stepper.states())}
    archive = keras.export.ExportArchive()
    archive.track(stepper.model)
    archive.add_endpoint(STREAM_SIGNATURE, stepper.step, input_signature=[signature])
    archive.write_out(str(path), verbose=False)


def write_stream_representative(stepper, clips: Path, path: Path, every: int = 2) -> int:
    """The int8 calibration inputs of a streaming step: the whole-clip calibration inputs (`clips`, an .npz of
    write_representative_data) streamed step by step through the float step, every `every`-th step's inputs kept."""
    import tensorflow as tf

    step = tf.function(stepper.step)
    arrays = dict(np.load(clips))
    kept: dict[str, list] = {}
    for i in range(len(next(iter(arrays.values())))):
        states = {s.name: s.zeros() for s in stepper.states()}
        clip = {key: values[i] for key, values in arrays.items()}
        for k, feed in enumerate(clip_feeds(clip, stepper.modality, stepper.hop_samples, stepper.hops_per_step)):
            inputs = {**{s.name: feed[s.name].astype(s.dtype) for s in stepper.inputs()}, **states}
            if k % every == every - 1:
                for key, value in inputs.items():
                    kept.setdefault(key, []).append(value[0])
            out = step(inputs)
            states = {key: out[key].numpy() for key in states}
    np.savez(path, **{key: np.stack(values) for key, values in kept.items()})
    return len(kept[stepper.inputs()[0].name])


def convert(saved_model: Path, mode: str, representative: Path | None = None, signature: str = SIGNATURE,
            float_inputs: bool = False) -> bytes:
    """TFLite flatbuffer (builtin ops only) of a batch-1 SavedModel's `signature`: mode float | float16 | dynamic | int8.

    float_inputs (int8): the signature's inputs and the kept-float tensors carry no calibration statistics
    (tflite_edit.without_calibration), so no slice or reshape of them is quantized. Audio-visual streaming steps
    only: measured in docs/export.md (it rescues the audio-visual step and costs the speech step).
    """
    import tensorflow as tf

    from pipeline.features.encoders import quiet_converter

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model), signature_keys=[signature])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if mode in ("float16", "dynamic", "int8"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if mode != "int8":
        with quiet_converter():
            content = converter.convert()
        # Dynamic range: an FC with int8 weights quantizes its input on the fly, and the MFCC's mel
        # projection takes a power spectrum (measured: -3 points on a speech model); keep it float.
        if mode == "dynamic":
            content = dequantize_kept_float(content)
        if mode == "float16":
            content = widen_small_float16_constants(drop_metadata(content, FP16_INFERENCE_HINT))
        else:
            content = fill_splat_constants(content)
        return strip_tensor_names(content)

    samples = dict(np.load(representative))
    count = len(next(iter(samples.values())))

    def representative_dataset():
        for i in range(count):
            yield {name: value[i : i + 1] for name, value in samples.items()}

    converter.representative_dataset = representative_dataset
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    # Calibrate, then quantize all but `kept_float`: a power spectrum spans over 100 dB and 8 bits
    # hold 48, int8 utterance normalisation gave NaNs, masked attention scores are -1e9 (measured:
    # speech and action models fell to chance with them quantized). The quantizer's node denylist is
    # only reachable through mlir_quantize, the function TFLiteConverter itself calls after calibrating.
    # FULLY_CONNECTED weights get one scale per tensor (convolutions keep one per output channel,
    # which depthwise MobileNets need): an RNN has 3 x units channels per kernel, and each channel
    # cost its weights and bias a scale and a zero point (measured: 14 KB of the int8 action model's
    # 412, 1 point of the file's size relative to float; agreement with float stayed 100% on the
    # action and speech test clips, accuracy unchanged).
    from tensorflow.lite.python import convert as tflite_convert

    converter._experimental_calibrate_only = True
    with quiet_converter(), calibratable_while_loops():
        calibrated = converter.convert()
        # a streaming step's RNN cells compute in float on int8 weights: their state comes back at every step, and int8
        # rounding of it adds up over a stream (measured in docs/export.md)
        kept = kept_float(calibrated, recurrent=signature == STREAM_SIGNATURE)
        if float_inputs:
            calibrated = without_calibration(calibrated, set(kept), signature)
        content = tflite_convert.mlir_quantize(calibrated, denylisted_nodes=kept,
                                               input_data_type=tf.float32, output_data_type=tf.float32,
                                               disable_per_channel_for_dense_layers=True)
    content = fill_splat_constants(tflite_convert.deduplicate_readonly_buffers(content))
    return strip_tensor_names(float16_float_constants(int8_float_constants(content)))


@contextlib.contextmanager
def calibratable_while_loops():
    """Within: the int8 calibrator gets models whose WHILE-loop bodies pass no input through unchanged.

    The converter turns the weights and inputs an RNN loop reads into loop variables that its body
    returns untouched. The WHILE kernel frees such pass-through outputs and the calibrator then
    reads the freed memory: SIGSEGV on any LSTM/GRU (tensorflow/tensorflow#75140, #87468). Until
    that is fixed upstream, the float model handed to the calibrator returns a RESHAPE copy of each
    pass-through instead; the copies are identities and stay in the file (a few ops per loop).
    """
    from tensorflow.lite.python import lite

    stock = lite._calibrator.Calibrator

    class Calibrator(stock):
        def __init__(self, model_content, *args, **kwargs):
            super().__init__(copy_while_passthrough_outputs(model_content), *args, **kwargs)

    lite._calibrator.Calibrator = Calibrator
    try:
        yield
    finally:
        lite._calibrator.Calibrator = stock


# ----------------------------------------------------------------------------- int8 calibration data


def write_representative_data(cfg: Config, path: Path, count: int, input_names: Sequence[str] = ()) -> int:
    """Decode up to `count` raw training clips (the int8 calibration set) into an .npz of batch-free inputs.

    A model whose inputs (`input_names`, the deployable graph's) hold both modalities also sees every
    ABSENT_EVERY-th clip once without its sound and once without its frames (decode.without_modality): the paths a video without a sound track takes (the presence gates, a modality's own
    classifier under backoff fusion) are calibrated too, or int8 rounds them to zero.
    Returns the number of inputs written. Raises UserError naming what is missing when no clip can be decoded.
    """
    from pipeline.datasets import resolve_rows
    from pipeline.features.records import modalities_of
    from pipeline.media import MediaError
    from pipeline.runtime.decode import decode_clip, without_modality

    root = Path(cfg.data.root)
    if not root.is_dir():
        raise UserError(f"int8 needs training clips to calibrate on: data.root {root} not found")
    try:
        rows, _, _ = resolve_rows(cfg)
    except UserError as e:
        raise UserError(f"int8 needs training clips to calibrate on: {e}") from None
    rows = [r for r in rows if r.split == "train"]
    raw_cfg = raw_input_config(cfg)
    audio_visual = len(modalities_of(input_names)) == 2
    samples: dict[str, list] = {}
    tried = decoded_clips = 0
    for row in rows:
        if decoded_clips >= count:
            break
        tried += 1
        try:
            decoded = decode_clip(root / row.path, raw_cfg, start=row.start)
        except MediaError:
            continue
        variants = [decoded]
        if audio_visual and decoded_clips % ABSENT_EVERY == 0:
            variants += [without_modality(decoded, modality, raw_cfg) for modality in ("audio", "video")]
        decoded_clips += 1
        for variant in variants:
            for name, value in clip_inputs(variant).items():
                samples.setdefault(name, []).append(value)
    if not samples:
        raise UserError(f"int8 needs training clips to calibrate on: none of {tried} training clips under {root} could be decoded")
    np.savez(path, **{name: np.stack(values) for name, values in samples.items()})
    return len(next(iter(samples.values())))


# ----------------------------------------------------------------------------- the child process


def die_with_parent(parent_pid: int) -> None:
    """In the converter child: ask the kernel to SIGKILL this process when the export that started it dies.

    Else a SIGKILLed export leaves its converter running as an orphan, converting into a work folder nobody reads
    (the next export removes it). Linux only (prctl PR_SET_PDEATHSIG); elsewhere the child is not tied to its parent.
    The signal is sent when the parent's thread that started the child ends: run_conversions waits for the child in
    that thread. A parent that died before the request is seen by getppid() no longer being it.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1  # <linux/prctl.h>
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0) != 0:
            return
    except (OSError, AttributeError):  # no usable libc prctl (an unusual C library): keep converting, as elsewhere
        return
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGKILL)


def convert_main(run_dir: Path, work: Path, targets: list[str]) -> None:
    """The child process: write each target into `work`, logging start/ok/error lines to work/status.jsonl."""
    from pipeline.deploy.metadata import export_metadata
    from pipeline.models.streaming import stream_modality

    graphs = InferenceGraphs(run_dir, allow_unfinished=True)  # the parent process made the checks
    saved_models: dict[str, Path] = {}
    preprocessing = json.loads((work / "preprocessing.json").read_text())  # written by the parent before the conversions
    labels = (work / "labels.txt").read_text().splitlines()

    def saved_model_for(kind: str) -> Path:
        """A batch-1 SavedModel of the deployable graph or the head, written once per kind."""
        if kind not in saved_models:
            path = work / f".saved_model_{kind}"
            model = graphs.deployable(1) if kind == "deployable" else graphs.head(1)
            save_model(model, path, graphs.inputs() if kind == "deployable" else graphs.head_inputs(), 1)
            saved_models[kind] = path
        return saved_models[kind]

    def step_model() -> Path:
        """A SavedModel of the streaming step (signature `step`), written once."""
        if "step" not in saved_models:
            saved_models["step"] = work / ".saved_model_step"
            save_step_model(graphs.stepper(), saved_models["step"])
        return saved_models["step"]

    for target in targets:
        _status(work, "start", target)
        if os.environ.get(CRASH_FOR_TESTS) == target:
            os.kill(os.getpid(), signal.SIGSEGV)
        start = time.time()
        try:
            if target == "saved_model":
                save_model(graphs.deployable(None), work / "saved_model", graphs.inputs(), None)
            else:
                if target == "head_float":
                    content = convert(saved_model_for("head"), "float")
                elif target == "mediapipe":
                    saved_models["mediapipe"] = work / ".saved_model_mediapipe"
                    save_mediapipe_model(graphs, saved_models["mediapipe"])
                    content = convert(saved_models["mediapipe"], "float")
                elif target in ("stream_float", "stream_int8"):
                    mode, representative = target.removeprefix("stream_"), work / STREAM_REPRESENTATIVE_FILE
                    if mode == "int8" and not representative.is_file():
                        write_stream_representative(graphs.stepper(), work / REPRESENTATIVE_FILE, representative)
                    content = convert(step_model(), mode, representative, STREAM_SIGNATURE,
                                      float_inputs=stream_modality(graphs.cfg) == "av")
                else:
                    content = convert(saved_model_for("deployable"), target, work / REPRESENTATIVE_FILE)
                (work / TFLITE_FILES[target]).write_bytes(export_metadata(content, target, preprocessing, labels))
        except Exception as e:  # noqa: BLE001  (the converter raises many types; the format fails, the export goes on)
            _status(work, "error", target, error=_one_line(e))
            continue
        _status(work, "ok", target, seconds=round(time.time() - start, 1))
    for path in saved_models.values():
        shutil.rmtree(path, ignore_errors=True)


def _status(work: Path, state: str, target: str, **extra) -> None:
    with open(work / STATUS_FILE, "a") as f:
        f.write(json.dumps({"state": state, "target": target, **extra}) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _one_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return f"{type(e).__name__}: {(errors or lines or [''])[0][:300]}"


def run_conversions(run_dir: Path, work: Path, targets: list[str], progress: bool = True) -> dict[str, dict]:
    """Convert every target in child processes; a crashed child costs only the target it was on.

    Returns {target: {'seconds': s} | {'error': one line}}.
    """
    results: dict[str, dict] = {}
    remaining = list(targets)
    log = work / LOG_FILE
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    while remaining:
        status_file = work / STATUS_FILE
        status_file.unlink(missing_ok=True)
        # absolute paths, and the caller's working directory: relative config paths mean the same files as here
        cmd = [sys.executable, "-P", "-c", CHILD, str(PACKAGE_ROOT), str(Path(run_dir).absolute()), str(Path(work).absolute()),
               ",".join(remaining), str(os.getpid())]  # the child dies with this process (die_with_parent)
        with open(log, "a") as out:
            proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, check=False)
        started = None
        for line in status_file.read_text().splitlines() if status_file.is_file() else []:
            event = json.loads(line)
            if event["state"] == "start":
                started = event["target"]
            else:
                results[event["target"]] = {k: v for k, v in event.items() if k not in ("state", "target")}
                started = None
                if progress:
                    _print_conversion(event)
        done = [t for t in remaining if t in results]
        if proc.returncode != 0 and started is not None:
            how = f"signal {signal.Signals(-proc.returncode).name}" if proc.returncode < 0 else f"exit status {proc.returncode}"
            results[started] = {"error": f"the TFLite converter crashed ({how}); see {log.name}"}
            if progress:
                _print_conversion({"state": "error", "target": started, **results[started]})
        elif proc.returncode != 0:  # failed before its first target: nothing else will work either
            tail = [line for line in log.read_text().splitlines() if line.strip()][-1:] if log.is_file() else []
            for t in remaining:
                if t not in results:
                    results[t] = {"error": f"conversion process failed (exit status {proc.returncode}): {tail[0][:300] if tail else ''}"}
        remaining = [t for t in remaining if t not in results and t not in done]
    return results


def _print_conversion(event: dict) -> None:
    if event["state"] == "ok":
        print(f"export: {event['target']} written in {event['seconds']:.1f} s", flush=True)
    else:
        print(f"export: {event['target']} failed: {event['error']}", flush=True)
