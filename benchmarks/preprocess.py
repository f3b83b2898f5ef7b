"""Preprocessing speed of `actrec preprocess` on the embedded action clips, against a floor defined for this machine.

Regenerate benchmarks/results/preprocess.json and preprocess.md (13 CPU-minutes: about 7 minutes on 2 idle cores,
15 when other jobs use half of them):

    nice -n 10 .venv/bin/python benchmarks/preprocess.py

Smoke check (8 clips, 1 repetition, about 2 minutes): add `--quick --out /tmp/preprocess.json`.

Each repetition (4 by default) runs, back to back, in fresh processes started by this script:

    floor parts         the two parts of the per-clip work no implementation avoids, done clip by clip with the
                        run's own code as a preprocess worker does them: decode + sample T frames
                        (`pipeline.runtime.decode.decode_clip`), then encode them with the 1-thread TFLite encoder
                        (`pipeline.runtime.encode.ClipEncoder`, XNNPACK). CPU seconds (getrusage RUSAGE_SELF: all
                        threads) and wall seconds around each call, over the N clips.
    actrec preprocess   the real command a user types (`actrec preprocess --run-dir NEW --set ...`, default
                        workers), on N clips, then on 4N clips (the same clips again under new names). Wall seconds,
                        CPU seconds of the whole process tree (the command, its pool workers and anything else they
                        start: getrusage(RUSAGE_CHILDREN) around the run, this script being the child subreaper so
                        orphaned descendants are counted too) and the peak RSS of the tree's largest process.

    per clip            (4N-clip run - N-clip run) / 3N of one repetition: the cost of one more clip, free of
                        start-up (importing TensorFlow and loading the encoder in the command and in each worker).
    floor               (decode CPU + encode CPU) per clip / cores available (os.sched_getaffinity): the least wall
                        time per clip this machine can take if every core does nothing else.
    keras-io loop       (first repetition only) the well-known Keras CNN-RNN example's way, for comparison: decode
                        every frame of the clip, then `predict` one sampled frame at a time with the Keras encoder.

Figures are the median (min-max) over repetitions; ratios to the floor are taken per repetition, then the median.
Wall times depend on what else runs on the machine; CPU seconds per clip much less, but still some: on a virtual
machine whose cores are shared (SMT siblings, a busy host) a CPU-second does less work when other jobs run. So the
JSON records the load average before/after, the share of the cores other processes used during each measurement
and the CPU time of a fixed pure-Python loop (compare it between runs), and each ratio compares the command with
floor parts measured a few minutes apart, under about the same load. The TFLite encoder conversion is cached
(~/.cache/actrec) by the first floor-parts process, as it is for users after their first run.
"""

from __future__ import annotations

import argparse
import ctypes
import itertools
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ENCODER = "mobilenet_v3_small"
COMMAND = "nice -n 10 .venv/bin/python benchmarks/preprocess.py"


