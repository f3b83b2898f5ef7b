"""Test-split accuracy of every model on the embedded data (groups and speakers never seen in training).

    action clips, end to end:      hybrid (configs/actions_hybrid.yaml: small CNN on 64x64 frame differences
                                   + in-model MFCC on the waveform), trained in two stages: first on video only
                                   (its CNN must carry every class it can), then audio-visual with the CNN
                                   started from stage 1's frame_encoder.weights.h5; and, for comparison, the
                                   audio-visual model from scratch. Stage 1's CNN is also the frame encoder
                                   of the trained-CNN rows below
    action clips, cached features: video_rnn, audio_rnn, av_fusion (mid; and late), twice: with the random
                                   small CNN of configs/actions_av.yaml, and with the trained CNN
                                   (configs/actions_av_trained_cnn.yaml)
    spoken commands:               audio_rnn (configs/commands.yaml)

Each model is trained with a shipped config and only the model name changed, through the same
`preprocess` and `train` functions the CLI calls.

Usage: python benchmarks/accuracy.py [--clips-per-class 32] [--per-word 200] [--work DIR]
Prints a markdown table and writes benchmarks/results/accuracy.json and accuracy.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data_prep.actions import make_actions  # noqa: E402
from data_prep.commands import make_commands  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.features.encoders import FRAME_ENCODER_WEIGHTS  # noqa: E402
from pipeline.stages.preprocess import preprocess  # noqa: E402
from pipeline.stages.train import evaluate_split, train  # noqa: E402

STAGE1 = ["preprocess.modalities=[video]", "train.epochs=80"]  # the two-stage hybrid's first stage (configs/actions_hybrid.yaml)
FEATURE_MODELS = {"video_rnn": ["model.name=video_rnn"], "audio_rnn": ["model.name=audio_rnn"], "av_fusion": ["model.name=av_fusion"],
                  # late fusion averages the two heads' probabilities: a weak modality can only blur the strong one
                  "av_fusion_late": ["model.name=av_fusion", "model.fusion=late"]}


def run(name: str, config: str, data_root: Path, work: Path, overrides: list[str], features_from: Path | None = None) -> dict:
    """Preprocess (or share another run's features), train, and score the test split."""
    cfg = load_config(ROOT / "configs" / config, [f"data.root={data_root}", *overrides])
    run_dir = work / "runs" / name
    if features_from is not None and not (run_dir / "features").exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        os.symlink(features_from / "features", run_dir / "features")
    index = preprocess(cfg, run_dir, progress=False)
    start = time.time()
    result = train(cfg, run_dir, progress=False)
    seconds = time.time() - start
    test = evaluate_split(run_dir, "test")
    row = {"model": name, "test_accuracy": test["accuracy"], "test_clips": test["clips"], "val_accuracy": result["val_accuracy"],
           "epochs": result["epochs"], "train_seconds": round(seconds, 1), "params": result["params"],
           "train_clips": index["counts"]["train"]}
    print(f"  {name}: test accuracy {row['test_accuracy']:.3f} on {row['test_clips']} clips ({row['epochs']} epochs, {seconds:.0f} s)", flush=True)
    return row


def summarize(rows: list[dict]) -> dict:
    """The issue's goals against the measured rows (accuracies rounded to 4 places: 190/200 is 0.95, not 0.9499999).

    The fusion goals are checked on the two-stage hybrid (audio-visual end to end, its CNN from the video-only
    stage) against the best single-modality row of any kind. Feature-level fusion on the trained CNN is
    reported beside it: it scored 0.889-0.972 in three runs, too unsteady for the goal row.
    """
    by_name = {r["model"]: round(r["test_accuracy"], 4) for r in rows}
    fusion = by_name["actions_hybrid"]
    singles = {name: by_name[name] for name in ("actions_hybrid_video", "actions_video_rnn", "actions_trained_cnn_video_rnn",
                                                 "actions_audio_rnn", "actions_trained_cnn_audio_rnn")}
    best_single = max(singles, key=singles.get)
    return {
        "fusion_model": "actions_hybrid",
        "best_single_modality": best_single,
        "fusion_minus_best_single": round(fusion - singles[best_single], 4),
        "feature_fusion_trained_cnn_minus_best_single": round(by_name["actions_trained_cnn_av_fusion"] - singles[best_single], 4),
        "goals": {
            "fusion >= 0.95": fusion >= 0.95,
            "fusion >= best single + 0.05": fusion - singles[best_single] >= 0.05,
            "commands >= 0.95": by_name["commands_audio_rnn"] >= 0.95,
            "hybrid >= 0.90": fusion >= 0.90,
        },
    }


def action_rows(actions: Path, work: Path) -> list[dict]:
    """Hybrid (video only, then audio-visual from its CNN, and from scratch), then the feature-level models on the random and on the trained CNN."""
    rows = []
    print("action clips, end to end", flush=True)
    # stage 1, video only: with no audio to lean on, the CNN must carry every class it can (it still improves at 40 epochs)
    rows.append({"task": "actions", **run("actions_hybrid_video", "actions_hybrid.yaml", actions, work, STAGE1)})
    trained_cnn = work / "runs/actions_hybrid_video" / FRAME_ENCODER_WEIGHTS
    # stage 2, audio-visual from stage 1's CNN (the goal row). From scratch it scores lower, we think because
    # the audio branch fits the training clips first and leaves the CNN little loss to learn from
    rows.append({"task": "actions", **run("actions_hybrid", "actions_hybrid.yaml", actions, work, [f"preprocess.weights={trained_cnn}"])})
    rows.append({"task": "actions", **run("actions_hybrid_scratch", "actions_hybrid.yaml", actions, work, [])})
    for title, config, overrides in (("random CNN", "actions_av.yaml", []),
                                     ("trained CNN", "actions_av_trained_cnn.yaml", [f"preprocess.weights={trained_cnn}"])):
        print(f"action clips, cached features, {title}", flush=True)
        prefix = "actions_" + ("trained_cnn_" if overrides else "")
        features = work / f"runs/{prefix}features"
        preprocess(load_config(ROOT / "configs" / config, [f"data.root={actions}", *overrides]), features, progress=False)
        for model, model_overrides in FEATURE_MODELS.items():
            rows.append({"task": "actions", **run(prefix + model, config, actions, work, [*overrides, *model_overrides], features)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips-per-class", type=int, default=32)
    parser.add_argument("--per-word", type=int, default=200)
    parser.add_argument("--work", default="/tmp/actrec-accuracy", help="data and run dirs (reused when present)")
    parser.add_argument("--tasks", default="actions,commands", help="tasks to (re)run; the other task's rows are kept from --out")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/accuracy.json"))
    args = parser.parse_args()

    work = Path(args.work)
    actions, commands = work / "data/actions", work / "data/commands"
    if not (actions / "testlist01.txt").is_file():
        make_actions(actions, clips_per_class=args.clips_per_class, seed=0, progress=False)
    make_commands(commands, per_word=args.per_word, seed=0, progress=False)

    tasks = set(args.tasks.split(","))
    out = Path(args.out)
    kept = json.loads(out.read_text())["rows"] if out.is_file() else []
    rows = [r for r in kept if r["task"] not in tasks]  # rows of the tasks not rerun, from the last full run
    if "actions" in tasks:
        rows += action_rows(actions, work)
    if "commands" in tasks:
        print("spoken commands", flush=True)
        rows.append({"task": "commands", **run("commands_audio_rnn", "commands.yaml", commands, work, [])})
    rows.sort(key=lambda r: r["task"])  # actions first, in the order they ran

    summary = summarize(rows)
    table = ["| task | model | test top-1 | test clips | train clips | epochs | train time (s) | params |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    table += [f"| {r['task']} | {r['model']} | {r['test_accuracy']:.3f} | {r['test_clips']} | {r['train_clips']} | {r['epochs']} | "
              f"{r['train_seconds']:.0f} | {r['params']:,} |" for r in rows]
    text = "\n".join(table)
    print("\n" + text)
    print(f"\nfusion ({summary['fusion_model']}) - best single modality ({summary['best_single_modality']}) = "
          f"{summary['fusion_minus_best_single']:+.3f}; goals: {summary['goals']}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, **summary, "clips_per_class": args.clips_per_class, "per_word": args.per_word}, indent=2) + "\n")
    out.with_suffix(".md").write_text(text + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
