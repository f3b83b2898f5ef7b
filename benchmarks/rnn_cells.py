"""LSTM vs GRU vs SimpleRNN, measured on this project's tasks and on a long-sequence toy.

1. Project tasks. Spoken commands (configs/commands.yaml) and action clips (configs/actions_av.yaml),
   each trained with only `model.cell` (and the seed) changed, one MFCC frame per audio step
   (`model.audio_stack=1`), through the `preprocess` and `train`
   functions the CLI calls: parameters, training seconds per epoch, Keras inference latency per
   sequence, test-split top-1 as mean ± std over seeds. A seed is the config's global `seed`: it
   draws the validation speakers/groups, the (random) frame-encoder weights, the initialisation and
   the shuffling; the test split is fixed by the split files. Each seed's features are cached once
   and shared by the three cells.
2. Long sequences (pipeline.models.rnn_probes.first_steps_task: the label is in the first 3 steps,
   the other T - 3 are noise), T = 100 and 200, a 2-layer stack of each cell with Keras' default
   initialisation, and LSTM/GRU with the bias of their keep gate at 3: the per-step fraction of the
   old state kept, ||dL/dh_t|| for every step and layer and per-layer weight-gradient norms at
   initialisation and after training, and the validation accuracy per epoch.
3. Exploding gradients: a SimpleRNN whose recurrent kernel is 3x orthogonal, trained with SGD (and
   Adam) with clipping off and clipnorm 1.0, over seeds: largest gradient and update norms, accuracy.

Usage: python benchmarks/rnn_cells.py [--quick] [--seeds 3] [--epochs 10] [--work DIR] [--skip-project]
Prints markdown tables and writes benchmarks/results/rnn_cells.json and rnn_cells.md (--quick writes
into the work dir instead, so a smoke run never replaces the committed results).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from data_prep.actions import make_actions  # noqa: E402
from data_prep.commands import make_commands  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.models import load_model, rnn_probes  # noqa: E402
from pipeline.rundir import RunDir  # noqa: E402
from pipeline.runtime.keras_model import input_names  # noqa: E402
from pipeline.stages.preprocess import preprocess  # noqa: E402
from pipeline.stages.train import evaluate_split, make_dataset, train  # noqa: E402

CELLS = ("lstm", "gru", "simple_rnn")
TASKS = {"commands": "commands.yaml", "actions": "actions_av.yaml"}

FULL = {"tasks": list(TASKS), "seeds": 3, "epochs": 10, "lr_scale": 3.0, "clips_per_class": 12, "per_word": 30,
        "long_steps": [100, 200], "long_sequences": 512, "long_epochs": 5, "exploding_steps": 100}
QUICK = {"tasks": ["commands"], "seeds": 1, "epochs": 2, "lr_scale": 3.0, "clips_per_class": 4, "per_word": 6,
         "long_steps": [50, 100], "long_sequences": 128, "long_epochs": 1, "exploding_steps": 30}


# ----------------------------------------------------------------------------- 1. project tasks


def inference_ms(run_dir: Path, runs: int = 30) -> float:
    """Median Keras latency of one sequence (batch 1, `predict_on_batch`, as `actrec predict` calls it)."""
    model = load_model(run_dir / "model.keras")
    batch = make_dataset(run_dir, RunDir(run_dir).read_index(), "test", RunDir(run_dir).config(), input_names(model), batch_size=1)
    inputs = next(iter(batch))[0]
    for _ in range(3):  # tracing and first-call allocations are not latency
        model.predict_on_batch(inputs)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        model.predict_on_batch(inputs)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def epoch_seconds(run_dir: Path) -> list[float]:
    """Wall time of each epoch, read from the TensorBoard events `train` writes at every epoch end.

    The first event of the file is written when training starts, so epoch 1 includes graph tracing
    and the later epochs are the steady state (each includes its validation pass).
    """
    import tensorflow as tf
    from tensorflow.core.util import event_pb2

    events = sorted((run_dir / "tensorboard" / "train").glob("events.out.tfevents.*"))[0]  # trained afresh: one file
    times = []
    for record in tf.data.TFRecordDataset(str(events)):
        event = event_pb2.Event.FromString(record.numpy())
        if not times or any(v.tag == "epoch_loss" for v in event.summary.value):
            times.append(event.wall_time)
    return list(np.diff(times))


def project_task(task: str, data_root: Path, work: Path, seeds: int, epochs: int, lr_scale: float) -> list[dict]:
    """Train every cell on one task for each seed; one row per (cell, seed).

    Ten epochs on a few hundred clips are few updates, so the shipped learning rate is scaled by
    `lr_scale` (3x: GRU on commands, seed 0, went from 0.30 to 0.53 test top-1 in 10 epochs).
    """
    config = ROOT / "configs" / TASKS[task]
    learning_rate = load_config(config).train.learning_rate * lr_scale
    rows = []
    for seed in range(seeds):
        # One MFCC frame per RNN step (the shipped configs stack 2-4): the cells are compared over the full
        # 101 / 401 audio steps, where their differences in memory show.
        base = [f"data.root={data_root}", f"seed={seed}", f"train.epochs={epochs}", f"train.learning_rate={learning_rate:g}",
                "model.audio_stack=1"]
        features = work / "runs" / f"{task}_features_seed{seed}"
        preprocess(load_config(config, base), features, progress=False)
        for cell in CELLS:
            cfg = load_config(config, [*base, f"model.cell={cell}"])
            run_dir = work / "runs" / f"{task}_{cell}_seed{seed}"
            shutil.rmtree(run_dir, ignore_errors=True)  # train afresh: a reused run would time nothing
            run_dir.mkdir(parents=True)
            os.symlink(features / "features", run_dir / "features")
            start = time.perf_counter()
            result = train(cfg, run_dir, progress=False)
            seconds = time.perf_counter() - start
            test = evaluate_split(run_dir, "test")
            epoch_times = epoch_seconds(run_dir)
            row = {"task": task, "cell": cell, "seed": seed, "params": result["params"], "epochs": result["epochs"],
                   "train_seconds": round(seconds, 1), "first_epoch_seconds": round(epoch_times[0], 2),
                   "seconds_per_epoch": round(float(np.median(epoch_times[1:] or epoch_times)), 2),
                   "inference_ms": round(inference_ms(run_dir), 2), "test_accuracy": test["accuracy"], "test_clips": test["clips"],
                   "val_accuracy": result["val_accuracy"], "train_clips": RunDir(run_dir).read_index()["counts"]["train"]}
            print(f"  {task} {cell} seed {seed}: test {row['test_accuracy']:.3f}, {row['seconds_per_epoch']:.1f} s/epoch, "
                  f"{row['inference_ms']:.1f} ms/sequence", flush=True)
            rows.append(row)
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Mean ± std over seeds per (task, cell)."""
    out = []
    for task in dict.fromkeys(r["task"] for r in rows):
        for cell in CELLS:
            group = [r for r in rows if r["task"] == task and r["cell"] == cell]
            if not group:
                continue
            acc = np.array([r["test_accuracy"] for r in group])
            out.append({"task": task, "cell": cell, "params": group[0]["params"], "seeds": len(group),
                        "seconds_per_epoch": float(np.median([r["seconds_per_epoch"] for r in group])),
                        "first_epoch_seconds": float(np.median([r["first_epoch_seconds"] for r in group])),
                        "inference_ms": float(np.median([r["inference_ms"] for r in group])),
                        "test_accuracy_mean": float(acc.mean()), "test_accuracy_std": float(acc.std()),
                        "test_clips": group[0]["test_clips"], "train_clips": group[0]["train_clips"]})
    return out


