"""Stream stage: a streaming export run on a live or recorded stream, printing detections as they happen.

    speech runs: SOURCE a sound or video file (its audio track, decoded block by block) | "-" (raw 16-bit PCM, mono,
                 at the export's sample rate, on stdin) | --mic (the default microphone, with the optional `sounddevice`
                 package) --hops of H samples-->
    action runs: SOURCE a video file --its frames at the export's frame_rate, RGB, centre-cropped to S x S-->
                 (audio-visual runs: each frame with the hops of its sound up to the next frame; a video without a
                 sound track is streamed from its frames alone, with a one-line warning)
        StreamingClassifier (RUN/export/model_stream_<float|int8>.tflite, states fed back)
        --probabilities [K] per step--> KeywordDetector (smoothing, threshold, refractory; speech: keywords counted
                                        only in hops after a word, PauseGate)
        --> "12.34 s  yes  0.97" per detection: a keyword, or an action starting (one JSON object per line with --json)
        --> --timeline OUT.png: each class's probability over time, detections marked

Memory is flat in the stream's length (blocks of half a second, the states, the smoothing window), except
with --timeline, which keeps every hop's probabilities for the plot (K floats per hop: 2.6 MB per hour at
12 classes and 20 ms hops).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pipeline.errors import UserError
from pipeline.rundir import RunDir
from pipeline.runtime.stream import Detection, KeywordDetector, PauseGate, StreamingClassifier

STDIN = "-"
STREAM_MODELS = {"float": "model_stream_float.tflite", "int8": "model_stream_int8.tflite"}


def stream(run_dir: str | Path, source: str | None, model: str = "float", *, mic: bool = False, realtime: bool = False,
           threshold: float = 0.7, smoothing: float = 0.2, refractory: float = 1.0, pause_db: float = 10.0, as_json: bool = False,
           timeline: str | Path | None = None, threads: int = 1, refresh: bool = True, out=None) -> list[Detection]:
    """Run RUN/export/model_stream_<model>.tflite over `source` and print each detection to `out` (stdout).

    Returns the detections. realtime: pace the hops at the speed of sound (a file played as if live). refresh: restart
    the model's states every window, two copies half a window apart (StreamingClassifier), so it never remembers
    more than it was trained on. pause_db (speech runs): keywords count only in hops this many dB below the loudest
    of the last half second, after a word (PauseGate; 0: in every hop).
    """
    out = out or sys.stdout
    path = stream_model_path(run_dir, model)
    modality = StreamingClassifier.read_preprocessing(path)["stream"].get("modality", "audio")
    if modality != "audio":
        has_audio = check_video_source(source, mic)  # before the interpreter: a wrong source is the one line printed
    classifier = StreamingClassifier(path, threads=threads, refresh=refresh)
    # a keyword said twice fires twice; an action going on fires once, when it starts
    detector = KeywordDetector(classifier.labels, classifier.hop_seconds, threshold, smoothing, refractory, classifier.warmup_seconds,
                               rearm="below" if modality == "audio" else "change")
    gate = PauseGate(classifier.hop_seconds, pause_db) if modality == "audio" else None
    if timeline is not None and Path(timeline).suffix.lower() != ".png":
        raise UserError(f"--timeline {timeline}: the plot is written as PNG; name the file *.png")
    history: list[np.ndarray] | None = [] if timeline is not None else None
    detections: list[Detection] = []
    started = time.monotonic()
    if modality == "av":
        steps = av_steps(source, classifier, has_audio)
    elif modality == "video":
        steps = ((now, (frame,)) for now, frame in video_steps(source, classifier))
    else:
        steps = ((None, (samples,)) for samples in hops(source_blocks(source, mic, classifier.sample_rate), classifier.hop_samples))
    advance = classifier.step_av if modality == "av" else classifier.step
    for hop, (now, newest) in enumerate(steps):
        probabilities = advance(*newest)
        if history is not None:
            history.append(probabilities.astype(np.float16))
        detection = detector.update(probabilities, now, pause=gate.update(newest[0]) if gate is not None else True)
        if detection is not None:
            detections.append(detection)
            print(json.dumps(detection.to_json()) if as_json else str(detection), file=out, flush=True)
        if realtime:  # the next hop arrives when the sound does
            time.sleep(max(0.0, started + (hop + 1) * classifier.hop_seconds - time.monotonic()))
    if history is not None:
        write_timeline(Path(timeline), np.array(history, np.float32), classifier.hop_seconds, classifier.labels, detections)
    return detections


def stream_model_path(run_dir: str | Path, model: str) -> Path:
    """RUN/export/model_stream_<model>.tflite, or a one-line error saying what to run."""
    if model not in STREAM_MODELS:
        raise UserError(f"--model {model}: streaming files are {', '.join(STREAM_MODELS)}")
    run = RunDir(run_dir)
    path = run.export / STREAM_MODELS[model]
    if path.is_file():
        return path
    if run.config_file.is_file():
        from pipeline.config import load_config
        from pipeline.derived import streaming_blockers

        blockers = streaming_blockers(load_config(run.config_file))
        if blockers:
            raise UserError(f"{run_dir}: this run cannot stream: {blockers[0]} (configs/commands.yaml is a streamable recipe)")
    raise UserError(f"{path}: missing; run `actrec export --run-dir {run_dir}` (formats float and int8 write the streaming files)")


def check_video_source(source: str | None, mic: bool) -> bool:
    """A one-line error unless `source` is a file with a video stream; whether it has a sound track too."""
    if mic or source in (None, STDIN):
        raise UserError("this run streams video: give a video file as SOURCE (stdin PCM and --mic are for speech runs)")
    from pipeline.media import MediaError
    from pipeline.media.probe import probe_media

    try:
        info = probe_media(source)
    except MediaError as e:
        raise UserError(f"{source}: {e}") from None
    if not info.has_video:
        raise UserError(f"{source}: no video stream: the file holds only audio (this run classifies actions in video)")
    return info.has_audio


def video_steps(source: str, classifier: StreamingClassifier) -> Iterator[tuple[float, np.ndarray]]:
    """(time in s, RGB frame uint8 [S, S, 3]) of a video file at the export's frame rate: what an action model steps on."""
    from pipeline.media import MediaError
    from pipeline.media.video import stream_frames

    try:
        for _, seconds, frame in stream_frames(source, classifier.frame_size, rate=classifier.frame_rate):
            yield seconds, frame
    except MediaError as e:
        raise UserError(f"{source}: {e}") from None


