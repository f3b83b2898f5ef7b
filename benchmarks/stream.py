"""Streaming keyword spotting: the cost of a hop, and detections on a long stream of unseen speakers.

    RUN ... (streamable runs, exported: model_stream_float/int8.tflite, model_float.tflite; several: e.g. 3 seeds)
      latency: one `step` call (20 ms hop) of each streaming file vs model_float.tflite re-run on the 1-s window,
               as an app without streaming does every hop (LiteRT, 1 thread, median of --runs calls)
      stream:  the run's test split (speakers never trained on) assembled into one long recording: every test
               keyword and other word once, in random order, each after a gap of 0.5-2 s of test background
               (the _silence_ windows, at random gains), then --negative-minutes more of other words and
               background alone
        --StreamingClassifier (states never reset, and with refresh: restarted every window), per hop--> probabilities
        --KeywordDetector (smoothing, refractory; with the pause gate, as `actrec stream` runs: keywords counted only
          in hops 10 dB below the loudest of the last half second) at each threshold of a grid-->
           detection rate: test keywords detected with their label from their start to 0.5 s after their end
           false accepts per hour: every other detection, per hour of stream
        whole window, each word once: model_float.tflite on each word's own clip, cut from the stream where it was put
           (no streaming: a perfect word segmenter, one look per word); its best keyword at each threshold is a
           detection or a false accept. What the keyword model does with no streaming at all: read the streaming
           columns against it.

Prints markdown tables (with several runs: mean ± standard deviation over them) and writes
benchmarks/results/stream.json and .md (per run and format, the operating point: the lowest threshold with at most
--max-fa-per-hour false accepts per hour, and the detection rate there).

Usage: python benchmarks/stream.py --run-dir RUN [RUN ...] [--runs 200] [--negative-minutes 30] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.labels import REJECT_LABELS  # noqa: E402
from pipeline.media.audio import fit_length  # noqa: E402
from pipeline.rundir import RunDir  # noqa: E402
from pipeline.runtime.stream import StreamingClassifier  # noqa: E402
from pipeline.runtime.tflite import TFLiteClassifier  # noqa: E402
from pipeline.stream_eval import assemble_stream, detect, keyword_events, pauses, score_detections  # noqa: E402

THRESHOLDS = [round(t, 2) for t in np.arange(0.3, 1.0, 0.05)] + [0.97, 0.99]
WHOLE_WINDOW = "whole window, each word once"


def median_ms(fn, runs: int) -> float:
    fn(), fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def random_input(spec: dict, rng) -> np.ndarray:
    """A value for one input of preprocessing.json (without its batch axis): frames as uint8, sound in [-0.1, 0.1]."""
    shape = spec["shape"][1:]
    if spec["dtype"] == "uint8":
        return rng.integers(0, 256, shape).astype(np.uint8)
    return rng.uniform(-0.1, 0.1, shape).astype(np.float32)


def latency(export: Path, runs: int) -> dict:
    """ms per call, 1 thread: each streaming file's step (a hop of audio, or a frame), and the whole-window file (what
    re-running costs per step)."""
    out = {}
    rng = np.random.default_rng(0)
    window = TFLiteClassifier(export / "model_float.tflite", threads=1)
    whole = {name: random_input(spec, rng) for name, spec in window.inputs.items() if name in ("waveform", "frames")}
    out["window_float_ms"] = median_ms(lambda: window.predict(whole), runs)
    for fmt in ("float", "int8"):
        path = export / f"model_stream_{fmt}.tflite"
        if path.is_file():
            stream = StreamingClassifier(path, threads=1)
            newest = random_input(stream.input, rng)
            out["hop_ms"] = 1000 * stream.hop_seconds
            out[f"stream_{fmt}_ms"] = median_ms(lambda stream=stream, newest=newest: stream.step(newest), runs)
            out[f"stream_{fmt}_speedup"] = out["window_float_ms"] / out[f"stream_{fmt}_ms"]
    return out


def whole_window_grid(export: Path, waveform: np.ndarray, events: list, seconds: float, sample_rate: int) -> list[dict]:
    """No streaming: model_float.tflite on each word event's own stretch of the stream -> per threshold, as
    score_detections counts: the word's best keyword at or above it is a detection (its own label, a keyword) or a
    false accept (any other)."""
    window = TFLiteClassifier(export / "model_float.tflite", threads=1)
    size = window.inputs["waveform"]["shape"][1]
    keywords = [k for k, label in enumerate(window.labels) if label not in REJECT_LABELS]
    best = []  # (label of the best keyword, its probability) per event
    for start, end, _ in events:
        clip, valid = fit_length(waveform[round(start * sample_rate):round(end * sample_rate)], size)
        p = window.predict({"waveform": clip, "num_samples": valid})
        k = keywords[int(np.argmax(p[keywords]))]
        best.append((window.labels[k], float(p[k])))
    grid, n = [], len(keyword_events(events))
    for th in THRESHOLDS:
        fired = [(label, said) for (_, _, label), (said, score) in zip(events, best) if score >= th]
        detected = sum(label == said for label, said in fired)
        grid.append({"threshold": th, "detected": detected, "keywords": n, "detection_rate": detected / max(n, 1),
                     "false_accepts": len(fired) - detected, "false_accepts_per_hour": (len(fired) - detected) / (seconds / 3600)})
    return grid


def measure(run_dir: Path, args) -> dict:
    """One run: latency, and the detection grid of each streaming format (and of the whole window) on its assembled stream."""
    run = RunDir(run_dir)
    cfg = run.config()
    lat = latency(run.export, args.runs)
    waveform, events, seconds = assemble_stream(cfg, args.seed, args.negative_minutes)
    keywords = len(keyword_events(events))
    result = {"run_dir": str(run_dir), "latency_ms_1_thread": lat, "stream_seconds": round(seconds, 1),
              "keywords": keywords, "other_words": len(events) - keywords, "formats": {}}

    def entry(grid: list[dict], **extra) -> dict:
        ok = [g for g in grid if g["false_accepts_per_hour"] <= args.max_fa_per_hour]
        return {**extra, "grid": grid, "operating_point": ok[0] if ok else None}

    gate = None  # PauseGate per hop of the stream: the same for every file (one hop size per export)
    for fmt, refresh in (("float", False), ("float", True), ("int8", True)):
        path = run.export / f"model_stream_{fmt}.tflite"
        if not path.is_file():
            continue
        classifier = StreamingClassifier(path, threads=1, refresh=refresh)
        start = time.perf_counter()
        probabilities = classifier.run(waveform)
        elapsed = time.perf_counter() - start
        if gate is None:
            gate = pauses(waveform, classifier.hop_samples, classifier.hop_seconds)
        # float with refresh without and with the gate; int8 as `actrec stream` runs it; float never reset, the old way
        for pause in {"float": [None, gate] if refresh else [None], "int8": [gate]}[fmt]:
            grid = [{"threshold": th, **score_detections(detect(probabilities, classifier.labels, classifier.hop_seconds, th,
                                                                classifier.warmup_seconds, pause), events, seconds)}
                    for th in THRESHOLDS]
            name = f"{fmt}, {'refresh' if refresh else 'states never reset'}{', pause gate' if pause is not None else ''}"
            result["formats"][name] = entry(grid, real_time_factor=round(elapsed / seconds, 5))
    result["formats"][WHOLE_WINDOW] = entry(whole_window_grid(run.export, waveform, events, seconds, cfg.preprocess.sample_rate))
    return result


def spread(values: list[float], fmt: str) -> str:
    """One value, or the mean ± standard deviation of several."""
    return format(values[0], fmt) if len(values) == 1 else f"{format(np.mean(values), fmt)} ± {format(np.std(values), fmt)}"


def report(runs: list[dict], args) -> str:
    """The markdown tables: latency, and per threshold each format's detection rate / false accepts per hour."""
    first = runs[0]
    lat = {key: [r["latency_ms_1_thread"][key] for r in runs] for key in first["latency_ms_1_thread"]}
    which = first["run_dir"] if len(runs) == 1 else f"{len(runs)} runs ({', '.join(r['run_dir'] for r in runs)}; mean ± std over them)"
    lines = [f"Streaming on {which}: {spread([r['keywords'] for r in runs], '.0f')} test keywords and "
             f"{spread([r['other_words'] for r in runs], '.0f')} other words in a {spread([r['stream_seconds'] / 60 for r in runs], '.1f')}-min "
             f"stream ({args.negative_minutes:g} min of other words and background after the keywords).", "",
             "| | ms per call (1 thread) | x cheaper than re-running the window |", "|---|---:|---:|",
             f"| model_float.tflite on the 1-s window (every hop without streaming) | {spread(lat['window_float_ms'], '.2f')} | 1 |"]
    for fmt in ("float", "int8"):
        if f"stream_{fmt}_ms" in lat:
            lines.append(f"| model_stream_{fmt}.tflite, one {lat['hop_ms'][0]:.0f} ms hop | {spread(lat[f'stream_{fmt}_ms'], '.3f')} | "
                         f"{spread(lat[f'stream_{fmt}_speedup'], '.1f')} |")
    names = list(first["formats"])
    lines += ["", "Detection rate / false accepts per hour at each threshold:", "",
              "| threshold | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
    for i, th in enumerate(THRESHOLDS):
        cells = [[r["formats"][n]["grid"][i] for r in runs] for n in names]
        lines.append(f"| {th:.2f} | " + " | ".join(f"{spread([g['detection_rate'] for g in c], '.2f')} / "
                                                    f"{spread([g['false_accepts_per_hour'] for g in c], '.0f')}" for c in cells) + " |")
    lines.append("")
    for n in names:
        points = [r["formats"][n]["operating_point"] for r in runs]
        said = [f"threshold {op['threshold']:.2f}, detection rate {op['detection_rate']:.3f}" if op else "none" for op in points]
        lines.append(f"- {n}: at most {args.max_fa_per_hour:g} false accepts per hour: " + "; ".join(said))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", required=True, type=Path, nargs="+", help="one exported streamable run, or several (e.g. seeds)")
    parser.add_argument("--runs", type=int, default=200, help="timed calls per latency figure")
    parser.add_argument("--negative-minutes", type=float, default=30.0, help="minutes of other words and background after the keywords")
    parser.add_argument("--max-fa-per-hour", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "stream")
    args = parser.parse_args()

    runs = [measure(run_dir, args) for run_dir in args.run_dir]
    table = report(runs, args)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(runs[0] if len(runs) == 1 else {"runs": runs}, indent=1))
    args.out.with_suffix(".md").write_text(table + "\n")


if __name__ == "__main__":
    main()
