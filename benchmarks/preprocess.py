"""Preprocessing speed on the embedded action clips, all variants measured in one run.

    (a) keras-io loop   the well-known CNN-RNN example: decode the whole clip, `predict` one frame at a time
    (b) decode floor    OpenCV decode + sampling of T frames only
    (c) encode floors   encoding pre-decoded frames, Keras (batched) and TFLite (XNNPACK, one thread per CPU);
                        also TFLite with 1 thread, what each of `actrec preprocess`'s workers runs (not a floor)
    (d) actrec          `actrec preprocess` end to end (worker pool + batched TFLite encoder + shards)
    + peak RSS of `actrec preprocess` on 1x and 4x the clips (memory must not grow with the dataset); the
      same two runs give (d)'s steady-state cost per clip, free of process start-up
The converted TFLite encoder is cached (~/.cache/actrec), as it is for users after their first run.

Usage: python benchmarks/preprocess.py [--clips 64] [--frames 20] [--size 224]
Prints a table and writes benchmarks/results/preprocess.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from data_prep.actions import make_actions  # noqa: E402
from pipeline.features.encoders import FrameEncoder, build_encoder  # noqa: E402
from pipeline.media.video import read_clip, resize_and_crop  # noqa: E402

ENCODER = "mobilenet_v3_small"


def keras_io_loop(paths, encoder, frames: int, size: int) -> float:
    """The keras-io example's way: load every frame of the clip, then predict frame by frame."""
    start = time.perf_counter()
    for path in paths:
        cap = cv2.VideoCapture(str(path))
        video = []
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            video.append(resize_and_crop(frame, size)[:, :, ::-1])
        cap.release()
        video = np.array(video)
        idx = np.linspace(0, len(video) - 1, frames).astype(int)  # the example keeps the first MAX frames
        for j in idx:
            encoder.predict(video[None, j], verbose=0)
    return time.perf_counter() - start


def peak_rss_mb(cmd: list[str]) -> tuple[float, float]:
    """(peak RSS in MB of the command's largest process, wall seconds), measured in a fresh wrapper process."""
    probe = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, "
             "stderr=subprocess.DEVNULL); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", probe, *cmd], check=True, capture_output=True, text=True, cwd=ROOT)
    return int(out.stdout.strip()) / 1024, time.perf_counter() - start


