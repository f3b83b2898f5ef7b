"""`actrec demo`: the main job on the embedded default data, with no network.

    DIR/data/actions   synthetic action clips (UCF101 layout)      <- actrec data actions
    DIR/data/commands  spoken commands (Speech Commands layout)    <- actrec data commands
    DIR/runs/actions_av, DIR/runs/commands  <- actrec preprocess + train (both causal: they stream)
    DIR/runs/*/eval/test/        metrics.json, report.md, plots    <- actrec evaluate
    DIR/runs/actions_av/eval/test-no-audio/, test-no-video/,      <- actrec evaluate --drop audio|video, and the
      stages/{video,audio}_rnn/eval/test/                             single-modality models trained first
    DIR/runs/*/export/           saved_model/, *.tflite, parity.json <- actrec export
    then a few test-split clips (actors/speakers never seen in training) through the exported
    float TFLite file, exactly as `actrec predict --model ...tflite` does, and through `actrec stream`
    (the streamable runs): DIR/stream_commands.wav, test words among background, and DIR/stream_actions_av.mp4,
    one test clip of each action back to back, with their sound.

Every stage is the same function the CLI calls, and each skips work that is already done,
so running the demo twice reuses the finished stages. The run dirs are ordinary: every
`actrec` command accepts them with --run-dir.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pipeline.config import load_config

# --quick: small data and few epochs, for the end-to-end test (minutes, not quality).
QUICK = {
    "clips_per_class": 4,
    "per_word": 12,
    "overrides": ["train.epochs=3", "train.batch_size=8", "export.formats=[saved_model,float,int8]", "export.latency_runs=3",
                  "export.representative_samples=8"],
}
FULL = {"clips_per_class": 32, "per_word": 100, "overrides": []}
RUNS = {"actions_av": "actions", "commands": "commands"}  # run name -> data folder
PREDICT_FILES = 2  # unseen clips per run sent through the exported model


def demo(out: str | Path = "demo", quick: bool = False, seed: int = 0) -> dict:
    """Generate the embedded data, then preprocess, train, evaluate, export and predict; print a summary table.

    Returns {run name: {"test_accuracy", "clips", "export": {format: parity row}, "predictions", "run_dir"}}.
    """
    from data_prep.actions import make_actions
    from data_prep.commands import make_commands
    from pipeline.datasets import first_clip_of_each_class
    from pipeline.kws_metrics import operating_point_summary
    from pipeline.stages.evaluate import evaluate
    from pipeline.stages.export import export
    from pipeline.stages.predict import predict
    from pipeline.stages.preprocess import preprocess
    from pipeline.stages.stream import STREAM_MODELS
    from pipeline.stages.train import train

    out = Path(out)
    plan = QUICK if quick else FULL
    started = time.time()
    results: dict[str, dict] = {}

    _stage("1/7 generate action clips", started)
    actions_root = out / "data" / "actions"
    if not (actions_root / "testlist01.txt").is_file():
        make_actions(actions_root, clips_per_class=plan["clips_per_class"], seed=seed)
    else:
        print(f"  reusing {actions_root}")
    _stage("2/7 generate spoken commands", started)
    make_commands(out / "data" / "commands", per_word=plan["per_word"], seed=seed)

    configs = {name: load_config(name, [f"data.root={out / 'data' / folder}", f"seed={seed}", *plan["overrides"]])
               for name, folder in RUNS.items()}
    run_dirs = {name: out / "runs" / name for name in RUNS}

    for name, cfg in configs.items():
        _stage(f"{3 if name.startswith('actions') else 4}/7 preprocess + train: {name}", started)
        _share_features(configs, run_dirs, name)
        index = preprocess(cfg, run_dirs[name])
        train(cfg, run_dirs[name])
        results[name] = {"clips": index["counts"], "run_dir": str(run_dirs[name])}

    _stage("5/7 evaluate on the test splits (raw clips, the run's own preprocessing)", started)
    for name, run_dir in run_dirs.items():
        metrics = _reuse_or_run(run_dir, "eval/test/metrics.json", lambda run_dir=run_dir: evaluate(run_dir, split="test", name="test"))
        results[name]["test_accuracy"] = metrics["top1"]
        if "frr_at_far" in metrics:  # a keyword spotter: what it costs to keep false accepts rare
            results[name]["keyword_spotting"] = (f"{len(metrics['class_names'])} labels ({', '.join(metrics['class_names'][-2:])} "
                                                 f"included): {operating_point_summary(metrics)} on its test split")
        results[name]["report"] = str(run_dir / "eval" / "test" / "report.md")
        if len(configs[name].preprocess.modalities) == 2:
            results[name]["alone"] = each_modality_alone(run_dir, evaluate)

    _stage("6/7 export: SavedModel + TFLite, with parity on the test split", started)
    for name, run_dir in run_dirs.items():
        results[name]["export"] = _reuse_or_run(run_dir, "export/parity.json", lambda run_dir=run_dir: export(run_dir))

    _stage("7/7 predict unseen clips with the exported float TFLite model", started)
    for name, run_dir in run_dirs.items():
        model_file = run_dir / "export" / "model_float.tflite"
        clips = list(first_clip_of_each_class(configs[name]).values())[:PREDICT_FILES]  # actors / speakers never trained on
        results[name]["predictions"] = predict(run_dir, clips, model=str(model_file), top=3, output="text")
        if (run_dir / "export" / STREAM_MODELS["float"]).is_file() and configs[name].data.kind == "speech":
            results[name]["stream"] = stream_unseen_words(configs[name], run_dir, out / f"stream_{name}.wav", seed)
        elif (run_dir / "export" / STREAM_MODELS["float"]).is_file():
            results[name]["stream"] = stream_unseen_actions(configs[name], run_dir, out / f"stream_{name}.mp4", seed)

    minutes = (time.time() - started) / 60
    print(f"\nactrec demo finished in {minutes:.1f} min")
    print(summary_table(results))
    return results


def each_modality_alone(run_dir: Path, evaluate) -> str:
    """An audio-visual run's test top-1 with one modality removed (`actrec evaluate --drop`), beside the single-modality
    model of the other trained first (train.unimodal_first: RUN/stages/), which it must match."""
    parts = []
    for drop, kept, stage in (("audio", "video", "video_rnn"), ("video", "audio", "audio_rnn")):
        metrics = _reuse_or_run(run_dir, f"eval/test-no-{drop}/metrics.json",
                                lambda drop=drop: evaluate(run_dir, split="test", drop=drop, name=f"test-no-{drop}"))
        text = f"{kept} alone (--drop {drop}) {metrics['top1']:.3f}"
        stage_dir = run_dir / "stages" / stage
        if (stage_dir / "model.keras").is_file():
            alone = _reuse_or_run(stage_dir, "eval/test/metrics.json", lambda stage_dir=stage_dir: evaluate(stage_dir, split="test", name="test"))
            text += f" vs {alone['top1']:.3f} for the {kept}-only model trained first (stages/{stage})"
        parts.append(text)
    return "; ".join(parts)


def stream_unseen_words(cfg, run_dir: Path, wav: Path, seed: int, words: int = 12) -> str:
    """`actrec stream` on a recording of test-split words (unseen speakers) among background: one summary line."""
    import soundfile

    from pipeline.stages.stream import stream
    from pipeline.stream_eval import assemble_stream, keyword_events, score_detections

    waveform, events, seconds = assemble_stream(cfg, seed, max_words=words)
    soundfile.write(wav, waveform, cfg.preprocess.sample_rate, subtype="PCM_16")
    print(f"  {run_dir.name}: actrec stream --run-dir {run_dir} {wav}  ({len(keyword_events(events))} keywords, {seconds:.0f} s)")
    score = score_detections(stream(run_dir, str(wav)), events, seconds)
    return (f"streaming: {score['detected']} of {score['keywords']} keywords detected in {wav.name} ({seconds:.0f} s of unseen "
            f"speakers, other words and background), {score['false_accepts']} false accepts")


def stream_unseen_actions(cfg, run_dir: Path, video: Path, seed: int) -> str:
    """`actrec stream` on a video of one test clip (unseen actors) of each action, back to back (with their sound for an
    audio-visual run): one summary line."""
    from pipeline.stages.stream import stream
    from pipeline.stream_eval import assemble_video, score_detections

    sound = cfg.preprocess.sample_rate if "audio" in cfg.preprocess.modalities and cfg.model.name == "av_fusion" else None
    events, seconds = assemble_video(cfg, video, seed, sample_rate=sound)
    print(f"  {run_dir.name}: actrec stream --run-dir {run_dir} {video}  ({len(events)} actions, {seconds:.0f} s)")
    score = score_detections(stream(run_dir, str(video)), events, seconds, late=1.0)
    return (f"streaming: {score['detected']} of {score['keywords']} actions announced while on screen (or within 1 s) in "
            f"{video.name} ({seconds:.0f} s of unseen actors), {score['false_accepts']} other announcements")


def _share_features(configs: dict, run_dirs: dict, name: str) -> None:
    """Point run `name` at an earlier run's cached features when their preprocessing is the same (no second cache)."""
    from pipeline.config import features_hash

    target = run_dirs[name] / "features"
    for other in configs:
        if other == name:
            return  # only runs preprocessed before this one
        if (features_hash(configs[other]) == features_hash(configs[name]) and configs[other].data.root == configs[name].data.root
                and not target.exists() and (run_dirs[other] / "features" / "index.json").is_file()):
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(Path("..") / other / "features", target_is_directory=True)
            print(f"  {name}: sharing the cached features of {other} (the same preprocessing)")
            return