# ----------------------------------------------------------------------------- 2. long sequences


def profile_summary(norms: np.ndarray) -> dict:
    """Headline numbers of a [L, T] gradient profile: first step, last step, their ratio (layer 0)."""
    first, last = float(norms[0, 0]), float(norms[0, -1])
    return {"first_step": first, "last_step": last, "first_over_last": first / last if last else None}


LONG_VARIANTS = [("simple_rnn", None), ("lstm", None), ("gru", None), ("lstm", 3.0), ("gru", 3.0)]  # (cell, gate bias)


def long_sequences(steps_list: list[int], sequences: int, epochs: int) -> list[dict]:
    """Each cell with Keras' default initialisation, then LSTM/GRU with their keep-gate bias at 3
    (sigmoid(3) = 0.95 of the old state kept per step), on the first-steps task at each T."""
    rows = []
    for steps in steps_list:
        x, y = rnn_probes.first_steps_task(sequences, steps, seed=0)
        x_val, y_val = rnn_probes.first_steps_task(256, steps, seed=1)
        probe_x, probe_y = x_val[:32], y_val[:32]
        for cell, gate_bias in LONG_VARIANTS:
            model = rnn_probes.sequence_classifier(cell, steps, num_layers=2, gate_bias=gate_bias, seed=0)
            name = cell if gate_bias is None else f"{cell} (gate bias {gate_bias:g})"
            factor = float(rnn_probes.memory_factors(model, probe_x).mean())
            init = rnn_probes.state_gradient_norms(model, probe_x, probe_y)
            init_layers = rnn_probes.weight_gradient_norms(model, probe_x, probe_y)
            fit = rnn_probes.fit_accuracy(model, x, y, x_val, y_val, epochs=epochs)
            trained = rnn_probes.state_gradient_norms(model, probe_x, probe_y)
            solved = next((i + 1 for i, a in enumerate(fit["val_accuracy"]) if a >= 0.9), None)
            row = {"steps": steps, "cell": cell, "gate_bias": gate_bias, "name": name, "params": rnn_probes.count_params(model),
                   "memory_factor_init": factor, "init": profile_summary(init), "trained": profile_summary(trained),
                   "val_accuracy": fit["val_accuracy"], "first_epoch_at_0.9": solved,
                   "seconds_per_epoch": round(fit["seconds_per_epoch"], 2),
                   "weight_grad_norms_init": init_layers,
                   "weight_grad_norms_trained": rnn_probes.weight_gradient_norms(model, probe_x, probe_y),
                   "state_grad_norms_init": init.tolist(), "state_grad_norms_trained": trained.tolist()}
            print(f"  T={steps} {name}: memory factor {factor:.3f}, ||dL/dh_1|| {row['init']['first_step']:.2g} at init; "
                  f"val accuracy {fit['final_val_accuracy']:.2f}", flush=True)
            rows.append(row)
    return rows


