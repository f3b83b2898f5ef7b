"""Does each modality pull its weight? The demo's audio-visual action recipe with one modality removed, against
models that only ever had that modality, over several seeds.

    data_prep.actions (--clips-per-class, per seed) --configs/actions_av.yaml (--encoder causal: the demo's, optical
      flow and causal GRUs; causal_dataset: the same with fixed MFCC statistics) or configs/actions_av_bidirectional.yaml
      (--encoder motion: the demo's before, whole-clip; --encoder random: the same with a random small CNN, the demo's
      before that) or configs/actions_av_trained_cnn.yaml
      (--encoder trained: the small CNN of a video-only hybrid run trained first on the seed's training split), per seed-->
      preprocess once (cached frame features + MFCCs), then on the same features:
        video_rnn, audio_rnn                            single-modality models
        av_fusion (model.fusion = each --fusions value), train.modality_dropout = each --rates value,
                                                        train.modality_loss = each --losses value
        av_fusion unimodal first (--unimodal-first true: train.unimodal_first, the shipped recipe; dropout and losses 0)
      --actrec evaluate (raw test clips: unseen actors), and for av_fusion also --drop audio and --drop video

A fusion model passes when, with audio dropped, it scores at least the video-only model, and with video dropped
at least the audio-only model (chance is 1 / 9 classes). A test split of 72 clips moves top-1 by about 0.06 from
sampling alone: --unseen-clips-per-class N also evaluates every model on a second generated dataset of N clips per
class (generator seed 10000 + the seed: actors none of the models saw), all of its clips, and decides the goals
on it.

Usage: python benchmarks/modalities.py [--encoder motion|random|trained|causal|causal_dataset] [--seeds 0,1,2] [--rates 0,0.3,0.6] [--fusions mid,late] [--losses 0,1]
                                      [--unimodal-first false,true]
                                      [--clips-per-class 32] [--unseen-clips-per-class 0] [--set KEY=VALUE ...]
Prints a markdown table and writes benchmarks/results/modalities_<encoder>.json and .md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data_prep.actions import make_actions  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.features.encoders import FRAME_ENCODER_WEIGHTS  # noqa: E402
from pipeline.stages.evaluate import evaluate  # noqa: E402
from pipeline.stages.preprocess import preprocess  # noqa: E402
from pipeline.stages.train import train  # noqa: E402

DROPS = (None, "audio", "video")
# --encoder: (config, overrides). motion: the demo's recipe; random: the demo's before it (a random small CNN).
RECIPES = {
    "motion": ("actions_av_bidirectional", []),
    "random": ("actions_av_bidirectional", ["preprocess.encoder=small_cnn", "preprocess.image_size=112", "preprocess.num_frames=16"]),
    "trained": ("actions_av_trained_cnn", []),
    # the shipped recipe, streamable (model.streamable): unidirectional GRUs, mean pooling, causal MFCC frames with
    # running normalisation (causal_dataset: with the training set's fixed statistics, which cost the audio 30 points)
    "causal": ("actions_av", []),
    "causal_dataset": ("actions_av", ["preprocess.normalize=dataset"]),
}
STAGE1 = ["preprocess.modalities=[video]", "train.epochs=80"]  # the video-only hybrid whose CNN encodes the frames (its config says)
UNSEEN_SEED = 10_000  # + the seed: the generator seed of the --unseen-clips-per-class dataset (other actors)


def train_and_score(config: str, name: str, overrides: list[str], seed: int, data: Path, features: Path, work: Path,
                    drops=(None,), unseen: Path | None = None) -> dict:
    """Train a model of `config` on shared features; test top-1 per dropped modality (None: both), and on every clip of
    the `unseen` dataset if given."""
    cfg = load_config(config, [f"data.root={data}", f"seed={seed}", *overrides])
    run_dir = work / f"seed{seed}" / name
    if not (run_dir / "features").exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        os.symlink(features / "features", run_dir / "features")
    preprocess(cfg, run_dir, progress=False)  # nothing to do: checks the shared features against the config
    start = time.time()
    result = train(cfg, run_dir, progress=False)
    row = {"model": name, "seed": seed, "epochs": result["epochs"], "train_seconds": round(time.time() - start, 1)}
    for drop in drops:
        metrics = evaluate(run_dir, split="test", progress=False, drop=drop, name=f"test-no-{drop}" if drop else "test")
        row[f"top1_no_{drop}" if drop else "top1"] = metrics["top1"]
        row["test_clips"] = metrics["num_clips"]
        if unseen is not None:  # both of its lists: every clip
            parts = [evaluate(run_dir, data=unseen, split=split, progress=False, drop=drop, name=f"unseen-{split}-no-{drop}")
                     for split in ("train", "test")]
            row["unseen_clips"] = sum(m["num_clips"] for m in parts)
            row[f"unseen_top1_no_{drop}" if drop else "unseen_top1"] = sum(m["top1"] * m["num_clips"] for m in parts) / row["unseen_clips"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default="causal", choices=list(RECIPES),
                        help="the recipe: causal (the demo's: motion features, causal GRUs), causal_dataset (with fixed MFCC "
                        "statistics), motion (the whole-clip recipe before), random (a random small CNN) or trained (a trained small CNN)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rates", default="0,0.3,0.6", help="train.modality_dropout values of the av_fusion rows")
    parser.add_argument("--losses", default="0", help="train.modality_loss values of the av_fusion rows (each with each --rates value): "
                        "the weight of the losses that train the fused classifier on each modality alone")
    parser.add_argument("--fusions", default="mid", help="model.fusion values of the av_fusion rows: mid (one classifier on both "
                        "pooled states, the shipped one) and/or late (a classifier per modality, probabilities averaged)")
    parser.add_argument("--unimodal-first", default="false", help="train.unimodal_first values: false (the --fusions x --rates x "
                        "--losses rows, trained jointly) and/or true (one row per --fusions value: each modality's model trained "
                        "first and frozen, then the fused classifier)")
    parser.add_argument("--clips-per-class", type=int, default=32, help="as the demo (32)")
    parser.add_argument("--unseen-clips-per-class", type=int, default=0,
                        help="also evaluate on every clip of a second dataset of this many clips per class, of other actors (0: off)")
    parser.add_argument("--work", default="/tmp/actrec-modalities", help="data and run dirs (reused when present)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every run on the shared features (not --encoder trained's CNN stage), e.g. "
                             "--set train.learning_rate=0.002 (repeatable; use its own --work)")
    parser.add_argument("--out", help="default: benchmarks/results/modalities_<encoder>.json")
    args = parser.parse_args()

    work = Path(args.work) / args.encoder
    config, recipe = RECIPES[args.encoder]
    seeds = [int(s) for s in args.seeds.split(",")]
    rates = [float(r) for r in args.rates.split(",")]
    fusions = args.fusions.split(",")
    losses = [float(w) for w in args.losses.split(",")]
    joint = [(fusion, rate, loss, False) for fusion, rate, loss in itertools.product(fusions, rates, losses)]
    staged = [(fusion, 0.0, 0.0, True) for fusion in fusions]
    fusion_rows = {"false": joint, "true": staged}
    if not set(args.unimodal_first.split(",")) <= set(fusion_rows):
        parser.error(f"--unimodal-first: expected false and/or true, got {args.unimodal_first}")
    fusion_rows = [row for value in args.unimodal_first.split(",") for row in fusion_rows[value]]
    rows = []
    for seed in seeds:
        data = work / f"seed{seed}" / "data"
        if not (data / "testlist01.txt").is_file():
            make_actions(data, clips_per_class=args.clips_per_class, seed=seed, progress=False)
        unseen = work / f"seed{seed}" / "unseen" if args.unseen_clips_per_class else None
        if unseen is not None and not (unseen / "testlist01.txt").is_file():
            make_actions(unseen, clips_per_class=args.unseen_clips_per_class, seed=UNSEEN_SEED + seed, progress=False)
        run_overrides = [*recipe, *args.set]  # every run's: the recipe's settings and --set
        if args.encoder == "trained":
            stage1 = work / f"seed{seed}" / "cnn"
            stage1_cfg = load_config("actions_hybrid", [f"data.root={data}", f"seed={seed}", *STAGE1])
            preprocess(stage1_cfg, stage1, progress=False)
            train(stage1_cfg, stage1, progress=False)
            run_overrides.append(f"preprocess.weights={stage1 / FRAME_ENCODER_WEIGHTS}")
        features = work / f"seed{seed}" / "features"
        preprocess(load_config(config, [f"data.root={data}", f"seed={seed}", *run_overrides]), features, progress=False)
        for single in ("video_rnn", "audio_rnn"):  # modality dropout and losses do nothing with one modality: off
            rows.append(train_and_score(config, single, [f"model.name={single}", "train.modality_dropout=0", "train.modality_loss=0",
                                                         "train.unimodal_first=false", *run_overrides], seed, data, features, work, unseen=unseen))
        for fusion, rate, loss, first in fusion_rows:
            how = ["unimodal first"] if first else [f"dropout {rate:g}", *([f"loss {loss:g}"] if loss else [])]
            name = " ".join(["av_fusion", *([fusion] if fusion != "mid" else []), *how])
            rows.append(train_and_score(config, name, [f"model.fusion={fusion}", f"train.modality_dropout={rate}", f"train.modality_loss={loss}",
                                                       f"train.unimodal_first={first}", *run_overrides], seed, data, features, work, DROPS, unseen))
        print(json.dumps(rows[-len(fusion_rows) - 2:]), flush=True)

    def stat(model: str, key: str) -> tuple[float, float] | None:
        values = [r[key] for r in rows if r["model"] == model and key in r]
        return (float(np.mean(values)), float(np.std(values))) if values else None

    models = list(dict.fromkeys(r["model"] for r in rows))
    keys = [f"{where}top1{drop}" for where in ("", "unseen_") for drop in ("", "_no_audio", "_no_video")]
    summary = {m: {k: stat(m, k) for k in keys if stat(m, k)} for m in models}
    on = "unseen_" if args.unseen_clips_per_class else ""  # the goals on the larger set when there is one
    video_only, audio_only = summary["video_rnn"][f"{on}top1"][0], summary["audio_rnn"][f"{on}top1"][0]
    goals = {m: {"audio dropped >= video-only model": s[f"{on}top1_no_audio"][0] >= video_only,
                 "video dropped >= audio-only model": s[f"{on}top1_no_video"][0] >= audio_only}
             for m, s in summary.items() if f"{on}top1_no_audio" in s}

    def cell(value):
        return "" if value is None else f"{value[0]:.3f} ± {value[1]:.3f}"

    shown = keys if on else keys[:3]
    table = [f"| model ({len(seeds)} seeds) | test top-1 | audio dropped | video dropped |"
             + (" other actors: top-1 | audio dropped | video dropped |" if on else ""), "|---|" + "---:|" * len(shown)]
    table += [f"| {m} | " + " | ".join(cell(s.get(k)) for k in shown) + " |" for m, s in summary.items()]
    overrides = "".join(f" --set {o}" for o in args.set)
    text = "\n".join(table) + (f"\n\nconfigs/{config}.yaml (--encoder {args.encoder}{overrides}); {rows[0]['test_clips']} test clips per seed "
                                f"(unseen actors), {args.clips_per_class} clips per class; chance 0.111."
                                + (f" Other actors: {rows[0]['unseen_clips']} clips per seed of a second generated dataset "
                                   f"(--unseen-clips-per-class {args.unseen_clips_per_class}); the goals are decided on them." if on else ""))
    print("\n" + text)
    print(f"goals: {json.dumps(goals)}")
    out = Path(args.out or ROOT / f"benchmarks/results/modalities_{args.encoder}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": config, "overrides": args.set, "rows": rows, "summary": summary, "goals": goals, "seeds": seeds,
                               "clips_per_class": args.clips_per_class, "unseen_clips_per_class": args.unseen_clips_per_class}, indent=2) + "\n")
    out.with_suffix(".md").write_text(text + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