def summary_table(results: dict) -> str:
    """The demo's closing table: accuracy per run, TFLite size and agreement per format, where the reports are."""
    # keras top-1: `actrec evaluate` on the raw test clips; per format: the .tflite file on the same clips
    lines = [f"{'run':<14} {'train/val/test':>15} {'keras top-1':>11}  {'format':<12} {'size KB':>8} {'agree':>6} {'max|dp|':>8} {'top-1':>6}  report"]
    for name, r in results.items():
        c = r["clips"]
        first = f"{name:<14} {c['train']:>6}/{c['val']:>3}/{c['test']:>4} {r['test_accuracy']:>11.3f}"
        rows = [row for row in _parity_rows(r.get("export", {})) if row["format"] != "saved_model"] or [{}]
        for i, row in enumerate(rows):
            left = first if i == 0 else " " * len(first)
            fmt = (f"  {row['format']:<12} {row['bytes'] / 1024:>8.0f} {row['top1_agreement']:>6.3f} {row['max_abs_diff_prob']:>8.1e} {row['accuracy']:>6.3f}"
                   if row else "  (no export)")
            lines.append(left + fmt + (f"  {r['report']}" if i == 0 else ""))
    lines += [f"{name}: {r['keyword_spotting']}" for name, r in results.items() if r.get("keyword_spotting")]
    lines += [f"{name}: {r['alone']}" for name, r in results.items() if r.get("alone")]
    lines += [f"{name}: {r['stream']}" for name, r in results.items() if r.get("stream")]
    return "\n".join(lines)


def _parity_rows(parity: dict) -> list[dict]:
    """parity.json -> one dict per measured TFLite file: format, bytes, top1_agreement, max_abs_diff_prob."""
    return [{"format": fmt, **row} for fmt, row in parity.get("formats", {}).items() if "top1_agreement" in row]


def _reuse_or_run(run_dir: Path, result_file: str, run) -> dict:
    """The JSON a stage wrote into run_dir when it is newer than model.keras, else run() (which writes it)."""
    path, model = run_dir / result_file, run_dir / "model.keras"
    if path.is_file() and model.is_file() and path.stat().st_mtime >= model.stat().st_mtime:
        print(f"  {run_dir.name}: reusing {path}")
        return json.loads(path.read_text())
    return run()


def _stage(title: str, started: float) -> None:
    print(f"\n== {title} ==  [{time.time() - started:.0f} s]", flush=True)