# ----------------------------------------------------------------------------- 3. exploding gradients


EXPLODING = {"steps": 20, "recurrent_gain": 3.0, "sequences": 512, "batch_size": 64, "clipnorm": 1.0,
             "optimizers": {"sgd": 0.1, "adam": 0.01}}


def exploding(seeds: int, train_steps: int) -> dict:
    e = EXPLODING
    x_val, y_val = rnn_probes.first_steps_task(256, e["steps"], seed=100)
    model = rnn_probes.sequence_classifier("simple_rnn", e["steps"], recurrent_gain=e["recurrent_gain"], seed=0)
    profile = rnn_probes.state_gradient_norms(model, x_val[:64], y_val[:64])
    rows = []
    for optimizer, lr in e["optimizers"].items():
        for clipnorm in (None, e["clipnorm"]):
            for seed in range(seeds):
                x, y = rnn_probes.first_steps_task(e["sequences"], e["steps"], seed=seed)
                model = rnn_probes.sequence_classifier("simple_rnn", e["steps"], recurrent_gain=e["recurrent_gain"], seed=seed)
                h = rnn_probes.train_steps(model, x, y, steps=train_steps, batch_size=e["batch_size"], learning_rate=lr,
                                           clipnorm=clipnorm, optimizer=optimizer, seed=seed)
                rows.append({"optimizer": optimizer, "learning_rate": lr, "clipnorm": clipnorm, "seed": seed,
                             "max_grad_norm": max(h["grad_norm"]), "max_update_norm": max(h["update_norm"]),
                             "median_update_norm": float(np.median(h["update_norm"])),
                             "max_variable_update": max(h["largest_variable_update"]),
                             "final_loss": h["loss"][-1], "val_accuracy": rnn_probes.accuracy(model, x_val, y_val),
                             "loss": h["loss"], "grad_norm": h["grad_norm"], "update_norm": h["update_norm"]})
            group = rows[-seeds:]
            print(f"  {optimizer} clipnorm={clipnorm}: max grad {max(r['max_grad_norm'] for r in group):.3g}, "
                  f"max update {max(r['max_update_norm'] for r in group):.3g}, "
                  f"val accuracy {np.mean([r['val_accuracy'] for r in group]):.2f}", flush=True)
    return {"settings": {**e, "train_steps": train_steps, "seeds": seeds},
            "state_grad_norms_init": profile.tolist(), "init": profile_summary(profile), "runs": rows}