def actrec_preprocess_cmd(root: Path, run_dir: Path, frames: int, size: int) -> list[str]:
    sets = [f"data.root={root}", f"preprocess.num_frames={frames}", f"preprocess.image_size={size}",
            f"preprocess.encoder={ENCODER}", "data.val_fraction=0", "preprocess.modalities=[video]"]
    cmd = [sys.executable, "-m", "pipeline.cli", "preprocess", "--run-dir", str(run_dir), "--no-progress"]
    for s in sets:
        cmd += ["--set", s]
    return cmd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=64, help="clips to time (default 64)")
    parser.add_argument("--frames", type=int, default=20, help="frames sampled per clip (default 20)")
    parser.add_argument("--size", type=int, default=224, help="encoder input size (default 224)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/preprocess.json"))
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="actrec-bench-"))
    per_class = -(-args.clips // 9) + 1
    data = work / "actions"
    make_actions(data, clips_per_class=per_class, seed=0, progress=False)
    paths = sorted(data.glob("*/*.mp4"))[: args.clips]
    subset = work / "subset"  # exactly `clips` clips in the UCF101 layout
    (subset).mkdir()
    for name in ("classInd.txt",):
        (subset / name).write_text((data / name).read_text())
    rels = [p.relative_to(data).as_posix() for p in paths]
    for rel in rels:
        (subset / rel).parent.mkdir(exist_ok=True)
        os.link(data / rel, subset / rel)  # hard links: symlinks out of a dataset root are refused
    (subset / "trainlist01.txt").write_text("".join(f"{r}\n" for r in rels))
    (subset / "testlist01.txt").write_text("")
    n = len(paths)
    print(f"{n} clips, {args.frames} frames at {args.size}x{args.size}, encoder {ENCODER} (weights=None)")

    encoder = build_encoder(ENCODER, args.size)
    results = {"clips": n, "frames": args.frames, "size": args.size, "encoder": ENCODER, "cpu_count": os.cpu_count()}

    # (b) decode + sample
    start = time.perf_counter()
    decoded = [read_clip(p, args.frames, args.size).frames[0] for p in paths]
    results["b_decode_s_per_clip"] = (time.perf_counter() - start) / n

    # (c) encode floors
    all_frames = np.concatenate(decoded)
    for backend, threads, key in (("keras", None, "keras"), ("tflite", None, "tflite"), ("tflite", 1, "tflite_1_thread")):
        fe = FrameEncoder(encoder, backend, batch_size=64, threads=threads)
        fe.encode(all_frames[:64])  # warm-up (tracing / allocation)
        start = time.perf_counter()
        fe.encode(all_frames)
        results[f"c_encode_{key}_s_per_clip"] = (time.perf_counter() - start) / n

    # (d) actrec preprocess, end to end (fresh process: includes start-up and TFLite conversion)
    run_dir = work / "run_d"
    start = time.perf_counter()
    subprocess.run(actrec_preprocess_cmd(subset, run_dir, args.frames, args.size), check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results["d_actrec_s_per_clip"] = (time.perf_counter() - start) / n

    # (a) the keras-io loop (slowest: measured on a quarter of the clips and scaled per clip)
    a_paths = paths[: max(4, n // 4)]
    keras_io_loop(a_paths[:1], encoder, args.frames, args.size)  # warm-up
    results["a_keras_io_s_per_clip"] = keras_io_loop(a_paths, encoder, args.frames, args.size) / len(a_paths)
    results["a_clips_timed"] = len(a_paths)

    # memory: 1x vs 4x the clips (the 4x set repeats the clips under new names)
    big = work / "subset4"
    big.mkdir()
    (big / "classInd.txt").write_text((data / "classInd.txt").read_text())
    big_rels = []
    for copy in range(4):
        for rel in rels:
            cls, name = rel.split("/")
            target = f"{cls}/r{copy}_{name}"
            (big / cls).mkdir(exist_ok=True)
            os.link(data / rel, big / target)
            big_rels.append(target)
    (big / "trainlist01.txt").write_text("".join(f"{r}\n" for r in big_rels))
    (big / "testlist01.txt").write_text("")
    results["rss_mb_1x"], seconds_1x = peak_rss_mb(actrec_preprocess_cmd(subset, work / "rss1", args.frames, args.size))
    results["rss_mb_4x"], seconds_4x = peak_rss_mb(actrec_preprocess_cmd(big, work / "rss4", args.frames, args.size))
    # Steady state: the extra time for 3n more clips, free of start-up (imports, encoder build, worker spawn).
    results["d_actrec_steady_s_per_clip"] = (seconds_4x - seconds_1x) / (3 * n)
    results["d_actrec_startup_s"] = seconds_1x - n * results["d_actrec_steady_s_per_clip"]

    floor = max(results["b_decode_s_per_clip"], min(results["c_encode_keras_s_per_clip"], results["c_encode_tflite_s_per_clip"]))
    results["speedup_vs_keras_io"] = results["a_keras_io_s_per_clip"] / results["d_actrec_steady_s_per_clip"]
    results["speedup_vs_keras_io_end_to_end"] = results["a_keras_io_s_per_clip"] / results["d_actrec_s_per_clip"]
    results["d_over_floor"] = results["d_actrec_steady_s_per_clip"] / floor
    results["rss_growth_4x"] = results["rss_mb_4x"] / results["rss_mb_1x"] - 1
    results["goals"] = {
        "speedup_vs_keras_io >= 20": results["speedup_vs_keras_io"] >= 20,
        "d_over_floor <= 1.5": results["d_over_floor"] <= 1.5,
        "rss_growth_4x <= 0.20": results["rss_growth_4x"] <= 0.20,
    }

    rows = [
        ("(a) keras-io loop (decode all, predict per frame)", results["a_keras_io_s_per_clip"]),
        ("(b) decode + sample only", results["b_decode_s_per_clip"]),
        ("(c) encode only, Keras batched", results["c_encode_keras_s_per_clip"]),
        ("(c) encode only, TFLite XNNPACK", results["c_encode_tflite_s_per_clip"]),
        ("(c) encode only, TFLite XNNPACK, 1 thread (per worker; not a floor)", results["c_encode_tflite_1_thread_s_per_clip"]),
        ("(d) actrec preprocess, steady state (4x minus 1x clips)", results["d_actrec_steady_s_per_clip"]),
        (f"(d) actrec preprocess, one run of {n} clips incl. start-up", results["d_actrec_s_per_clip"]),
    ]
    print("\n| variant | ms per clip | clips/s |\n|---|---:|---:|")
    for name, s in rows:
        print(f"| {name} | {s * 1000:.0f} | {1 / s:.1f} |")
    print(f"\n(d) steady state is {results['speedup_vs_keras_io']:.1f}x faster than (a) "
          f"({results['speedup_vs_keras_io_end_to_end']:.1f}x including {results['d_actrec_startup_s']:.0f} s of start-up); "
          f"(d) / max(b, fastest c) = {results['d_over_floor']:.2f}")
    print(f"peak RSS: {results['rss_mb_1x']:.0f} MB for {n} clips, {results['rss_mb_4x']:.0f} MB for {4 * n} clips "
          f"({100 * results['rss_growth_4x']:+.0f}%)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
