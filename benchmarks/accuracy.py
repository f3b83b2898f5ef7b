"""Test-split accuracy of the shipped recipes on the embedded data, as `./run.sh demo` trains them, over seeds
(actors and speakers never seen in training). A seed draws the data, the splits and the training.

    per seed, actions:  data_prep.actions (--clips-per-class, as the demo: 32) --configs/actions_av.yaml as shipped-->
                        preprocess once, then on the same features:
                          av_fusion  the demo's action model: test top-1, and with audio / video dropped (`evaluate --drop`)
                          video_rnn, audio_rnn  the same recipe with one modality, trained apart: what each modality
                                                reaches alone (the av_fusion run trains its own first: train.unimodal_first)
    per seed, commands: data_prep.commands (--per-word, as the demo: 100) --configs/commands.yaml as shipped--> audio_rnn:
                        test top-1 on 12 labels, FRR at FAR <= 1%

Goals (issue 21): the action model >= 0.95 test top-1 on the mean over seeds; with audio dropped it scores at least
the video-only model, with video dropped at least the audio-only model (chance is 1 / 9 classes).

Usage: python benchmarks/accuracy.py [--seeds 0,1,2] [--tasks actions,commands] [--clips-per-class 32] [--per-word 100]
Prints a markdown table (mean ± standard deviation over seeds, and each seed's value) and writes
benchmarks/results/accuracy.json and accuracy.md. `--tasks actions` reruns one task and keeps the other's rows.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.modalities import DROPS, train_and_score  # noqa: E402
from data_prep.actions import make_actions  # noqa: E402
from data_prep.commands import make_commands  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.stages.evaluate import evaluate  # noqa: E402
from pipeline.stages.preprocess import preprocess  # noqa: E402
from pipeline.stages.train import train  # noqa: E402

ACTIONS = "actions_av"
# the single-modality rows: the shipped recipe with one modality (the two-modality training levers mean nothing there)
SINGLES = {name: [f"model.name={name}", "train.modality_dropout=0", "train.modality_loss=0", "train.unimodal_first=false"]
           for name in ("video_rnn", "audio_rnn")}


def action_rows(seed: int, work: Path, clips_per_class: int) -> list[dict]:
    data, features = work / "actions" / "data", work / "actions" / "features"
    if not (data / "testlist01.txt").is_file():
        make_actions(data, clips_per_class=clips_per_class, seed=seed, progress=False)
    preprocess(load_config(ACTIONS, [f"data.root={data}", f"seed={seed}"]), features, progress=False)
    runs = work / "actions"
    rows = [train_and_score(ACTIONS, "av_fusion", [], seed, data, features, runs, DROPS)]
    rows += [train_and_score(ACTIONS, name, overrides, seed, data, features, runs) for name, overrides in SINGLES.items()]
    return [{"task": "actions", **row} for row in rows]


def command_row(seed: int, work: Path, per_word: int) -> dict:
    data, run_dir = work / "commands" / "data", work / "commands" / "audio_rnn"
    make_commands(data, per_word=per_word, seed=seed, progress=False)
    cfg = load_config("commands", [f"data.root={data}", f"seed={seed}"])
    preprocess(cfg, run_dir, progress=False)
    result = train(cfg, run_dir, progress=False)
    metrics = evaluate(run_dir, split="test", progress=False)
    return {"task": "commands", "model": "audio_rnn", "seed": seed, "epochs": result["epochs"], "top1": metrics["top1"],
            "test_clips": metrics["num_clips"], "frr_at_far_1pct": metrics.get("frr_at_far")}


def summarize(rows: list[dict]) -> tuple[dict, dict]:
    """{task/model: {metric: [mean, std, per-seed values]}} and the issue's goals on the means."""
    summary: dict = {}
    for row in rows:
        for key in ("top1", "top1_no_audio", "top1_no_video", "frr_at_far_1pct"):
            if row.get(key) is not None:
                summary.setdefault(f"{row['task']}/{row['model']}", {}).setdefault(key, []).append(row[key])
    summary = {m: {k: [float(np.mean(v)), float(np.std(v)), v] for k, v in metrics.items()} for m, metrics in summary.items()}
    goals = {}
    if "actions/av_fusion" in summary:
        fusion = summary["actions/av_fusion"]
        goals = {"action model >= 0.95": round(fusion["top1"][0], 4) >= 0.95,
                 "audio dropped >= video-only model": fusion["top1_no_audio"][0] >= summary["actions/video_rnn"]["top1"][0],
                 "video dropped >= audio-only model": fusion["top1_no_video"][0] >= summary["actions/audio_rnn"]["top1"][0]}
    return summary, goals


def table(summary: dict, seeds: list[int]) -> str:
    def cell(value):
        return "" if value is None else f"{value[0]:.3f} ± {value[1]:.3f} ({', '.join(f'{v:.3f}' for v in value[2])})"

    lines = [f"| task / model ({len(seeds)} seeds: mean ± std (each seed)) | test top-1 | audio dropped | video dropped | FRR at FAR <= 1% |",
             "|---|---|---|---|---|"]
    lines += [f"| {m} | {cell(s.get('top1'))} | {cell(s.get('top1_no_audio'))} | {cell(s.get('top1_no_video'))} | "
              f"{cell(s.get('frr_at_far_1pct'))} |" for m, s in summary.items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2", help="config seeds: each draws its own data, splits and training")
    parser.add_argument("--tasks", default="actions,commands", help="tasks to (re)run; the other task's rows are kept from --out")
    parser.add_argument("--clips-per-class", type=int, default=32, help="action clips per class (the demo: 32)")
    parser.add_argument("--per-word", type=int, default=100, help="utterances per command word (the demo: 100)")
    parser.add_argument("--work", default="/tmp/actrec-accuracy", help="data and run dirs (reused when present)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/accuracy.json"))
    args = parser.parse_args()

    seeds, tasks, out = [int(s) for s in args.seeds.split(",")], set(args.tasks.split(",")), Path(args.out)
    kept = json.loads(out.read_text()).get("rows", []) if out.is_file() else []
    rows = [r for r in kept if r["task"] not in tasks and "seed" in r]  # the other task's rows, from the last run
    for seed in seeds:
        work = Path(args.work) / f"seed{seed}"
        if "actions" in tasks:
            rows += action_rows(seed, work, args.clips_per_class)
        if "commands" in tasks:
            rows.append(command_row(seed, work, args.per_word))
        print(json.dumps([r for r in rows if r["seed"] == seed]), flush=True)
    rows.sort(key=lambda r: (r["task"], r["model"] != "av_fusion", r["model"], r["seed"]))

    summary, goals = summarize(rows)
    text = table(summary, seeds) + (f"\n\nShipped configs (configs/{ACTIONS}.yaml, configs/commands.yaml), data as the demo makes it: "
                                    f"{args.clips_per_class} action clips per class, {args.per_word} utterances per word; test splits "
                                    f"of unseen actors and speakers.")
    print("\n" + text + f"\n\ngoals: {json.dumps(goals)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "summary": summary, "goals": goals, "seeds": seeds,
                               "clips_per_class": args.clips_per_class, "per_word": args.per_word}, indent=2) + "\n")
    out.with_suffix(".md").write_text(text + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
