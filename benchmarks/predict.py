"""Speed of evaluation and prediction on raw clips (CPU), with the shipped action config.

    (a) evaluate   `evaluate()` on 64 raw clips: clips/s (decode + frame CNN + MFCC + model, one clip at a time)
    (b) predict    per-clip latency of `predict` on the same clips: median and p90, split into
                   decode (frames + audio + MFCC) / features (frame CNN) / model (RNN)
    (c) timeline   `predict --window 2 --stride 1` on a 60-s 320x240 video: seconds of video per second
                   (decode + features + model time, start-up excluded),
                   and the most frames held in memory at once

The data is the embedded action set (data_prep.actions.make_actions); the run is the shipped
configs/actions_av.yaml trained for a few epochs (speed does not depend on accuracy).
Each is measured with the Keras model and with the exported float TFLite file (frame CNN, MFCC and
head in one graph, run by the TFLite interpreter as an app would).

Usage: python benchmarks/predict.py [--clips 64] [--epochs 3] [--work DIR]
Prints a markdown table and writes benchmarks/results/predict.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from pipeline.evaluate import evaluate  # noqa: E402
from pipeline.predict import Predictor, predict  # noqa: E402
from pipeline.preprocess import preprocess  # noqa: E402
from pipeline.train import train  # noqa: E402

from data_prep.actions import make_actions  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.datasets import index_dataset  # noqa: E402
from pipeline.media.probe import probe_media  # noqa: E402
from pipeline.stages.export import export  # noqa: E402
from tests.media_factory import write_video  # noqa: E402


def latency_stats(times_ms: list[float]) -> dict:
    return {"median_ms": round(float(np.median(times_ms)), 1), "p90_ms": round(float(np.percentile(times_ms, 90)), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=64, help="clips to evaluate and predict (default 64)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--work", default="/tmp/actrec-bench-predict", help="data and run dirs (reused when present)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/predict.json"))
    args = parser.parse_args()

    work = Path(args.work)
    data, run_dir = work / "data/actions", work / "run"
    load_before = os.getloadavg()
    print("data and a tiny run", flush=True)
    make_actions(data, clips_per_class=math.ceil(args.clips * 1.25 / 9), seed=0, progress=False)
    cfg = load_config(ROOT / "configs/actions_av.yaml", [f"data.root={data}", f"train.epochs={args.epochs}"])
    preprocess(cfg, run_dir, progress=False)
    train(cfg, run_dir, progress=False)

    tflite = run_dir / "export/model_float.tflite"
    if not tflite.is_file():
        export(run_dir, "float", progress=False)
    models = {"keras": "keras", "tflite float": str(tflite)}

    rows = index_dataset(data).rows[: args.clips]  # the first N clips of the dataset (any split), as one manifest
    manifest = work / "bench_manifest.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split", "group"])
        writer.writerows([r.path, r.label, "test", r.group] for r in rows)
    clips = [data / r.path for r in rows]
    durations = [probe_media(clip).duration for clip in clips]
    results = {"clips": len(clips), "clip_seconds_median": round(float(np.median(durations)), 2),
               "config": "configs/actions_av.yaml", "num_frames": cfg.preprocess.num_frames, "image_size": cfg.preprocess.image_size,
               "encoder": cfg.preprocess.encoder, "cpu_count": os.cpu_count(), "evaluate": {}, "predict": {}, "timeline": {}}
    long_video = work / "long_60s.mp4"
    if not long_video.is_file():
        write_video(long_video, num_frames=60 * 25, fps=25, width=320, height=240, audio_seconds=60.0, sample_rate=44100)

    for label, model in models.items():
        print(label, flush=True)
        # (a) evaluate
        start = time.perf_counter()
        name = "bench-" + label.replace(" ", "-")
        metrics = evaluate(run_dir, manifest=manifest, name=name, progress=False, model=model)
        wall = time.perf_counter() - start
        saved = json.loads((run_dir / "eval" / name / "metrics.json").read_text())
        results["evaluate"][label] = {"num_clips": metrics["num_clips"], "top1": metrics["top1"],
                                      "clips_per_second": saved["extra"]["clips_per_second"],
                                      "clips_per_second_with_startup": round(metrics["num_clips"] / wall, 2)}

        # (b) predict latency per clip, after start-up (model load, tracing, librosa's first call)
        predictor = Predictor(run_dir, model)
        predictor.classify(clips[0])
        predictor.reset_times()
        totals, parts = [], []
        for clip in clips:
            start = time.perf_counter()
            predictor.classify(clip)
            totals.append((time.perf_counter() - start) * 1e3)
            parts.append(predictor.reset_times())
        results["predict"][label] = {
            **latency_stats(totals),
            **{f"{step}_median_ms": round(float(np.median([p[step] for p in parts])), 1) for step in ("decode", "features", "model")},
            "startup_ms": round(predictor.startup_ms, 0),
        }

        # (c) a long video in sliding windows (one short clip first: start-up out of the timing)
        (_, timeline) = predict(run_dir, [clips[0], long_video], model=model, window=2.0, stride=1.0, out=work / "timelines")
        seconds = sum(timeline["ms"].values()) / 1e3
        results["timeline"][label] = {"video_seconds": 60.0, "window_s": 2.0, "stride_s": 1.0, "windows": timeline["windows"],
                                      "seconds": round(seconds, 2), "video_seconds_per_second": round(60.0 / seconds, 1),
                                      "max_frames_held": timeline["max_frames_held"], **{f"{k}_ms": v for k, v in timeline["ms"].items()}}
    results["load_average"] = {"before": [round(x, 1) for x in load_before], "after": [round(x, 1) for x in os.getloadavg()]}

    table = ["| measure | " + " | ".join(models) + " |", "|---|" + "---:|" * len(models)]

    def row(measure: str, cell) -> None:
        table.append(f"| {measure} | " + " | ".join(cell(label) for label in models) + " |")

    e, pr, t = results["evaluate"], results["predict"], results["timeline"]
    row(f"evaluate, {len(clips)} clips: clips/s (loop / incl. start-up)",
        lambda m: f"{e[m]['clips_per_second']:.1f} / {e[m]['clips_per_second_with_startup']:.1f}")
    row("evaluate top-1 (a 3-epoch run: speed, not accuracy)", lambda m: f"{e[m]['top1']:.3f}")
    row("predict latency per clip: median / p90 (ms)", lambda m: f"{pr[m]['median_ms']:.0f} / {pr[m]['p90_ms']:.0f}")
    row("predict split, median (ms): decode / features / model",
        lambda m: f"{pr[m]['decode_median_ms']:.0f} / {pr[m]['features_median_ms']:.0f} / {pr[m]['model_median_ms']:.0f}")
    row("predict start-up, once per process (ms)", lambda m: f"{pr[m]['startup_ms']:.0f}")
    row("timeline, 60-s 320x240 video, 2-s windows every 1 s: video s per s", lambda m: f"{t[m]['video_seconds_per_second']:.1f}")
    row("timeline: windows / most frames held at once", lambda m: f"{t[m]['windows']} / {t[m]['max_frames_held']}")
    text = "\n".join(table)
    print("\n" + text)
    print(f"\nclips: median {results['clip_seconds_median']} s, {cfg.preprocess.num_frames} frames at {cfg.preprocess.image_size} px, "
          f"encoder {cfg.preprocess.encoder}; load average {results['load_average']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
