"""Streaming keyword spotting: the cost of a hop, and detections on a long stream of unseen speakers.

    RUN (a streamable run, exported: model_stream_float/int8.tflite, model_float.tflite)
      latency: one `step` call (20 ms hop) of each streaming file vs model_float.tflite re-run on the 1-s window,
               as an app without streaming does every hop (LiteRT, 1 thread, median of --runs calls)
      stream:  the run's test split (speakers never trained on) assembled into one long recording: every test
               keyword and other word once, in random order, each after a gap of 0.5-2 s of test background
               (the _silence_ windows, at random gains), then --negative-minutes more of other words and
               background alone
        --StreamingClassifier (states never reset, and with refresh: restarted every window), per hop--> probabilities
        --KeywordDetector (smoothing, refractory) at each threshold of a grid-->
           detection rate: test keywords detected with their label from their start to 0.5 s after their end
           false accepts per hour: every other detection, per hour of stream

Prints markdown tables and writes benchmarks/results/stream.json and .md (the operating point: the lowest
threshold with at most --max-fa-per-hour false accepts per hour, and the detection rate there).

Usage: python benchmarks/stream.py --run-dir RUN [--runs 200] [--negative-minutes 30] [--seed 0]
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

from pipeline.rundir import RunDir  # noqa: E402
from pipeline.runtime.stream import StreamingClassifier  # noqa: E402
from pipeline.runtime.tflite import TFLiteClassifier  # noqa: E402
from pipeline.stream_eval import assemble_stream, detect, score_detections  # noqa: E402

THRESHOLDS = [round(t, 2) for t in np.arange(0.3, 1.0, 0.05)] + [0.97, 0.99]


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--runs", type=int, default=200, help="timed calls per latency figure")
    parser.add_argument("--negative-minutes", type=float, default=30.0, help="minutes of other words and background after the keywords")
    parser.add_argument("--max-fa-per-hour", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "stream")
    args = parser.parse_args()

    run = RunDir(args.run_dir)
    cfg = run.config()
    lat = latency(run.export, args.runs)
    waveform, events, seconds = assemble_stream(cfg, args.seed, args.negative_minutes)
    results = {"run_dir": str(args.run_dir), "latency_ms_1_thread": lat, "stream_seconds": round(seconds, 1), "keywords": len(events), "formats": {}}
    for fmt, refresh in (("float", False), ("float", True), ("int8", True)):
        path = run.export / f"model_stream_{fmt}.tflite"
        if not path.is_file():
            continue
        classifier = StreamingClassifier(path, threads=1, refresh=refresh)
        start = time.perf_counter()
        probabilities = classifier.run(waveform)
        elapsed = time.perf_counter() - start
        grid = [{"threshold": th, **score_detections(detect(probabilities, classifier.labels, classifier.hop_seconds, th, classifier.warmup_seconds), events, seconds)}
                for th in THRESHOLDS]
        ok = [g for g in grid if g["false_accepts_per_hour"] <= args.max_fa_per_hour]
        results["formats"][f"{fmt}, {'refresh' if refresh else 'states never reset'}"] = {
            "real_time_factor": round(elapsed / seconds, 5), "grid": grid, "operating_point": ok[0] if ok else None}

    lines = [f"Streaming on {args.run_dir}: {len(events)} test keywords in a {seconds / 60:.1f}-min stream "
             f"({args.negative_minutes:g} min of other words and background after them).", "",
             "| | ms per call (1 thread) | x cheaper than re-running the window |", "|---|---:|---:|",
             f"| model_float.tflite on the 1-s window (every hop without streaming) | {lat['window_float_ms']:.2f} | 1 |"]
    for fmt in ("float", "int8"):
        if f"stream_{fmt}_ms" in lat:
            lines.append(f"| model_stream_{fmt}.tflite, one {lat['hop_ms']:.0f} ms hop | {lat[f'stream_{fmt}_ms']:.3f} | {lat[f'stream_{fmt}_speedup']:.1f} |")
    names = list(results["formats"])
    lines += ["", "Detection rate / false accepts per hour at each threshold:", "",
              "| threshold | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
    for i, th in enumerate(THRESHOLDS):
        cells = [results["formats"][n]["grid"][i] for n in names]
        lines.append(f"| {th:.2f} | " + " | ".join(f"{g['detection_rate']:.2f} / {g['false_accepts_per_hour']:.0f}" for g in cells) + " |")
    for n in names:
        op = results["formats"][n]["operating_point"]
        lines.append(f"\n{n}: " + (f"at most {args.max_fa_per_hour:g} false accepts per hour from threshold {op['threshold']:.2f}, "
                                   f"detection rate {op['detection_rate']:.3f}" if op else f"more than {args.max_fa_per_hour:g} false accepts per hour at every threshold"))
    table = "\n".join(lines)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    args.out.with_suffix(".md").write_text(table + "\n")


if __name__ == "__main__":
    main()