def av_steps(source: str, classifier: StreamingClassifier, has_audio: bool) -> Iterator[tuple[float, tuple]]:
    """(time in s, (frame, samples)) of a video file and its sound: each frame at the export's frame rate with the
    whole hops of audio that end before the next frame (at most hops_per_step; the rest wait for the next step), then
    the hops after the last frame in steps without one. A video without a sound track: frames only, and a warning."""
    k, hop_seconds = classifier.hops_per_step, classifier.hop_samples / classifier.sample_rate
    if has_audio:
        audio = hops(source_blocks(source, False, classifier.sample_rate), classifier.hop_samples)
    else:
        from pipeline.media.audio import NO_AUDIO_WARNING

        print(f"actrec: warning: {source}: {NO_AUDIO_WARNING}", file=sys.stderr, flush=True)
        audio = iter(())
    pending: list[np.ndarray] = []
    heard = 0  # hops taken from the sound so far

    def take() -> np.ndarray:
        nonlocal pending
        chunk, pending = pending[:k], pending[k:]
        return np.concatenate(chunk) if chunk else np.zeros(0, np.float32)

    for now, frame in video_steps(source, classifier):
        now += classifier.hop_seconds  # the frame's interval ends at the next frame
        while (heard + 1) * hop_seconds <= now + 1e-9 and (samples := next(audio, None)) is not None:
            pending.append(samples)
            heard += 1
        yield now, (frame, take())
    for samples in audio:  # after the last frame: the sound that outlasts the frames, in steps without one
        pending.append(samples)
        heard += 1
        while len(pending) >= k:
            yield heard * hop_seconds, (None, take())
    while pending:
        yield heard * hop_seconds, (None, take())


