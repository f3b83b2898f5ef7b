"""The price of streaming: the causal keyword spotter against the whole-window (bidirectional) one, same data, several seeds.

    data_prep.commands (espeak-ng, --per-word speakers per command, other words, background)
      --configs/commands.yaml (unidirectional GRU, causal MFCCs: streamable)
        and configs/commands_bidirectional.yaml (bidirectional GRU, attention), per seed-->
      preprocess, train, evaluate (test split: unseen speakers), export float (and the streaming file)

Per recipe: test top-1 (12 labels) and FRR at FAR <= 1%, mean and spread over seeds; parameters; LiteRT milliseconds
(1 thread) for one 1-s window, and what an app pays per hop: the streaming step, or the whole window re-run.

Usage: python benchmarks/streaming_price.py [--seeds 0,1,2] [--per-word 100] [--work DIR]
Prints a markdown table and writes benchmarks/results/streaming_price.json and .md.
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

from data_prep.commands import make_commands  # noqa: E402
from pipeline.models.registry import load_model  # noqa: E402
from pipeline.rundir import RunDir  # noqa: E402
from pipeline.stages.evaluate import evaluate  # noqa: E402
from pipeline.stages.export import export  # noqa: E402
from pipeline.stages.preprocess import preprocess  # noqa: E402
from pipeline.stages.train import train  # noqa: E402

RECIPES = {"causal (streamable)": "commands", "bidirectional": "commands_bidirectional"}


def run_recipe(config: str, seed: int, data: Path, work: Path) -> dict:
    run = work / f"{config}_seed{seed}"
    overrides = [f"data.root={data}", f"seed={seed}", "export.formats=[float]", "export.latency_runs=5"]
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
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--per-word", type=int, default=100)
    parser.add_argument("--work", type=Path, default=Path("/tmp/actrec-streaming-price"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "streaming_price")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    data = args.work / "data"
    if not (data / "commands.json").is_file():
        make_commands(data, per_word=args.per_word, seed=0)
    rows = {name: [run_recipe(config, seed, data, args.work) for seed in seeds] for name, config in RECIPES.items()}

    lines = [f"Same data (data_prep.commands, {args.per_word} speakers per word), seeds {args.seeds}; LiteRT, 1 thread.", "",
             "| recipe | test top-1 (12 labels) | FRR at FAR <= 1% | parameters | ms per 1-s window | ms per hop an app pays |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, runs in rows.items():
        window = np.median([r["window_float_ms"] for r in runs])
        hop = np.median([r["stream_float_ms"] for r in runs]) if "stream_float_ms" in runs[0] else window
        how = "streaming step" if "stream_float_ms" in runs[0] else "window re-run"
        lines.append(f"| {name} | {spread([r['top1'] for r in runs])} | {spread([r['frr_at_far_1pct'] for r in runs])} | "
                     f"{runs[0]['params']:,} | {window:.2f} | {hop:.3f} ({how}) |")
    table = "\n".join(lines)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    args.out.with_suffix(".md").write_text(table + "\n")


if __name__ == "__main__":
    main()