# ----------------------------------------------------------------------------- tables


def tables(summary: list[dict], long_rows: list[dict], explode: dict, settings: dict) -> str:
    lines = []
    if summary:
        lines += [f"Project tasks: test top-1 over {settings['seeds']} seed(s), shipped configs with `model.cell` changed, "
                  f"{settings['epochs']} epochs at {settings['lr_scale']:g}x the shipped learning rate.", "",
                  "| task | cell | params | train s/epoch | first epoch s (incl. tracing) | inference ms/sequence | test top-1 (mean ± std) | test clips |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {s['task']} | {s['cell']} | {s['params']:,} | {s['seconds_per_epoch']:.1f} | {s['first_epoch_seconds']:.0f} | {s['inference_ms']:.1f} | "
                  f"{s['test_accuracy_mean']:.3f} ± {s['test_accuracy_std']:.3f} | {s['test_clips']} |" for s in summary]
        lines.append("")
    fmt = lambda v: "0 (underflow)" if v == 0 else f"{v:.1e}"  # noqa: E731
    lines += [f"Long sequences: label in the first 3 of T steps (the rest N(0, 1) noise), 2-layer stacks of 32 units, "
              f"{settings['long_sequences']} training sequences, {settings['long_epochs']} epochs (Adam 3e-3, clipnorm 1). "
              "Memory factor: the mean per-step fraction of the old state kept at initialisation (LSTM forget gate, GRU update "
              "gate, SimpleRNN tanh'). ‖dL/dh_t‖ of the bottom layer at initialisation, mean over 32 sequences.", "",
              "| T | cell | params | memory factor | ‖dL/dh_1‖ | ‖dL/dh_T‖ | val accuracy | first epoch ≥ 0.9 | s/epoch |",
              "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['steps']} | {r['name']} | {r['params']:,} | {r['memory_factor_init']:.2f} | {fmt(r['init']['first_step'])} | "
              f"{fmt(r['init']['last_step'])} | {r['val_accuracy'][-1]:.2f} | {r['first_epoch_at_0.9'] or '-'} | "
              f"{r['seconds_per_epoch']:.1f} |" for r in long_rows]
    e = explode["settings"]
    lines += ["", f"Exploding gradients: SimpleRNN, recurrent kernel {e['recurrent_gain']}x orthogonal, T={e['steps']} "
              f"(‖dL/dh_1‖ = {explode['init']['first_step']:.3g} vs ‖dL/dh_T‖ = {explode['init']['last_step']:.3g} at init), "
              f"{e['train_steps']} steps of batch {e['batch_size']}, {e['seeds']} seed(s).", "",
              "| optimizer | clipnorm | largest gradient norm | largest update norm | median update norm | val accuracy (mean ± std) |",
              "|---|---|---:|---:|---:|---:|"]
    runs = explode["runs"]
    for optimizer, lr in e["optimizers"].items():
        for clipnorm in (None, e["clipnorm"]):
            group = [r for r in runs if r["optimizer"] == optimizer and r["clipnorm"] == clipnorm]
            acc = np.array([r["val_accuracy"] for r in group])
            lines.append(f"| {optimizer} (lr {lr}) | {clipnorm or 'off'} | {max(r['max_grad_norm'] for r in group):.3g} | "
                         f"{max(r['max_update_norm'] for r in group):.3g} | {np.median([r['median_update_norm'] for r in group]):.3g} | "
                         f"{np.nanmean(acc):.2f} ± {np.nanstd(acc):.2f} |")
    return "\n".join(lines)