def source_blocks(source: str | None, mic: bool, sample_rate: int) -> Iterator[np.ndarray]:
    """Blocks of mono float32 samples at sample_rate from a file, stdin PCM or the microphone."""
    if mic:
        if source is not None:
            raise UserError("give a SOURCE or --mic, not both")
        return microphone_blocks(sample_rate)
    if source is None:
        raise UserError("nothing to stream: give a SOURCE (a sound or video file, or - for PCM on stdin) or --mic")
    if source == STDIN:
        return pcm_blocks(sys.stdin.buffer, sample_rate)
    from pipeline.media import MediaError
    from pipeline.media.audio import stream_audio

    def blocks():
        try:
            yield from stream_audio(source, sample_rate)
        except MediaError as e:
            raise UserError(f"{source}: {e}") from None

    return blocks()


def pcm_blocks(stream, sample_rate: int, block_seconds: float = 0.1) -> Iterator[np.ndarray]:
    """Raw little-endian 16-bit mono PCM from a binary stream -> float32 blocks in [-1, 1)."""
    size = 2 * max(1, round(block_seconds * sample_rate))
    carry = b""
    while True:
        data = stream.read(size)
        if not data:
            return
        data = carry + data
        whole = len(data) - len(data) % 2
        carry = data[whole:]
        yield np.frombuffer(data[:whole], "<i2").astype(np.float32) / 32768.0


def microphone_blocks(sample_rate: int, block_seconds: float = 0.1) -> Iterator[np.ndarray]:
    """The default input device through `sounddevice` (optional: pip install sounddevice), until Ctrl-C."""
    try:
        import sounddevice
    except (ImportError, OSError) as e:  # OSError: the package is there but PortAudio is not
        raise UserError(f"--mic needs the sounddevice package and PortAudio (pip install sounddevice; apt-get install "
                        f"libportaudio2): {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    block = max(1, round(block_seconds * sample_rate))
    with sounddevice.InputStream(samplerate=sample_rate, channels=1, dtype="float32", blocksize=block) as mic:
        while True:
            samples, _ = mic.read(block)
            yield samples[:, 0].copy()


def hops(blocks: Iterator[np.ndarray], hop: int) -> Iterator[np.ndarray]:
    """Blocks of any size -> consecutive hops of exactly `hop` samples (a last partial hop is zero-padded)."""
    buffer = np.zeros(0, np.float32)
    for block in blocks:
        buffer = np.concatenate([buffer, block])
        whole = len(buffer) // hop
        for k in range(whole):
            yield buffer[k * hop : (k + 1) * hop]
        buffer = buffer[whole * hop :]
    if len(buffer):
        yield np.pad(buffer, (0, hop - len(buffer)))


def write_timeline(path: Path, probabilities: np.ndarray, hop_seconds: float, labels: list[str], detections: list[Detection]) -> None:
    """PNG: each class's probability per hop over time, the detections marked where they fired."""
    from pipeline.report import new_figure, save_figure

    times = np.arange(1, len(probabilities) + 1) * hop_seconds
    end = float(times[-1]) if len(times) else 1.0
    fig = new_figure(max(8.0, min(40.0, end / 3)), 4)
    ax = fig.add_subplot()
    for k, label in enumerate(labels):
        ax.plot(times, probabilities[:, k], lw=0.8, label=label, ls=":" if label.startswith("_") else "-")
    for d in detections:
        ax.axvline(d.time, color="k", lw=0.5, alpha=0.5)
        ax.text(d.time, 1.02, d.label, rotation=90, fontsize=7, ha="center", va="bottom")
    ax.set(xlabel="time (s)", ylabel="probability", ylim=(0, 1.15), xlim=(0, end), title=f"{len(detections)} detections")
    ax.legend(fontsize=7, ncol=min(6, len(labels)), loc="upper right")
    save_figure(fig, path)
