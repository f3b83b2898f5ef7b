"""Preprocessing on one machine vs Apache Beam, and what Kinetics-400 would take on N workers.

    local  `actrec preprocess` (process pool; each worker decodes, samples, encodes, computes MFCCs)
    beam   `actrec preprocess --runner beam` on Beam's DirectRunner, 2 worker processes (multi_processing):
           the same per-clip function, plus Beam's plan / reshuffle / group-by-shard and its worker start-up
After a warm-up run (TFLite conversion of the encoder, cached as for users after their first run), each runner
preprocesses the same n clips and 3n clips (the n again under new names), each in a fresh process, twice.
Both wall time and CPU time (user + system of the whole process tree) are recorded; the difference between
3n and n clips is the steady-state cost per clip, free of start-up (imports, encoder build, worker processes).
Other jobs on a shared machine stretch wall times (the fastest of the two runs is kept) far more than CPU
times, so the overhead and the projection use CPU seconds (core-seconds).

Projection: Kinetics-400 has ~240k training clips of ~10 s. A clip's cost splits into decoding (OpenCV reads
every frame up to the last sampled one: cost ~ frames x pixels, measured here on the benchmark clips) and the
rest (encode 20 frames, MFCC of a 10-s window, serialise: the same per clip whatever its length). Scaled to a
10-s, 30 fps, 340x256 clip (Kinetics as usually distributed after resizing to short side 256), with Beam's
measured steady-state cost per clip, on N workers like this machine (2 cores each), assuming the work
parallelises per clip (it does: no shared state but the output bucket) and ignoring cluster start-up.

Usage: python benchmarks/scale.py [--clips 135] [--render]
Prints a table and writes benchmarks/results/scale.json and scale.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402

from data_prep.actions import make_actions  # noqa: E402
from pipeline.media.video import read_clip  # noqa: E402

SETTINGS = ["preprocess.encoder=mobilenet_v3_small", "preprocess.weights=null", "preprocess.image_size=224",
            "preprocess.num_frames=20", "preprocess.modalities=[video, audio]", "preprocess.audio_seconds=10.0",
            "preprocess.workers=2", "preprocess.shard_size=64", "data.val_fraction=0"]
KINETICS = {"train_clips": 240_000, "seconds": 10.0, "fps": 30, "width": 340, "height": 256}
WORKERS = (1, 8, 32, 128)


def subset(data: Path, rels: list[str], out: Path, copies: int) -> Path:
    """A UCF101-layout dataset of `copies` x the clips (hard links under new names), all in the train list."""
    out.mkdir()
    (out / "classInd.txt").write_text((data / "classInd.txt").read_text())
    listed = []
    for copy in range(copies):
        for rel in rels:
            cls, name = rel.split("/")
            (out / cls).mkdir(exist_ok=True)
            os.link(data / rel, out / cls / f"r{copy}_{name}")
            listed.append(f"{cls}/r{copy}_{name}")
    (out / "trainlist01.txt").write_text("".join(f"{r}\n" for r in listed))
    (out / "testlist01.txt").write_text("")
    return out


def run_preprocess(root: Path, run_dir: Path, runner: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the process tree) of one `actrec preprocess` in a fresh process."""
    cmd = [sys.executable, "-m", "pipeline.cli", "preprocess", "--run-dir", str(run_dir), "--no-progress", "--runner", runner]
    for s in SETTINGS + [f"data.root={root}"]:
        cmd += ["--set", s]
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # includes the pool / Beam worker processes (waited for)
    return time.perf_counter() - start, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def decoded_pixels(path: Path) -> float:
    """Frames x pixels OpenCV decodes for the clip (all frames: the last sampled frame is near the end)."""
    cap = cv2.VideoCapture(str(path))
    frames, width, height = (cap.get(p) for p in (cv2.CAP_PROP_FRAME_COUNT, cv2.CAP_PROP_FRAME_WIDTH, cv2.CAP_PROP_FRAME_HEIGHT))
    cap.release()
    return frames * width * height


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=135, help="clips per timed run (default 135 = 15 per class)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/scale.json"))
    parser.add_argument("--render", action="store_true", help="only rewrite scale.md from an existing scale.json")
    args = parser.parse_args()
    if args.render:
        Path(args.out).with_suffix(".md").write_text(render(json.loads(Path(args.out).read_text())))
        return

    work = Path(tempfile.mkdtemp(prefix="actrec-scale-"))
    data = work / "actions"
    make_actions(data, clips_per_class=-(-args.clips // 9), seed=0, progress=False)
    paths = sorted(data.glob("*/*.mp4"))[: args.clips]
    rels = [p.relative_to(data).as_posix() for p in paths]
    n = len(rels)
    one, three = subset(data, rels, work / "x1", 1), subset(data, rels, work / "x3", 3)
    cores = len(os.sched_getaffinity(0))
    print(f"{n} clips; {' '.join(SETTINGS)}; {cores} cores")

    results = {"clips": n, "settings": SETTINGS, "cores": cores, "runners": {}}
    # Warm-up: converts the encoder to TFLite once (cached, as for users after their first run) and reads the files.
    run_preprocess(subset(data, rels[:9], work / "warm", 1), work / "warm_run", "local")
    times = {(runner, size): [] for runner in ("local", "beam") for size in (1, 3)}
    for repeat in range(2):
        for runner in ("local", "beam"):
            for size, root in ((1, one), (3, three)):
                times[runner, size].append(run_preprocess(root, work / f"{runner}-{size}x-{repeat}", runner))
                print(f"{runner}: {size * n} clips in {times[runner, size][-1][0]:.1f} s wall, {times[runner, size][-1][1]:.1f} s CPU")
    for runner in ("local", "beam"):
        (w1, c1), (w3, c3) = ([min(t[i] for t in times[runner, size]) for i in (0, 1)] for size in (1, 3))
        steady_wall, steady_cpu = (w3 - w1) / (2 * n), (c3 - c1) / (2 * n)
        results["runners"][runner] = {
            "wall_s_1x": w1, "wall_s_3x": w3, "cpu_s_1x": c1, "cpu_s_3x": c3, "runs": {f"{size}x": times[runner, size] for size in (1, 3)},
            "clips_per_s_1x": n / w1, "clips_per_s_3x": 3 * n / w3, "steady_wall_s_per_clip": steady_wall,
            "steady_cpu_s_per_clip": steady_cpu, "startup_cpu_s": c1 - n * steady_cpu}
    local, beam = results["runners"]["local"], results["runners"]["beam"]
    results["beam_overhead_cpu_per_clip"] = beam["steady_cpu_s_per_clip"] / local["steady_cpu_s_per_clip"] - 1
    results["beam_extra_startup_cpu_s"] = beam["startup_cpu_s"] - local["startup_cpu_s"]

    # Decoding's share of a clip's cost, on one core, and how it grows to a Kinetics clip.
    start = time.process_time()  # CPU seconds of this process, all threads: core-seconds
    for path in paths:
        read_clip(path, 20, 224)
    decode_core_s = (time.process_time() - start) / n
    bench_pixels = sum(decoded_pixels(p) for p in paths) / n
    kinetics_pixels = KINETICS["seconds"] * KINETICS["fps"] * KINETICS["width"] * KINETICS["height"]
    clip_core_s = beam["steady_cpu_s_per_clip"]
    rest_core_s = max(0.0, clip_core_s - decode_core_s)
    kinetics_core_s = decode_core_s * kinetics_pixels / bench_pixels + rest_core_s
    results["projection"] = {
        "kinetics": KINETICS,
        "decode_core_s_per_bench_clip": decode_core_s,
        "bench_decoded_megapixels_per_clip": bench_pixels / 1e6,
        "kinetics_decoded_megapixels_per_clip": kinetics_pixels / 1e6,
        "beam_core_s_per_bench_clip": clip_core_s,
        "kinetics_core_s_per_clip": kinetics_core_s,
        "hours_by_workers": {w: KINETICS["train_clips"] * kinetics_core_s / (cores * w) / 3600 for w in WORKERS},
        "worker": f"{cores} cores (this machine)",
    }

    table = render(results)
    print("\n" + table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    out.with_suffix(".md").write_text(table)
    print(f"wrote {out} and {out.with_suffix('.md')}")


def render(results: dict) -> str:
    """The Markdown tables and notes of scale.md from the results dict (scale.json)."""
    n, cores = results["clips"], results["cores"]
    local, beam, p = results["runners"]["local"], results["runners"]["beam"], results["projection"]
    kinetics = p["kinetics"]
    kinetics_decode_s = p["decode_core_s_per_bench_clip"] * p["kinetics_decoded_megapixels_per_clip"] / p["bench_decoded_megapixels_per_clip"]
    rest_s = p["kinetics_core_s_per_clip"] - kinetics_decode_s
    lines = [
        f"Preprocessing {n} embedded action clips: MobileNetV3Small (random weights: the cost of ImageNet weights), "
        f"20 frames at 224x224, and the MFCC of a 10-s audio window; {cores} cores; each run a fresh process.",
        "",
        f"| runner | {n} clips: wall s (clips/s) | {3 * n} clips: wall s (clips/s) | CPU s, {n} / {3 * n} clips | "
        "steady CPU ms / clip | start-up CPU s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {name} | {r['wall_s_1x']:.1f} ({r['clips_per_s_1x']:.1f}) | {r['wall_s_3x']:.1f} ({r['clips_per_s_3x']:.1f}) | "
              f"{r['cpu_s_1x']:.0f} / {r['cpu_s_3x']:.0f} | {1000 * r['steady_cpu_s_per_clip']:.0f} | {r['startup_cpu_s']:.0f} |"
              for name, r in (("local (process pool, 2 workers)", local), ("beam (DirectRunner, 2 worker processes)", beam))]
    lines += [
        "",
        f"Beam overhead: {100 * results['beam_overhead_cpu_per_clip']:+.0f}% CPU per clip in steady state and "
        f"{results['beam_extra_startup_cpu_s']:+.0f} CPU s of start-up; in wall time {beam['wall_s_1x'] - local['wall_s_1x']:+.0f} s "
        f"for {n} clips and {beam['wall_s_3x'] - local['wall_s_3x']:+.0f} s for {3 * n} clips. "
        "Wall times are the fastest of two runs on a machine shared with other jobs.",
        "",
        f"Kinetics-400 projection ({kinetics['train_clips']:,} train clips of {kinetics['seconds']:.0f} s at "
        f"{kinetics['fps']} fps, {kinetics['width']}x{kinetics['height']}): decoding costs "
        f"{1000 * p['decode_core_s_per_bench_clip']:.0f} core-ms for a {p['bench_decoded_megapixels_per_clip']:.1f}-megapixel "
        f"benchmark clip, so {1000 * kinetics_decode_s:.0f} core-ms for a {p['kinetics_decoded_megapixels_per_clip']:.0f}-megapixel "
        f"Kinetics clip; with the rest of Beam's per-clip cost ({1000 * rest_s:.0f} core-ms) that is "
        f"{p['kinetics_core_s_per_clip']:.2f} core-s per clip, {kinetics['train_clips'] * p['kinetics_core_s_per_clip'] / 3600:.0f} core-hours in all.",
        "",
        f"| workers ({cores} cores each) | hours |",
        "|---:|---:|",
    ]
    lines += [f"| {w} | {h:.1f} |" for w, h in p["hours_by_workers"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
