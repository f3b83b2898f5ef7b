"""The `actrec` command line: sub-commands parse arguments and call stage functions.

Heavy imports (TensorFlow, OpenCV) happen inside the sub-command that needs them,
so `actrec --help` answers at once. A `UserError` prints one line and exits 2.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path

from pipeline.errors import UserError

WRITE_FAILURES = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}

DESCRIPTION = """\
actrec: recognise actions in video clips and spoken commands in audio with
recurrent networks (bidirectional LSTM/GRU over CNN frame features and MFCCs),
and ship the model to a phone as TFLite.

Typical session on the embedded data:
  actrec data actions --out data/actions          # synthetic action clips (MP4, H.264 + AAC)
  actrec data commands --out data/commands        # spoken commands (espeak-ng and Festival, 16 kHz WAV)
  actrec index data/actions --out manifest.csv    # see what a dataset holds and what is broken
  actrec config show --config configs/actions_av.yaml --set train.epochs=5
"""


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML experiment config (default: built-in defaults; see configs/README.md)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one config key, e.g. --set train.epochs=5 (repeatable; values are YAML)",
    )


def _add_allow_unfinished(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-unfinished", action="store_true",
                   help="use model.keras although its training did not finish (no train_done.json): a crashed or killed run")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="actrec", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    # actrec data ...
    data = sub.add_parser("data", help="generate the embedded datasets (no network needed)", description="Generate the embedded default datasets.")
    data_sub = data.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    actions = data_sub.add_parser(
        "actions", help="synthetic action clips in the UCF101 layout",
        description="Render an articulated figure performing actions, each with its own sound track, as MP4 (H.264 + AAC) "
        "clips in the UCF101 layout: DIR/<Class>/v_<Class>_gGG_cCC.mp4 plus classInd.txt, trainlist01.txt, testlist01.txt. "
        "Groups (actor look + background) never span train and test.",
    )
    actions.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    actions.add_argument("--clips-per-class", type=int, default=8, metavar="N", help="clips per action class (default 8)")
    actions.add_argument("--seed", type=int, default=0, metavar="S", help="seed: the same seed gives the same clips and splits (default 0)")
    actions.add_argument("--with-faults", action="store_true", help="also write broken files a real dataset has (empty, truncated, no audio, not a video, unknown class)")
    actions.add_argument("--workers", type=int, default=2, metavar="N", help="parallel render processes (default 2)")
    commands = data_sub.add_parser(
        "commands", help="spoken commands (espeak-ng and Festival) in the Speech Commands layout",
        description="Speak the 10 Speech Commands words, and other words that are not commands (the `_unknown_` of a "
        "12-label keyword spotter), with many espeak-ng voices, speeds and pitches and Festival's voices (made from recordings "
        "of people), add noise and room colour, and save 1-second 16 kHz WAVs as DIR/<word>/<speaker>_nohash_<n>.wav plus "
        "validation_list.txt and testing_list.txt (split by speaker), and long noise recordings in DIR/_background_noise_/ "
        "(the `_silence_`). Needs espeak-ng, and festival with its festvox voices unless --engines espeak-ng.",
    )
    commands.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    commands.add_argument("--per-word", type=int, default=200, metavar="N", help="utterances per word (default 200: what configs/commands.yaml needs to generalise to unseen speakers)")
    commands.add_argument("--seed", type=int, default=0, metavar="S", help="seed (default 0)")
    commands.add_argument("--workers", type=int, default=2, metavar="N", help="parallel synthesis processes (default 2)")
    commands.add_argument("--aux-per-speaker", type=int, default=8, metavar="N",
                          help="other (non-command) words each speaker says, into their own folders (default 8; 0 = none)")
    commands.add_argument("--background-seconds", type=float, default=60.0, metavar="S",
                          help="seconds of each _background_noise_/ recording (default 60; 0 = none)")
    commands.add_argument("--engines", default="espeak-ng,festival", metavar="LIST",
                          help="synthesisers, comma-separated (default espeak-ng,festival; espeak-ng alone: voices of one "
                          "synthesiser, which unseen voices are recognised worse after)")

    # actrec index
    index = sub.add_parser(
        "index", help="list a dataset's clips, labels, splits and groups in manifest.csv",
        description="Recognise a folder-per-class tree, UCF101-style split files (classInd.txt, trainlistNN.txt) or Speech "
        "Commands lists, probe every file, and write manifest.csv (path relative to DIR, label, split, group). "
        "Files that cannot be used (empty, truncated, not media, unknown label, outside DIR) are listed with the reason.",
    )
    index.add_argument("root", metavar="DIR", help="dataset folder")
    index.add_argument("--out", required=True, metavar="FILE", help="manifest CSV to write")
    index.add_argument("--kind", choices=["video", "speech"], default=None, help="what the clips are (default: guessed from the files)")
    index.add_argument("--layout", choices=["auto", "ucf101", "speech_commands", "folders"], default="auto", help="split layout (default: auto)")
    index.add_argument("--split-id", type=int, default=1, metavar="N", help="official split number for UCF101-style lists (default 1)")
    index.add_argument("--seed", type=int, default=0, metavar="S", help="seed for drawing validation/test groups (default 0)")
    index.add_argument("--keywords", metavar="W,W,...", help="speech: label the rows for a keyword spotter: these words, _unknown_ "
                       "for every other word folder, _silence_ for 1-s windows of DIR/_background_noise_/ (the manifest's start column)")

    # actrec preprocess
    pre = sub.add_parser(
        "preprocess", help="decode clips, sample frames, encode them with a CNN, compute MFCCs, cache TFRecord shards",
        description="Index the dataset named by the config (data.root) or read --manifest, then for every clip: decode "
        "with OpenCV and sample T frames, encode them with the frame CNN (TFLite/XNNPACK by default), read the audio "
        "track and compute MFCCs, and write DIR/features/*.tfrecord + index.json, DIR/config.yaml and "
        "DIR/preprocess_errors.csv (clips skipped and why). Interrupted runs resume where they stopped.",
    )
    _add_config_args(pre)
    pre.add_argument("--run-dir", required=True, metavar="DIR", help="run directory (created)")
    pre.add_argument("--manifest", metavar="FILE", help="use this manifest.csv (from `actrec index`) instead of indexing data.root")
    pre.add_argument("--overwrite", action="store_true", help="redo the features when the run dir holds features of a different config")
    pre.add_argument("--no-progress", action="store_true", help="no progress bar")
    pre.add_argument("--runner", choices=["local", "beam"], default="local",
                     help="local: a process pool on this machine (default); beam: an Apache Beam pipeline (pip install -e .[beam]), "
                     "locally on the DirectRunner or on a cluster with --beam-option runner=DataflowRunner|FlinkRunner|SparkRunner")
    pre.add_argument("--beam-option", dest="beam_options", action="append", default=[], metavar="KEY=VALUE",
                     help="a Beam pipeline option, e.g. --beam-option runner=DataflowRunner --beam-option project=P "
                     "(repeatable; see README 'Scaling out')")

    # actrec train
    tr = sub.add_parser(
        "train", help="train the configured RNN model on a run's cached features",
        description="Train model.name (video_rnn, audio_rnn, av_fusion, hybrid) on DIR/features with gradient clipping, "
        "dropout, L2, masking, a cosine learning rate, early stopping and per-epoch checkpoints. Writes DIR/model.keras, "
        "history.csv, training_curves.png, tensorboard/ (a hybrid run also frame_encoder.weights.h5: its trained CNN, for "
        "preprocess.weights). A killed run resumes when the same command is run again.",
    )
    _add_config_args(tr)
    tr.add_argument("--run-dir", required=True, metavar="DIR", help="run directory holding features/ (from `actrec preprocess`)")
    tr.add_argument("--overwrite", action="store_true", help="retrain when the run dir holds a model trained with another model/train config")
    tr.add_argument("--no-progress", action="store_true", help="one line per epoch instead of progress bars")
    tr.add_argument("--strategy", choices=["default", "mirrored", "multi_worker"],
                    help="tf.distribute strategy (sets train.strategy): mirrored = all local devices, multi_worker = "
                    "one process per machine, cluster from TF_CONFIG (see README 'Scaling out')")

    # actrec evaluate
    ev = sub.add_parser(
        "evaluate", help="score a trained run on raw clips: metrics, confusion matrix, reliability, worst clips",
        description="Run the run's own preprocessing (decode, sample, encode, MFCC) on raw clips or WAVs and score its "
        "model. Writes DIR/eval/<name>/: metrics.json (top-1, top-5, mean class accuracy, macro-F1, per-class "
        "precision/recall/F1, calibration error, skipped clips), report.md, confusion_matrix.png/.csv, per_class.png, "
        "reliability.png. An open-set speech run (classes _silence_/_unknown_) also gets false-reject and false-accept "
        "rates per keyword, the threshold for 1% false accepts and det.png. --views K averages K temporal windows per clip (multi-view testing).",
    )
    ev.add_argument("--run-dir", required=True, metavar="DIR", help="a trained run (model.keras)")
    source = ev.add_mutually_exclusive_group()
    source.add_argument("--data", metavar="DATASET_DIR", help="evaluate another dataset folder (any layout; all or some of the run's classes)")
    source.add_argument("--manifest", metavar="FILE", help="evaluate the clips of a manifest.csv (paths relative to the run's data.root)")
    ev.add_argument("--split", default="test", choices=["train", "val", "test"], help="split to evaluate (default test)")
    ev.add_argument("--views", type=int, default=1, metavar="K", help="temporal windows per clip, scores averaged (default 1)")
    ev.add_argument("--crops", type=int, default=1, choices=[1, 3], help="spatial crops per window: 1 (centre) or 3 (default 1)")
    ev.add_argument("--name", metavar="NAME", help="report folder name under DIR/eval (default: split or data folder, views)")
    ev.add_argument("--model", default="keras", metavar="keras|PATH.tflite",
                    help="keras (DIR/model.keras, default) or an exported .tflite file, run through the TFLite interpreter on raw frames and waveforms")
    ev.add_argument("--drop", choices=["audio", "video"],
                    help="audio-visual runs: score every clip with this modality removed (silence / zero frames, length 0, "
                         "through the same graph) to see what the other one does alone; report folder <name>-no-<modality>")
    ev.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_allow_unfinished(ev)

    # actrec predict
    pr = sub.add_parser(
        "predict", help="top-k labels of new video clips or audio files; timelines of long videos",
        description="Run a trained run's own preprocessing and model on raw files and print one line per file "
        "(`path: label 0.91, label 0.05, ...`; with --threshold, `path: _unknown_ | label 0.42, ...`) or JSON lines. A WAV goes to a speech run, a video to an action run; "
        "folders expand to the media files inside. With --window, a long video is classified in sliding windows "
        "(streamed: memory flat in its length) and a timeline CSV + PNG is written per file. Files that cannot be "
        "used get one line with the reason; the exit status is 1 when any file failed.",
    )
    pr.add_argument("paths", nargs="+", metavar="PATH", help="video clips, audio files, or folders of them")
    pr.add_argument("--run-dir", required=True, metavar="DIR", help="a trained run (model.keras)")
    pr.add_argument("--model", default="keras", metavar="keras|PATH.tflite",
                    help="keras (DIR/model.keras, default) or an exported .tflite file (e.g. DIR/export/model_float.tflite), "
                    "run through the TFLite interpreter on raw frames and waveforms")
    pr.add_argument("--top-k", type=int, default=3, metavar="K", help="labels per file (default 3)")
    pr.add_argument("--threshold", type=float, metavar="P",
                    help="keyword spotting: also print the decided label, which is _unknown_ when the top class is below "
                    "probability P (0 < P < 1; a top _silence_/_unknown_ stays as it is). Works for any run: one trained "
                    "without an _unknown_ class reports _unknown_ too, meaning 'not sure'. `actrec evaluate` on an open-set "
                    "run reports the threshold that gives 1%% false accepts")
    pr.add_argument("--json", action="store_true", help="one JSON object per line instead of text")
    pr.add_argument("--window", type=float, metavar="SECONDS", help="classify sliding windows of this length and write a timeline")
    pr.add_argument("--stride", type=float, metavar="SECONDS", help="seconds between window starts (default: half the window)")
    pr.add_argument("--out", metavar="DIR", help="folder for timelines (default: DIR/predict of the run)")
    pr.add_argument("--verbose", action="store_true", help="also print each file's time split: decode, features, model (ms)")
    _add_allow_unfinished(pr)

    # actrec stream
    st = sub.add_parser(
        "stream", help="keyword (or action) detections on a live or recorded stream, one hop or frame at a time (streamable runs)",
        description="Run a streamable run's RUN/export/model_stream_float.tflite (or _int8) as an app does: one hop of "
        "audio (speech runs) or one frame (causal action runs) per call, its states fed back. For a speech run SOURCE is "
        "a sound or video file played as a stream (as fast as possible, or --realtime), - for raw 16-bit mono PCM at the "
        "model's sample rate on stdin (e.g. `arecord -f S16_LE -r 16000 -c 1 | actrec stream --run-dir RUN -`), or --mic; "
        "for an action run, a video file, its frames taken at the export's frame rate (export.stream_fps), and for an "
        "audio-visual one each frame with its sound (a video without a sound track: its frames alone). Prints one "
        "line per detection, `12.34 s  yes  0.97` (time in seconds of input from its start), after posterior smoothing, "
        "a threshold and a refractory period, so one spoken word fires once and an action once when it starts; for speech, "
        "a keyword is decided in the pause after a word (--pause-db). Memory "
        "stays flat over any length of input.",
    )
    st.add_argument("source", nargs="?", metavar="SOURCE", help="a sound or video file, or - for 16-bit PCM on stdin (speech runs)")
    st.add_argument("--run-dir", required=True, metavar="DIR", help="a streamable run, exported (DIR/export/model_stream_*.tflite)")
    st.add_argument("--model", default="float", choices=["float", "int8"], help="which streaming file (default float)")
    st.add_argument("--mic", action="store_true", help="listen to the default microphone (needs the optional sounddevice package)")
    st.add_argument("--realtime", action="store_true", help="pace a file at the speed of sound, as if it were live")
    st.add_argument("--threshold", type=float, default=0.7, metavar="P", help="smoothed probability a keyword (or action) must reach (default 0.7)")
    st.add_argument("--smoothing", type=float, default=0.2, metavar="SECONDS", help="posterior smoothing window (default 0.2 s)")
    st.add_argument("--refractory", type=float, default=1.0, metavar="SECONDS", help="no second detection within this time (default 1 s)")
    st.add_argument("--pause-db", type=float, default=10.0, metavar="DB", help="speech runs: a keyword counts only in hops at least DB "
                    "quieter than the loudest of the last half second, once a word has ended, not from the first part of a word "
                    "still being said (default 10; 0 counts every hop)")
    st.add_argument("--json", action="store_true", help='one JSON object per detection: {"time": 12.34, "label": "yes", "score": 0.97}')
    st.add_argument("--timeline", metavar="OUT.png", help="also plot every class's probability over time, detections marked")
    st.add_argument("--threads", type=int, default=1, metavar="N", help="interpreter threads (default 1, as a phone's audio thread)")
    st.add_argument("--no-refresh", action="store_true", help="let the model's states run on for the whole stream (default: two "
                    "copies restarted every window, half a window apart, so it never remembers more than it was trained on)")

    # actrec export
    ex = sub.add_parser(
        "export", help="SavedModel and TFLite (float, float16, dynamic, int8) files that take raw frames and waveforms",
        description="Rebuild the trained model as one inference graph (frame encoder, MFCC layer, RNN head; batch 1) and "
        "write DIR/export/: saved_model/, model_float.tflite, model_float16.tflite, model_dynamic.tflite, "
        "model_int8.tflite (calibrated on training clips), head_float.tflite (feature-level runs), labels.txt, "
        "preprocessing.json (inputs and what an app does before calling the model) and parity.json (agreement with "
        "Keras, accuracy and latency on the raw test clips, printed as a table).",
    )
    ex.add_argument("--run-dir", required=True, metavar="DIR", help="a trained run (model.keras)")
    ex.add_argument("--formats", metavar="LIST", help="comma-separated: saved_model,float,float16,dynamic,int8 (default: the run's export.formats)")
    ex.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_allow_unfinished(ex)

    # actrec demo
    dm = sub.add_parser(
        "demo", help="run the main job on the embedded data: generate, preprocess, train, evaluate, export, predict (no network)",
        description="Generate the embedded action clips and spoken commands into DIR/data, then preprocess and train "
        "the audio-visual action model (DIR/runs/actions_av) and the speech model (DIR/runs/commands), evaluate them "
        "on their test splits, export them to SavedModel and TFLite, and predict a few unseen clips with the exported "
        "float TFLite file. Finished stages are reused when run again.",
    )
    dm.add_argument("--out", default="demo", metavar="DIR", help="output folder (default: demo)")
    dm.add_argument("--quick", action="store_true", help="tiny data and 3 epochs: checks the pipeline in a few minutes")
    dm.add_argument("--seed", type=int, default=0, metavar="S", help="seed for data, splits and training (default 0)")

    # actrec config show
    config = sub.add_parser("config", help="inspect configs", description="Inspect experiment configs.")
    config_sub = config.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = config_sub.add_parser("show", help="print the fully resolved config as YAML", description="Print the fully resolved config (defaults, then --config, then --set) as YAML.")
    _add_config_args(show)
    config_sub.add_parser("docs", help="print the config reference (every key, type, default, doc) as Markdown",
                          description="Print configs/README.md: every config key with its type, default and one-line doc.")
    return parser


# ----------------------------------------------------------------------------- handlers


def cmd_data(args: argparse.Namespace) -> int:
    if args.dataset == "actions":
        from data_prep.actions import make_actions

        summary = make_actions(args.out, clips_per_class=args.clips_per_class, seed=args.seed, with_faults=args.with_faults, workers=args.workers)
        print(f"wrote {summary['clips']} clips of {len(summary['classes'])} actions to {summary['root']} "
              f"(train {summary['train']}, test {summary['test']}) in {summary['seconds']:.1f} s")
        for rel, reason in summary.get("faults", {}).items():
            print(f"  fault file: {rel}  ({reason})")
    else:
        from data_prep.commands import make_commands

        summary = make_commands(args.out, per_word=args.per_word, seed=args.seed, workers=args.workers,
                                aux_per_speaker=args.aux_per_speaker, background_seconds=args.background_seconds,
                                engines=tuple(e.strip() for e in args.engines.split(",") if e.strip()))
        counts = ", ".join(f"{k} {v}" for k, v in summary["counts"].items())
        print(f"wrote {summary['files']} utterances of {len(summary['words'])} commands and {len(summary['aux_words'])} other words "
              f"and {len(summary['background'])} background recordings to {summary['root']} ({counts}) in {summary['seconds']:.1f} s")
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    from pipeline.datasets import background_files, index_dataset, keyword_index_rows, write_manifest
    from pipeline.labels import BACKGROUND_NOISE
    from pipeline.media import AUDIO_EXTENSIONS

    root = Path(args.root)
    kind = args.kind
    if kind is None:
        has_audio_files = root.is_dir() and any(p.suffix.lower() in AUDIO_EXTENSIONS for p in root.glob("*/*"))
        kind = "speech" if has_audio_files else "video"
    index = index_dataset(root, kind=kind, layout=args.layout, split_id=args.split_id, seed=args.seed)
    background = background_files(root)
    if args.keywords:
        from pipeline.config import load_config

        keywords = [w.strip() for w in args.keywords.split(",") if w.strip()]
        cfg = load_config(None, ["data.kind=speech", "preprocess.modalities=[audio]", "preprocess.audio_seconds=1.0",
                                 f"data.keywords={keywords}", f"seed={args.seed}"])  # 1-s windows, as Speech Commands
        index.rows, index.classes = keyword_index_rows(index, cfg.data, cfg.preprocess.audio_seconds, args.seed, own_dataset=False)
        index.warnings += [(f"{w}/", "keyword with no folder of clips") for w in keywords if not any(r.label == w for r in index.rows)]
    write_manifest(index.rows, args.out)
    counts = index.counts()
    print(f"{root}: layout {index.layout}, {len(index.classes)} classes, {len(index.rows)} clips "
          f"(train {counts['train']}, val {counts['val']}, test {counts['test']}) -> {args.out}")
    if background:
        print(f"  {BACKGROUND_NOISE}/: {len(background)} background recording(s), not a class"
              + ("" if args.keywords else "; --keywords cuts them into _silence_ windows"))
    for rel, reason in index.problems:
        print(f"  skipped {rel}: {reason}")
    for rel, reason in index.warnings:
        print(f"  warning {rel}: {reason}")
    if index.problems:
        print(f"{len(index.problems)} file(s) skipped, {len(index.warnings)} warning(s)")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from pipeline.config import load_config, markdown_reference, to_yaml
    from pipeline.derived import derived_settings, streaming_blockers

    if args.action == "docs":
        print(markdown_reference(), end="")
    else:
        cfg = load_config(args.config, args.overrides)
        print(to_yaml(cfg), end="")
        print("# derived (follow from the keys above; not settable):")
        for key, value in derived_settings(cfg).items():
            print(f"#   {key}: {str(value).lower() if isinstance(value, bool) else value}")
        for reason in streaming_blockers(cfg):
            print(f"#     not streamable: {reason}")
    return 0


def cmd_preprocess(args: argparse.Namespace) -> int:
    from pipeline.stages.preprocess import preprocess

    preprocess(args.config, args.run_dir, args.overrides, manifest=args.manifest, overwrite=args.overwrite, progress=not args.no_progress,
               runner=args.runner, beam_options=args.beam_options)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from pipeline.stages.train import train

    overrides = args.overrides + ([f"train.strategy={args.strategy}"] if args.strategy else [])
    train(args.config, args.run_dir, overrides, overwrite=args.overwrite, progress=not args.no_progress)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pipeline.stages.demo import demo

    demo(args.out, quick=args.quick, seed=args.seed)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pipeline.stages.evaluate import evaluate

    evaluate(args.run_dir, data=args.data, manifest=args.manifest, split=args.split, views=args.views, crops=args.crops,
             name=args.name, progress=not args.no_progress, model=args.model, allow_unfinished=args.allow_unfinished,
             drop=args.drop)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from pipeline.stages.export import export

    export(args.run_dir, formats=args.formats, progress=not args.no_progress, allow_unfinished=args.allow_unfinished)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from pipeline.stages.predict import predict

    results = predict(args.run_dir, args.paths, model=args.model, top=args.top_k, window=args.window, stride=args.stride,
                      out=args.out, output="json" if args.json else "text", verbose=args.verbose, allow_unfinished=args.allow_unfinished,
                      threshold=args.threshold)
    return 1 if any(r["error"] is not None for r in results) else 0


def cmd_stream(args: argparse.Namespace) -> int:
    from pipeline.stages.stream import stream

    stream(args.run_dir, args.source, model=args.model, mic=args.mic, realtime=args.realtime, threshold=args.threshold,
           smoothing=args.smoothing, refractory=args.refractory, pause_db=args.pause_db, as_json=args.json, timeline=args.timeline, threads=args.threads,
           refresh=not args.no_refresh)
    return 0


HANDLERS = {"stream": cmd_stream, "export": cmd_export, "predict": cmd_predict, "evaluate": cmd_evaluate, "demo": cmd_demo, "data": cmd_data, "index": cmd_index, "config": cmd_config, "preprocess": cmd_preprocess, "train": cmd_train}


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ start-up chatter is not for users
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # nor FFmpeg's ("moov atom not found"): the one-line reason is
    args = build_parser().parse_args(argv)
    try:
        return HANDLERS[args.command](args)
    except UserError as e:
        print(f"actrec: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("actrec: interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # a full disk, a file size limit, a read-only or foreign folder: the user's to fix
        if e.errno not in WRITE_FAILURES:
            raise
        print(f"actrec: error: {e.filename or 'writing'}: {e.strerror}; nothing half-written is kept: free space "
              f"(or fix permissions) and run the same command again to resume", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
