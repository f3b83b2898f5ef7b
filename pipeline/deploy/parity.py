"""Parity: every exported file against the Keras model on the raw test clips, timed; the acceptance checks.

    test clip --decode_clip (the evaluation sampling, raw waveform kept)--> decoded
        --RunModel (model.keras on the run's own preprocessing: what `actrec evaluate` measures)--> reference [V, K]
        --the rebuilt deployable graph, in Keras--------------------------------------------------> [V, K]
        --saved_model/ (signature serving_default)-------------------------------------------------> [V, K]
        --clip_inputs--> each .tflite file through TFLiteClassifier (XNNPACK, as apps run it)-------> [V, K]
        (head_float.tflite: the run's encoder and librosa MFCCs first, as an app with its own would)
        (model_stream_*.tflite: the waveform hop by hop, or the frames one by one, from zero states through
         StreamingClassifier, the last step's output; latency is per step)

Per file: top-1 agreement with the reference (views averaged), max |dprob|, test accuracy, and the
latency of one clip with 1 and 2 interpreter threads (median and 90th percentile). `checks` turns the
numbers into the deployment acceptance checks of parity.json; `parity_table` prints them.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from pipeline.deploy.graph import TFLITE_FILES, InferenceGraphs
from pipeline.errors import UserError
from pipeline.runtime.stream import StreamingClassifier, clip_feeds
from pipeline.runtime.tflite import (
    OUTPUT,
    SIGNATURE,
    TFLiteClassifier,
    clip_inputs,
    raw_input_config,
)


def is_stream(target: str) -> bool:
    return target.startswith("stream_")


def _latency_ms(fn, runs: int) -> dict:
    """{'median', 'p90'}: milliseconds per call of fn over `runs` calls, after two warm-up calls."""
    fn(), fn()  # warm-up: the first calls allocate and plan
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return {"median": round(float(np.median(times)), 3), "p90": round(float(np.percentile(times, 90)), 3)}


def measure_parity(graphs: InferenceGraphs, export_dir: Path, tflite_targets: list[str], progress: bool = True) -> dict:
    """Compare every exported file with the Keras model on the raw test clips; time them."""
    import tensorflow as tf
    from tqdm import tqdm

    from pipeline.datasets import resolve_rows
    from pipeline.media import MediaError
    from pipeline.runtime.decode import decode_clip
    from pipeline.runtime.keras_model import RunModel

    cfg = graphs.cfg
    runs = cfg.export.latency_runs
    # what `actrec evaluate` measures: decode_clip -> encoder -> model.keras (the export checked the run finished training)
    keras_model = RunModel(graphs.run_dir, allow_unfinished=True)
    classes = keras_model.classes
    root = Path(cfg.data.root)
    try:
        rows = [r for r in resolve_rows(cfg)[0] if r.split == "test"] if root.is_dir() else []
    except UserError:
        rows = []
    if not rows:
        return {"error": f"no raw test clips under data.root {root}: parity and latency not measured"}

    deployable_model = graphs.deployable(None)
    # one traced graph for every clip: called eagerly, a Keras RNN steps through its loop in Python (~1 s per clip)
    deployable = tf.function(lambda batch: deployable_model(batch, training=False), reduce_retracing=True)
    saved_model = tf.saved_model.load(str(export_dir / "saved_model")).signatures[SIGNATURE] if (export_dir / "saved_model").is_dir() else None
    classifiers = {t: (StreamingClassifier if is_stream(t) else TFLiteClassifier)(export_dir / TFLITE_FILES[t]) for t in tflite_targets}
    decode_cfg = raw_input_config(keras_model.clip_cfg)  # the evaluation sampling, plus the raw waveform

    labels, skipped, first_inputs, first_head_inputs = [], [], None, None
    probs: dict[str, list] = {"keras": [], "deployable": [], **{t: [] for t in classifiers}}
    saved_model_diff = 0.0
    for row in tqdm(rows, desc="parity", unit="clip", disable=not progress, dynamic_ncols=True):
        try:
            decoded = decode_clip(root / row.path, decode_cfg, start=row.start)
        except MediaError as e:
            skipped.append([row.clip_id, str(e)])
            continue
        labels.append(classes.index(row.label))
        views = range(len(decoded.get("frame_lengths", [0])))
        keras_probs = keras_model.predict_decoded(decoded)  # [V, K]
        probs["keras"].append(keras_probs)
        view_inputs = [clip_inputs(decoded, v) for v in views]
        first_inputs = first_inputs or view_inputs[0]
        batch = {name: np.stack([vi[name] for vi in view_inputs]) for name in view_inputs[0]}
        batch = {s.name: batch[s.name] for s in graphs.inputs()}
        deployable_probs = np.asarray(deployable(batch))
        probs["deployable"].append(deployable_probs)
        if saved_model is not None:
            served = saved_model(**{k: tf.constant(v) for k, v in batch.items()})[OUTPUT].numpy()
            saved_model_diff = max(saved_model_diff, float(np.abs(served - deployable_probs).max()))
        for target, classifier in classifiers.items():
            if target == "head_float":  # the cached-feature path: the run's encoder and librosa MFCCs
                head_batch = keras_model.model_inputs(keras_model.encoder.encode([decoded])[0])
                head_views = [{k: v[i] for k, v in head_batch.items()} for i in views]
                first_head_inputs = first_head_inputs or head_views[0]
                probs[target].append(np.stack([classifier.predict(hv) for hv in head_views]))
            elif is_stream(target):  # fed hop by hop (frame by frame) from zero states: the last step's probabilities
                probs[target].append(np.stack([classifier.run_clip(vi) for vi in view_inputs]))
            else:
                probs[target].append(np.stack([classifier.predict(vi) for vi in view_inputs]))
    if not labels:
        return {"error": f"none of the {len(rows)} test clips under {root} could be decoded", "skipped": skipped}

    labels = np.array(labels)
    reference = np.stack(probs["keras"])  # [N, V, K]
    keras_top1 = reference.mean(1).argmax(-1)

    def compare(view_probs: list) -> dict:
        view_probs = np.stack(view_probs)
        top1 = view_probs.mean(1).argmax(-1)
        return {"top1_agreement": round(float((top1 == keras_top1).mean()), 4),
                "max_abs_diff_prob": float(np.abs(view_probs - reference).max()),
                "accuracy": round(float((top1 == labels).mean()), 4)}

    batch_one = {k: np.asarray(v)[None] for k, v in first_inputs.items() if k in {s.name for s in graphs.inputs()}}
    result = {
        "test_clips": len(labels),
        "skipped": skipped,
        "reference": "model.keras on the raw test clips through the run's own preprocessing (what `actrec evaluate` measures)",
        "keras": {"accuracy": round(float((keras_top1 == labels).mean()), 4),
                  "predict_ms": _latency_ms(lambda: deployable_model.predict_on_batch(batch_one), runs)},
        "deployable_keras": {**compare(probs["deployable"]),
                             "doc": "the rebuilt graph with in-model encoder and MFCC, in Keras, vs the reference"},
        "formats": {},
    }
    if saved_model is not None:
        result["saved_model"] = {"max_abs_diff_prob_vs_deployable_keras": saved_model_diff}
    for target in classifiers:
        path = export_dir / TFLITE_FILES[target]
        sample = first_head_inputs if target == "head_float" else first_inputs
        latency = {}
        for threads in (1, 2):
            if is_stream(target):
                timed = StreamingClassifier(path, threads=threads)
                feed = clip_feeds(sample, timed.modality, timed.hop_samples, timed.hops_per_step)[0]
                latency[f"threads_{threads}"] = _latency_ms(lambda timed=timed, feed=feed: timed.feed(feed), runs)
            else:
                timed = TFLiteClassifier(path, threads=threads)
                latency[f"threads_{threads}"] = _latency_ms(lambda timed=timed, sample=sample: timed.predict(sample), runs)
        result["formats"][target] = {"file": path.name, "bytes": path.stat().st_size, **compare(probs[target]), "latency_ms": latency,
                                     **({"latency_of": f"one {'hop' if timed.modality == 'audio' else 'frame'}"} if is_stream(target) else {})}
    return result


# ----------------------------------------------------------------------------- acceptance checks and the printed table


FLOAT_MAX_ABS_DIFF = 1e-4  # model_float.tflite: largest |dprob| vs Keras for "the same model"
FLOAT16_MIN_AGREEMENT = 0.995  # model_float16.tflite: top-1 agreement with Keras
QUANTIZED_MAX_ACCURACY_DROP = 0.02  # dynamic and int8: test accuracy at most 2 points below the float file's
INT8_MAX_SIZE_RATIO = 0.3  # model_int8.tflite: bytes at most 30% of model_float.tflite's
FLOAT_MIN_SPEEDUP = 5.0  # model_float.tflite: one clip at least 5x faster than Keras `predict`
STREAM_INT8_MIN_AGREEMENT = 0.99  # model_stream_int8.tflite: top-1 agreement with Keras after a whole window of hops
MEDIAPIPE_MIN_AGREEMENT = 0.98  # model_mediapipe.tflite: top-1 agreement with Keras (it hears a short clip's padding)


def checks(result: dict) -> dict[str, bool | None]:
    """The deployment acceptance checks of a parity.json dict: {check: met} (None: a format not exported or not measured).

    - float: top-1 agreement with the Keras model 100% and max |dprob| below FLOAT_MAX_ABS_DIFF (1e-4): the
      float file is the Keras model, up to float32 rounding.
    - float16: top-1 agreement at least FLOAT16_MIN_AGREEMENT (99.5%): halving the weights' precision moves
      probabilities slightly but changes almost no decision.
    - dynamic, int8: test accuracy at most QUANTIZED_MAX_ACCURACY_DROP (2 points) below the float file's.
    - int8 size: the file at most INT8_MAX_SIZE_RATIO (30%) of the float file's bytes (int8 weights are a
      quarter of float32; the rest is the graph, quantization parameters and what stays float).
    - stream_float (streamable runs): after a window's hops from zero states, as float: agreement 100% and
      max |dprob| below 1e-4, the whole-window model up to float32 rounding.
    - stream_int8: top-1 agreement at least STREAM_INT8_MIN_AGREEMENT (99%) after a window's hops.
    - mediapipe (speech runs): top-1 agreement at least MEDIAPIPE_MIN_AGREEMENT (98%): the float model with its RNNs
      unrolled, fed whole windows, so a clip shorter than the window is heard with its zero padding.
    - speed: the float file's median latency for one clip (the better of 1 and 2 threads) at least
      FLOAT_MIN_SPEEDUP (5x) below Keras `predict` on the same clip.
    """
    f = result.get("formats", {})

    def get(fmt, key):
        return f.get(fmt, {}).get(key)

    float_acc = get("float", "accuracy")

    def within(fmt):
        if get(fmt, "accuracy") is None or float_acc is None:
            return None
        return float_acc - get(fmt, "accuracy") <= QUANTIZED_MAX_ACCURACY_DROP

    keras_ms = result.get("keras", {}).get("predict_ms", {}).get("median")
    float_ms = min((t["median"] for t in (get("float", "latency_ms") or {}).values()), default=None)  # the better thread count
    return {
        "float: top-1 agreement 100% and max |dprob| < 1e-4": None if get("float", "top1_agreement") is None
        else get("float", "top1_agreement") == 1.0 and get("float", "max_abs_diff_prob") < FLOAT_MAX_ABS_DIFF,
        "float16: top-1 agreement >= 99.5%": None if get("float16", "top1_agreement") is None
        else get("float16", "top1_agreement") >= FLOAT16_MIN_AGREEMENT,
        "dynamic: accuracy within 2 points of float": within("dynamic"),
        "int8: accuracy within 2 points of float": within("int8"),
        "int8 file <= 30% of float": None if get("int8", "bytes") is None or get("float", "bytes") is None
        else get("int8", "bytes") <= INT8_MAX_SIZE_RATIO * get("float", "bytes"),
        "stream_float: top-1 agreement 100% and max |dprob| < 1e-4": None if get("stream_float", "top1_agreement") is None
        else get("stream_float", "top1_agreement") == 1.0 and get("stream_float", "max_abs_diff_prob") < FLOAT_MAX_ABS_DIFF,
        "stream_int8: top-1 agreement >= 99%": None if get("stream_int8", "top1_agreement") is None
        else get("stream_int8", "top1_agreement") >= STREAM_INT8_MIN_AGREEMENT,
        "mediapipe: top-1 agreement >= 98%": None if get("mediapipe", "top1_agreement") is None
        else get("mediapipe", "top1_agreement") >= MEDIAPIPE_MIN_AGREEMENT,
        "TFLite float >= 5x faster than Keras predict": None if not (keras_ms and float_ms) else keras_ms >= FLOAT_MIN_SPEEDUP * float_ms,
    }


def parity_table(result: dict) -> str:
    """The printed summary: one row per format."""
    lines = ["| format | file | size KB (weights) | top-1 agree | max abs dprob | accuracy | ms 1 thread (p50/p90) | ms 2 threads (p50/p90) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for target, r in result.get("formats", {}).items():
        lat = r.get("latency_ms", {})
        ms = {k: f"{t['median']:.1f} / {t['p90']:.1f}" for k, t in lat.items()}
        agree = f"{r['top1_agreement']:.1%}" if "top1_agreement" in r else "-"
        diff = f"{r['max_abs_diff_prob']:.1e}" if "max_abs_diff_prob" in r else "-"
        acc = f"{r['accuracy']:.3f}" if "accuracy" in r else "-"
        weights = f" ({r['weight_bytes'] / 1024:.0f})" if "weight_bytes" in r else ""
        target = f"{target} (ms per {r['latency_of'].removeprefix('one ')})" if r.get("latency_of") else target
        lines.append(f"| {target} | {r['file']} | {r['bytes'] / 1024:.0f}{weights} | {agree} | {diff} | {acc} | {ms.get('threads_1', '-')} | {ms.get('threads_2', '-')} |")
    if "keras" in result:
        k = result["keras"]
        lines.append(f"| keras | model.keras | - | (reference) | - | {k['accuracy']:.3f} | predict_on_batch: {k['predict_ms']['median']:.1f} / {k['predict_ms']['p90']:.1f} | - |")
    if "saved_model" in result:
        lines.append(f"\nsaved_model/: max |dprob| vs the Keras graph {result['saved_model']['max_abs_diff_prob_vs_deployable_keras']:.1e}")
    if "test_clips" in result:
        lines.append(f"{result['test_clips']} raw test clips ({len(result['skipped'])} skipped)")
    if "parity_error" in result:
        lines.append(f"parity not measured: {result['parity_error']}")
    for fmt, error in result.get("errors", {}).items():
        lines.append(f"{fmt}: failed: {error}")
    return "\n".join(lines)