# ----------------------------------------------------------------------------- measuring


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def machine_busy_seconds() -> float:
    """CPU seconds all processes of the machine have run so far (/proc/stat: everything but idle and iowait)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return float("nan")
    busy = sum(fields[:8]) - fields[3] - fields[4]  # user nice system idle iowait irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


def become_subreaper() -> None:
    """Orphaned descendants (e.g. multiprocessing's resource tracker) get re-parented to this process, so reaping
    them adds their CPU time to RUSAGE_CHILDREN. Linux only; elsewhere they are simply not counted."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def run_tree(cmd: list[str], log: Path) -> dict:
    """Run cmd to completion; wall and whole-tree CPU seconds, peak RSS (MB) of its largest process, machine load."""
    load_before, busy_before = os.getloadavg(), machine_busy_seconds()
    cpu_before = cpu_seconds(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # reap orphans of the tree (this process is their subreaper)
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:  # one still running (it will not be for long)
                time.sleep(0.02)
        except ChildProcessError:  # none left: this script starts no other process
            break
    else:
        print(f"warning: a process started by {cmd[0]} still runs; its CPU time is not counted", file=sys.stderr)
    cpu = cpu_seconds(resource.RUSAGE_CHILDREN) - cpu_before
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{log.read_text()[-3000:]}")
    others = (machine_busy_seconds() - busy_before - cpu) / (wall * cores())
    return {"wall_s": wall, "cpu_s": cpu, "peak_rss_mb": usage.ru_maxrss / 1024, "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(), "other_processes_cpu_share": max(0.0, others)}


def reference_loop_ms(times: int = 30) -> float:
    """Median CPU ms of a fixed pure-Python loop: how fast this machine's cores ran at the time. On a virtual machine
    whose host is busy, CPU seconds per unit of work grow with load too; compare this figure between runs."""
    def loop():
        s = 0
        for i in range(200_000):
            s += i * i
        return s

    samples = []
    for _ in range(times):
        start = time.thread_time()
        loop()
        samples.append(1000 * (time.thread_time() - start))
    return statistics.median(samples)


def spread(values: list[float], scale: float = 1.0) -> dict:
    values = [v * scale for v in values]
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


# ----------------------------------------------------------------------------- the floor parts (child process)


def measure_parts(spec: dict) -> dict:
    """In a fresh process: per-clip CPU and wall seconds of decode + sample and of the 1-thread TFLite encode, done
    as an `actrec preprocess` worker does them, and of the keras-io loop. Runs in `--measure-parts SPEC` mode."""
    import cv2
    import numpy as np

    from pipeline.config import load_config
    from pipeline.media.video import resize_and_crop
    from pipeline.runtime.decode import decode_clip
    from pipeline.runtime.encode import ClipEncoder

    cfg = load_config(None, spec["overrides"])
    encoder = ClipEncoder(cfg, spec["encoder_dir"], encoder_threads=1)
    encoder.setup()
    paths, frames = spec["paths"], cfg.preprocess.num_frames

    def clock():
        return time.perf_counter(), cpu_seconds(resource.RUSAGE_SELF)

    def decode(path):  # what preprocess's decode_job does for a training clip
        return decode_clip(path, cfg, train=True, clip_id=Path(path).name)

    # Warm-up with one clip: the interpreter keeps the largest batch it saw and pads smaller ones to it.
    encoder.encode([decode(paths[0])])
    result = {"decode_wall": 0.0, "decode_cpu": 0.0, "encode_wall": 0.0, "encode_cpu": 0.0,
              "reference_loop_cpu_ms": reference_loop_ms()}
    for path in paths:  # one clip at a time, decode then encode, as in a worker
        w0, c0 = clock()
        decoded = decode(path)
        w1, c1 = clock()
        encoder.encode([decoded])
        w2, c2 = clock()
        result["decode_wall"] += (w1 - w0) / len(paths)
        result["decode_cpu"] += (c1 - c0) / len(paths)
        result["encode_wall"] += (w2 - w1) / len(paths)
        result["encode_cpu"] += (c2 - c1) / len(paths)

    keras_model = encoder.encoder.encoder  # the same weights, called through Keras

    def keras_io(path):  # the keras-io example: load every frame of the clip, then predict frame by frame
        cap = cv2.VideoCapture(str(path))
        video = []
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            video.append(resize_and_crop(frame, cfg.preprocess.image_size)[:, :, ::-1])
        cap.release()
        video = np.array(video)
        for j in np.linspace(0, len(video) - 1, frames).astype(int):
            keras_model.predict(video[None, j], verbose=0)

    keras_io_clips = paths[: spec["keras_io_clips"]]
    result["keras_io"], result["keras_io_clips"] = None, len(keras_io_clips)
    if keras_io_clips:
        keras_io(keras_io_clips[0])  # warm-up (tracing)
        w0, c0 = clock()
        for path in keras_io_clips:
            keras_io(path)
        w1, c1 = clock()
        result["keras_io"] = {"wall": (w1 - w0) / len(keras_io_clips), "cpu": (c1 - c0) / len(keras_io_clips)}
    return result


# ----------------------------------------------------------------------------- the benchmark


def link_dataset(data: Path, rels: list[str], target: Path, copies: int) -> None:
    """A UCF101-layout dataset of `copies` x the clips `rels` of `data` (hard links under new names: symlinks out of
    a dataset root are refused), all in the training split but one."""
    target.mkdir()
    (target / "classInd.txt").write_text((data / "classInd.txt").read_text())
    names = []
    for copy in range(copies):
        for rel in rels:
            cls, name = rel.split("/")
            (target / cls).mkdir(exist_ok=True)
            os.link(data / rel, target / cls / f"r{copy}_{name}")
            names.append(f"{cls}/r{copy}_{name}")
    (target / "trainlist01.txt").write_text("".join(f"{r}\n" for r in names[1:]))
    (target / "testlist01.txt").write_text(f"{names[0]}\n")  # a run needs a test clip


def overrides(root: Path | None, frames: int, size: int) -> list[str]:
    sets = [f"preprocess.num_frames={frames}", f"preprocess.image_size={size}", f"preprocess.encoder={ENCODER}",
            "data.val_fraction=0", "preprocess.modalities=[video]"]
    return ([f"data.root={root}"] if root else []) + sets


def actrec_cmd(root: Path, run_dir: Path, frames: int, size: int) -> list[str]:
    script = Path(sys.executable).with_name("actrec")  # the console script a user runs
    cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "pipeline.cli"]
    cmd += ["preprocess", "--run-dir", str(run_dir), "--no-progress"]
    for s in overrides(root, frames, size):
        cmd += ["--set", s]
    return cmd


def fmt(s: dict, digits: int = 0) -> str:
    """median (min-max) of a spread()"""
    if s["n"] == 1:
        return f"{s['median']:.{digits}f}"
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"


def table(r: dict) -> str:
    n, reps, k = r["settings"]["clips"], r["settings"]["repeats"], r["settings"]["cores"]
    big = 4 * n
    p, a, f = r["parts"], r["actrec"], r["floor"]
    lines = ["| measurement | runs | wall ms / clip | CPU ms / clip |", "|---|---|---:|---:|"]
    if "keras_io" in p:
        kio = p["keras_io"]
        lines.append(f"| keras-io example loop: decode the whole clip, Keras `predict` per frame | 1 x {kio['clips']} clips "
                     f"| {fmt(kio['wall_ms_per_clip'])} | {fmt(kio['cpu_ms_per_clip'])} |")
    dec, enc = p["decode"], p["encode_tflite_1_thread"]
    lines += [
        f"| decode + sample {r['settings']['frames']} frames (OpenCV) | {reps} x {n} clips "
        f"| {fmt(dec['wall_ms_per_clip'], 1)} | {fmt(dec['cpu_ms_per_clip'], 1)} |",
        f"| encode them, TFLite XNNPACK, 1 thread | {reps} x {n} clips "
        f"| {fmt(enc['wall_ms_per_clip'], 1)} | {fmt(enc['cpu_ms_per_clip'], 1)} |",
        f"| **floor**: (decode + encode CPU) / {k} cores | {reps} | **{fmt(f['wall_ms_per_clip'], 1)}** | {fmt(f['cpu_ms_per_clip'], 1)} |",
        f"| **`actrec preprocess`, per clip** (({big}-clip run - {n}-clip run) / {big - n}) | {reps} pairs "
        f"| **{fmt(a['per_clip']['wall_ms'], 1)}** | **{fmt(a['per_clip']['cpu_ms'], 1)}** |",
        f"| `actrec preprocess`, whole run of {n} clips / {n} (start-up included) | {reps} "
        f"| {fmt(a['whole_run_small']['wall_ms_per_clip'])} | {fmt(a['whole_run_small']['cpu_ms_per_clip'])} |",
        f"| `actrec preprocess`, whole run of {big} clips / {big} (start-up included) | {reps} "
        f"| {fmt(a['whole_run_large']['wall_ms_per_clip'])} | {fmt(a['whole_run_large']['cpu_ms_per_clip'])} |",
    ]
    return "\n".join(lines)


def summary(r: dict) -> str:
    a, ratio, m, n = r["actrec"], r["ratios"], r["machine"], r["settings"]["clips"]
    share = m["other_processes_cpu_share"]
    lines = [
        f"actrec per clip / floor: {fmt(ratio['per_clip_wall_over_floor'], 2)} wall, {fmt(ratio['per_clip_cpu_over_floor_cpu'], 2)} CPU "
        f"(per repetition, median (min-max))",
        f"start-up per run: {fmt(a['startup']['wall_s'], 1)} s wall, {fmt(a['startup']['cpu_s'], 1)} CPU-s; "
        f"peak RSS of the largest process: {fmt(a['peak_rss_mb']['small'])} MB ({n} clips), {fmt(a['peak_rss_mb']['large'])} MB ({4 * n} clips)",
    ]
    if "keras_io_wall_over_per_clip" in ratio:
        lines.append(f"keras-io loop / actrec per clip: {ratio['keras_io_wall_over_per_clip']:.0f}x wall, "
                     f"{ratio['keras_io_cpu_over_per_clip']:.0f}x CPU (first repetition)")
    lines.append(f"machine: {m['cores_available']} cores; load average {m['loadavg_before'][0]:.1f} before, {m['loadavg_after'][0]:.1f} after; "
                 f"other processes used {100 * share['median']:.0f}% ({100 * share['min']:.0f}-{100 * share['max']:.0f}%) of the cores "
                 f"during the measurements; reference loop {fmt(m['reference_loop_cpu_ms'], 1)} CPU ms; "
                 f"{m['benchmark_minutes']:.1f} min ({m['benchmark_cpu_minutes']:.1f} CPU-min) in all")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=None, help="N: clips of the small run (default 64; --quick 8)")
    parser.add_argument("--repeats", type=int, default=None, help="repetitions of (floor parts, N-clip run, 4N-clip run) (default 4; --quick 1)")
    parser.add_argument("--keras-io-clips", type=int, default=None, help="clips of the keras-io loop (default 8; --quick 1; 0 skips it)")
    parser.add_argument("--frames", type=int, default=20, help="frames sampled per clip (default 20)")
    parser.add_argument("--size", type=int, default=224, help="encoder input size (default 224)")
    parser.add_argument("--quick", action="store_true", help="smoke check: 8 clips, 1 repetition")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/preprocess.json"),
                        help="JSON to write (a .md table is written beside it)")
    parser.add_argument("--measure-parts", metavar="SPEC", help=argparse.SUPPRESS)  # internal: child process mode
    args = parser.parse_args()
    if args.measure_parts:
        print(json.dumps(measure_parts(json.loads(Path(args.measure_parts).read_text()))))
        return
    clips = args.clips or (8 if args.quick else 64)
    repeats = args.repeats or (1 if args.quick else 4)
    keras_io_clips = args.keras_io_clips if args.keras_io_clips is not None else (1 if args.quick else 8)
    become_subreaper()
    load_start, t_start = os.getloadavg(), time.perf_counter()

    def elapsed() -> str:
        return f"[{(time.perf_counter() - t_start) / 60:4.1f} min]"

    work = Path(tempfile.mkdtemp(prefix="actrec-bench-"))
    try:
        data = work / "actions"
        print(f"making {clips} clips ...", flush=True)
        make = f"from data_prep.actions import make_actions; make_actions({str(data)!r}, {max(2, -(-clips // 9))}, seed=0, progress=False)"
        subprocess.run([sys.executable, "-c", make], cwd=ROOT, check=True)  # in a child: it leaves no process here
        by_class = [sorted(c.glob("*.mp4")) for c in sorted(data.iterdir()) if c.is_dir()]
        rels = [p.relative_to(data).as_posix() for group in itertools.zip_longest(*by_class) for p in group if p][:clips]
        if len(rels) < clips:
            sys.exit(f"only {len(rels)} clips were made")
        link_dataset(data, rels, work / "small", 1)
        link_dataset(data, rels, work / "large", 4)
        (work / "encoder").mkdir()
        print(f"{clips} and {4 * clips} clips, {args.frames} frames at {args.size}x{args.size}, {ENCODER} (random weights), "
              f"{cores()} cores, {repeats} repetitions", flush=True)

        parts, parts_runs, runs = [], [], {"small": [], "large": []}
        for rep in range(repeats):  # all measurements of one repetition close together: they see the same machine load
            print(f"{elapsed()} repetition {rep + 1}/{repeats}: floor parts ...", flush=True)
            spec = {"overrides": overrides(None, args.frames, args.size), "encoder_dir": str(work / "encoder"),
                    "paths": [str(work / "small" / r.replace("/", "/r0_")) for r in rels],
                    "keras_io_clips": keras_io_clips if rep == 0 else 0}
            (work / "spec.json").write_text(json.dumps(spec))
            # The first one also converts and caches the TFLite encoder (untimed) if this machine never did.
            parts_runs.append(run_tree([sys.executable, __file__, "--measure-parts", str(work / "spec.json")], work / "parts.log"))
            parts.append(json.loads((work / "parts.log").read_text().strip().splitlines()[-1]))
            for size, copies in (("small", 1), ("large", 4)):
                print(f"{elapsed()} repetition {rep + 1}/{repeats}: actrec preprocess, {copies * clips} clips ...", flush=True)
                run = run_tree(actrec_cmd(work / size, work / f"run_{size}{rep}", args.frames, args.size), work / f"{size}{rep}.log")
                runs[size].append(run)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    k, ms = cores(), 1000.0
    pairs = list(zip(runs["small"], runs["large"]))
    per_clip_wall = [(b["wall_s"] - s["wall_s"]) / (3 * clips) for s, b in pairs]
    per_clip_cpu = [(b["cpu_s"] - s["cpu_s"]) / (3 * clips) for s, b in pairs]
    floor_cpu = [p["decode_cpu"] + p["encode_cpu"] for p in parts]
    all_runs = runs["small"] + runs["large"] + parts_runs
    results = {
        "command": COMMAND + (" --quick" if args.quick else ""),
        "settings": {"clips": clips, "large_run_clips": 4 * clips, "repeats": repeats, "frames": args.frames,
                     "size": args.size, "encoder": ENCODER, "weights": None, "workers": 2, "cores": k,
                     "data": "embedded action clips (actrec data actions, seed 0): 320x240 MP4, 1.5-4 s, 15-30 fps"},
        "machine": {"cores_available": k, "cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version(), "loadavg_before": load_start, "loadavg_after": os.getloadavg(),
                    "other_processes_cpu_share": spread([r["other_processes_cpu_share"] for r in all_runs]),
                    "reference_loop_cpu_ms": spread([p["reference_loop_cpu_ms"] for p in parts]),
                    "benchmark_minutes": (time.perf_counter() - t_start) / 60,
                    "benchmark_cpu_minutes": (cpu_seconds(resource.RUSAGE_SELF) + cpu_seconds(resource.RUSAGE_CHILDREN)) / 60},
        "parts": {
            "decode": {"wall_ms_per_clip": spread([p["decode_wall"] for p in parts], ms),
                       "cpu_ms_per_clip": spread([p["decode_cpu"] for p in parts], ms)},
            "encode_tflite_1_thread": {"wall_ms_per_clip": spread([p["encode_wall"] for p in parts], ms),
                                       "cpu_ms_per_clip": spread([p["encode_cpu"] for p in parts], ms)},
        },
        "floor": {"definition": "(decode CPU + 1-thread TFLite encode CPU) per clip / cores available",
                  "cpu_ms_per_clip": spread(floor_cpu, ms), "wall_ms_per_clip": spread(floor_cpu, ms / k)},
        "actrec": {
            "per_clip": {"definition": "(4N-clip run - N-clip run) / 3N, per pair of runs",
                         "wall_ms": spread(per_clip_wall, ms), "cpu_ms": spread(per_clip_cpu, ms)},
            "whole_run_small": {"wall_ms_per_clip": spread([r["wall_s"] / clips for r in runs["small"]], ms),
                                "cpu_ms_per_clip": spread([r["cpu_s"] / clips for r in runs["small"]], ms)},
            "whole_run_large": {"wall_ms_per_clip": spread([r["wall_s"] / (4 * clips) for r in runs["large"]], ms),
                                "cpu_ms_per_clip": spread([r["cpu_s"] / (4 * clips) for r in runs["large"]], ms)},
            "startup": {"wall_s": spread([s["wall_s"] - (b["wall_s"] - s["wall_s"]) / 3 for s, b in pairs]),
                        "cpu_s": spread([s["cpu_s"] - (b["cpu_s"] - s["cpu_s"]) / 3 for s, b in pairs])},
            "peak_rss_mb": {"small": spread([r["peak_rss_mb"] for r in runs["small"]]),
                            "large": spread([r["peak_rss_mb"] for r in runs["large"]])},
            "runs": runs,  # per run: wall_s, cpu_s (whole tree), peak_rss_mb, loadavg_before/after, other_processes_cpu_share
        },
        "parts_per_repetition": parts,
        "parts_processes": parts_runs,
    }
    # Ratios per repetition (the floor parts and the runs they are compared with ran back to back), then the median.
    ratios = {"per_clip_wall_over_floor": spread([w / (f / k) for w, f in zip(per_clip_wall, floor_cpu)]),
              "per_clip_cpu_over_floor_cpu": spread([c / f for c, f in zip(per_clip_cpu, floor_cpu)])}
    keras_io = [p["keras_io"] for p in parts if p["keras_io"]]
    if keras_io:
        kio = results["parts"]["keras_io"] = {"clips": parts[0]["keras_io_clips"],
                                              "wall_ms_per_clip": spread([r["wall"] for r in keras_io], ms),
                                              "cpu_ms_per_clip": spread([r["cpu"] for r in keras_io], ms)}
        ratios["keras_io_wall_over_per_clip"] = kio["wall_ms_per_clip"]["median"] / (ms * per_clip_wall[0])
        ratios["keras_io_cpu_over_per_clip"] = kio["cpu_ms_per_clip"]["median"] / (ms * per_clip_cpu[0])
    results["ratios"] = ratios

    text = table(results) + "\n\n" + summary(results)
    print("\n" + text)
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(results, indent=2) + "\n")
    out_path.with_suffix(".md").write_text(f"Regenerate: `{results['command']}`\n\n{text}\n")
    print(f"wrote {out_path} and {out_path.with_suffix('.md')}")


if __name__ == "__main__":
    main()