def to_json(obj) -> str:
    """JSON with floats to 4 significant digits, NaN as null, and lists of numbers on one line."""

    def clean(value):
        if isinstance(value, float):
            return None if not np.isfinite(value) else float(f"{value:.4g}")
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    text = json.dumps(clean(obj), indent=1)
    return re.sub(r"\[([-0-9.eE+,\snul]*)\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="spoken commands only, tiny data, 1 seed, 2 epochs: a smoke run of every part")
    parser.add_argument("--seeds", type=int)
    parser.add_argument("--epochs", type=int, help="epochs on the project tasks")
    parser.add_argument("--clips-per-class", type=int)
    parser.add_argument("--per-word", type=int)
    parser.add_argument("--lr-scale", type=float, help="multiplies the shipped configs' learning rate (default 3: few epochs)")
    parser.add_argument("--skip-project", action="store_true", help="only the long-sequence and exploding-gradient parts")
    parser.add_argument("--work", default="/tmp/actrec-rnn-cells", help="data and run dirs (data and features are reused)")
    parser.add_argument("--out", help="JSON path (default benchmarks/results/rnn_cells.json; WORK/rnn_cells.json with --quick)")
    args = parser.parse_args()

    settings = dict(QUICK if args.quick else FULL)
    for key in ("seeds", "epochs", "clips_per_class", "per_word", "lr_scale"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    work = Path(args.work) / ("quick" if args.quick else "full")
    out = Path(args.out) if args.out else (work / "rnn_cells.json" if args.quick else ROOT / "benchmarks/results/rnn_cells.json")
    started = time.perf_counter()

    rows: list[dict] = []
    if not args.skip_project:
        data = {"commands": work / f"data/commands_{settings['per_word']}", "actions": work / f"data/actions_{settings['clips_per_class']}"}
        if "commands" in settings["tasks"]:
            make_commands(data["commands"], per_word=settings["per_word"], seed=0, progress=False)  # resumes: finished WAVs are kept
        if "actions" in settings["tasks"] and not (data["actions"] / "testlist01.txt").is_file():
            make_actions(data["actions"], clips_per_class=settings["clips_per_class"], seed=0, progress=False)
        for task in settings["tasks"]:
            print(f"{task}: {', '.join(CELLS)} x {settings['seeds']} seed(s)", flush=True)
            rows += project_task(task, data[task], work, settings["seeds"], settings["epochs"], settings["lr_scale"])
    part_seconds = {"project_tasks": time.perf_counter() - started}
    print("long sequences", flush=True)
    long_rows = long_sequences(settings["long_steps"], settings["long_sequences"], settings["long_epochs"])
    part_seconds["long_sequences"] = time.perf_counter() - started - sum(part_seconds.values())
    print("exploding gradients", flush=True)
    explode = exploding(max(1, settings["seeds"]), settings["exploding_steps"])
    part_seconds["exploding"] = time.perf_counter() - started - sum(part_seconds.values())

    summary = summarise(rows)
    text = tables(summary, long_rows, explode, settings)
    seconds = time.perf_counter() - started
    print("\n" + text + f"\n\ntotal {seconds / 60:.1f} min")
    machine = {"cpus": os.cpu_count(), "load_average_at_end": list(os.getloadavg()), "python": platform.python_version(),
               "note": "shared machine: timings are indicative"}
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"settings": settings, "summary": summary, "runs": rows, "long_sequences": long_rows, "exploding": explode,
              "total_seconds": round(seconds, 1), "part_seconds": part_seconds, "machine": machine}
    out.write_text(to_json(result) + "\n")
    out.with_suffix(".md").write_text(text + "\n")
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
