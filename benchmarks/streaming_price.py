"""The price of streaming: a causal model against the whole-window (bidirectional) one, same data, several seeds.

    --task commands: data_prep.commands (espeak-ng, --per-word speakers per command, other words, background)
      --configs/commands.yaml (unidirectional GRU, causal MFCCs: streamable)
        and configs/commands_bidirectional.yaml (bidirectional GRU, attention), per seed-->
    --task actions: data_prep.actions (--clips-per-class) --configs/actions_stream.yaml (motion features, unidirectional
        GRU, mean pooling: streams frame by frame) and the same with a bidirectional GRU and attention, per seed-->
      preprocess (actions: once per seed, shared by the recipes), train, evaluate (test split: unseen speakers / actors), export float (and the
      streaming file)

Per recipe: test top-1 (commands: 12 labels, and FRR at FAR <= 1%), mean and spread over seeds; parameters; LiteRT
milliseconds (1 thread) for one whole window (1 s of audio, a clip's frames), and what an app pays per step (a hop of
audio, a frame): the streaming step, or the whole window re-run.

Usage: python benchmarks/streaming_price.py [--task commands|actions] [--seeds 0,1,2] [--per-word 100] [--clips-per-class 32]
                                            [--work DIR]
Prints a markdown table and writes benchmarks/results/streaming_price[_actions].json and .md.
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
sys.path.insert(0, str(ROOT / "benchmarks"))

from stream import latency  # noqa: E402  (benchmarks/stream.py)

from data_prep.actions import make_actions  # noqa: E402
from data_prep.commands import make_commands  # noqa: E402
from pipeline.models.registry import load_model  # noqa: E402
from pipeline.rundir import RunDir  # noqa: E402
from pipeline.stages.evaluate import evaluate  # noqa: E402
from pipeline.stages.export import export  # noqa: E402
from pipeline.stages.preprocess import preprocess  # noqa: E402
from pipeline.stages.train import train  # noqa: E402

RECIPES = {  # task -> {recipe: (config, overrides)}
    "commands": {"causal (streamable)": ("commands", []), "bidirectional": ("commands_bidirectional", [])},
    "actions": {"causal (streamable)": ("actions_stream", []),
                "bidirectional": ("actions_stream", ["model.bidirectional=true", "model.pooling=attention"])},
}


def run_recipe(config: str, extra: list[str], name: str, seed: int, data: Path, work: Path, features: Path | None) -> dict:
    run = work / f"{name.split()[0]}_seed{seed}"
    overrides = [f"data.root={data}", f"seed={seed}", "export.formats=[float]", "export.latency_runs=5", *extra]
    if features is not None:  # the seed's one preprocessing (the seed decides sampled frames), shared by the recipes
        features = features.with_name(f"{features.name}_seed{seed}")
        preprocess(config, features, overrides, progress=False)
        if not (run / "features").exists():
            run.mkdir(parents=True, exist_ok=True)
            os.symlink(features / "features", run / "features")
    preprocess(config, run, overrides, progress=False)
    train(config, run, overrides, progress=False)
    metrics = evaluate(run, progress=False)
    if not (run / "export" / "model_float.tflite").is_file():
        export(run, progress=False)
    ms = latency(run / "export", runs=100)
    return {"seed": seed, "top1": metrics["top1"], "frr_at_far_1pct": metrics.get("frr_at_far"),
            "params": int(load_model(RunDir(run).model).count_params()), **ms}


def spread(values: list) -> str:
    values = [v for v in values if v is not None]
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}" if values else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="commands", choices=list(RECIPES))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--per-word", type=int, default=100, help="commands: speakers per word")
    parser.add_argument("--clips-per-class", type=int, default=32, help="actions: clips per class (the demo's 32)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/actrec-streaming-price"))
    parser.add_argument("--out", type=Path, help="default: benchmarks/results/streaming_price (commands), streaming_price_actions")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    work = args.work / args.task
    data, features = work / "data", None
    if args.task == "commands":
        if not (data / "commands.json").is_file():
            make_commands(data, per_word=args.per_word, seed=0)
        what = f"data_prep.commands, {args.per_word} speakers per word"
    else:
        if not (data / "testlist01.txt").is_file():
            make_actions(data, clips_per_class=args.clips_per_class, seed=0)
        features = work / "features"
        what = f"data_prep.actions, {args.clips_per_class} clips per class"
    rows = {name: [run_recipe(config, extra, name, seed, data, work, features) for seed in seeds]
            for name, (config, extra) in RECIPES[args.task].items()}

    window_of = "1-s window" if args.task == "commands" else "clip (all its frames)"
    step_of = "hop" if args.task == "commands" else "frame"
    lines = [f"Same data ({what}), seeds {args.seeds}; LiteRT, 1 thread.", "",
             f"| recipe | test top-1 | FRR at FAR <= 1% | parameters | ms per {window_of} | ms per {step_of} an app pays |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, runs in rows.items():
        window = np.median([r["window_float_ms"] for r in runs])
        step = np.median([r["stream_float_ms"] for r in runs]) if "stream_float_ms" in runs[0] else window
        how = "streaming step" if "stream_float_ms" in runs[0] else "window re-run"
        lines.append(f"| {name} | {spread([r['top1'] for r in runs])} | {spread([r['frr_at_far_1pct'] for r in runs])} | "
                     f"{runs[0]['params']:,} | {window:.2f} | {step:.3f} ({how}) |")
    table = "\n".join(lines)
    print(table)
    out = args.out or ROOT / "benchmarks" / "results" / ("streaming_price" if args.task == "commands" else "streaming_price_actions")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    out.with_suffix(".md").write_text(table + "\n")


if __name__ == "__main__":
    main()
