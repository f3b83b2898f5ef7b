"""Predict stage: a trained run on new raw files -> top-k labels per file, or a timeline for a long video.

    file --runtime.decode_clip (preprocessing's own function)--> frames uint8 [1, T, S, S, 3], MFCC [F, C]
        --the run's frame encoder--> frame_features [1, T, D] --model--> probabilities [K] --> top-k labels

    long video, --window W --stride S (seconds):
        stream_frames: ONE sequential decoding pass; only the T frames each window samples are converted
        and kept, and only until their window is complete (memory flat in video length)
        + the audio track, decoded whole once and sliced per window (float32 at preprocess.sample_rate:
          3.8 MB per minute at 16 kHz, so an hour of sound is ~230 MB; frames are what must not pile up)
        --> per window: the same sampling (T frames spread over the window), audio_arrays, encoder, model
        --> probs [Wn, K] --> <out>/<stem>_timeline.csv and .png (report.write_timeline_csv / plot_timeline)

    --threshold P: a top class (not _silence_/_unknown_) below P is reported as _unknown_ (kws_metrics.decided_labels).

A WAV goes to a speech run, a video to an action run. Every file gets one result; a file that cannot be
used gets its reason instead of labels, and the other files of a batch still get predictions.
"""

from __future__ import annotations

import collections
import contextlib
import json
import math
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import UserError
from pipeline.kws_metrics import decided_labels
from pipeline.media import AUDIO_EXTENSIONS, VIDEO_EXTENSIONS, MediaError
from pipeline.runtime.decode import audio_arrays, decode_clip, silent_audio_arrays
from pipeline.runtime.keras_model import RunModel

MEDIA_EXTENSIONS = VIDEO_EXTENSIONS + AUDIO_EXTENSIONS
WINDOW_BATCH = 16  # windows per model call on a long video (their encoded features only: a few kB each)
TIMELINE_TOP = 5  # classes drawn in the timeline PNG


# ----------------------------------------------------------------------------- inputs


def expand_paths(paths: Iterable[str | Path]) -> list[tuple[Path, str | None]]:
    """(file, None) for every file to predict, or (path, reason) for a path that yields none.

    Folders expand to the media files inside them (recursively, sorted); files are kept as given
    (a non-media file is reported when it is predicted, with the extensions expected). An entry of a folder
    named like media that is not a regular file (a FIFO, a broken link) is kept too, so it gets its line.
    """
    out: list[tuple[Path, str | None]] = []
    for path in map(Path, paths):
        if path.is_dir():
            out += _folder_entries(path) or [(path, f"folder holds no media files ({', '.join(MEDIA_EXTENSIONS)})")]
        else:
            out.append((path, None))
    return out


def _folder_entries(folder: Path) -> list[tuple[Path, str | None]]:
    """(entry, None) for every entry named like media under folder, (sub-folder, reason) for one it cannot list; sorted."""
    found: list[tuple[Path, str | None]] = []

    def unreadable(error: OSError) -> None:  # os.walk (and rglob) would skip it without a word
        found.append((Path(error.filename or folder), f"folder not readable ({error.strerror or error})"))

    for dirpath, dirnames, filenames in os.walk(folder, onerror=unreadable):
        dirnames.sort()
        found += [(Path(dirpath) / name, None) for name in filenames if Path(name).suffix.lower() in MEDIA_EXTENSIONS]
    return sorted(found, key=lambda item: item[0])


# ----------------------------------------------------------------------------- sliding windows


@dataclass(frozen=True)
class SlidingWindows:
    """Windows of `window_s` seconds every `stride_s` seconds over a stream of `rate` units per second
    (video frames, or audio samples); window k covers units [start(k), start(k) + span)."""

    rate: float
    window_s: float
    stride_s: float

    def __post_init__(self):
        if self.stride_s * self.rate < 1:  # windows would start at the same frame or sample again and again
            raise MediaError(f"--stride {self.stride_s:g} s is shorter than one step of this file ({1 / self.rate:.3g} s at {self.rate:g}/s)")

    @property
    def span(self) -> int:
        return max(1, round(self.window_s * self.rate))

    def start(self, k: int) -> int:
        return round(k * self.stride_s * self.rate)

    def count(self, total: int) -> int:
        """Windows that lie wholly inside `total` units."""
        k = 0
        while self.start(k) + self.span <= total:
            k += 1
        return k


@dataclass
class _Window:
    start: int  # first frame of the window
    end: int  # one past its last frame
    sampled: np.ndarray  # int [<= T]: the frames the run's sampling takes from it (absolute indices)


class FrameWindows:
    """Collects the sampled frames of sliding windows from one front-to-back pass over a video.

    keep(index) is handed to stream_frames: called once per decoded frame, in order, it opens the
    windows that start by then and says whether any open window samples that frame. add() stores a
    kept frame and returns the windows that are complete; a frame is dropped as soon as no open
    window needs it, so at most ~T x (window / stride + 1) frames are held, whatever the video length.
    """

    def __init__(self, windows: SlidingWindows, num_frames: int):
        from pipeline.media.video import sample_frame_indices

        self.windows = windows
        self.offsets = sample_frame_indices(windows.span, num_frames, "uniform")[0]  # the run's sampling of one window
        self.num_frames = num_frames
        self.open: collections.deque[_Window] = collections.deque()
        self.next_k = 0
        self.decoded = 0  # frames decoded so far
        self.buffer: dict[int, np.ndarray] = {}  # frame index -> RGB uint8 [S, S, 3]
        self.max_frames_held = 0

    def keep(self, index: int) -> bool:
        self.decoded = index + 1
        while self.windows.start(self.next_k) <= index:
            start = self.windows.start(self.next_k)
            self.open.append(_Window(start, start + self.windows.span, start + self.offsets))
            self.next_k += 1
        return any(index in w.sampled for w in self.open)

    def add(self, index: int, frame: np.ndarray) -> list[tuple[_Window, np.ndarray, int]]:
        self.buffer[index] = frame
        self.max_frames_held = max(self.max_frames_held, len(self.buffer))
        return self.complete()

    def complete(self) -> list[tuple[_Window, np.ndarray, int]]:
        """(window, frames uint8 [T, S, S, 3] zero-padded, valid frames) for every window decoded to its end."""
        done = []
        while self.open and self.open[0].end <= self.decoded:
            window = self.open.popleft()
            present = [self.buffer[i] for i in window.sampled.tolist() if i in self.buffer]
            if present:  # frames OpenCV could not convert are missing; the model masks the padding
                frames = np.zeros((self.num_frames, *present[0].shape), np.uint8)
                frames[: len(present)] = present
                done.append((window, frames, len(present)))
        first_needed = self.open[0].start if self.open else self.windows.start(self.next_k)
        for index in [i for i in self.buffer if i < first_needed]:
            del self.buffer[index]
        return done


# ----------------------------------------------------------------------------- the run


class Predictor:
    """A trained run applied to raw files, one at a time, with the time of each step measured.

    decode:   reading the file: frame decoding, sampling and resizing, audio resampling and MFCC (decode_clip)
    features: the frame CNN on the sampled frames
    model:    the recurrent model on the features
    model="keras" runs DIR/model.keras; a path to an exported .tflite file runs that file through the TFLite
    interpreter on the raw frames and waveform, as an app would: its CNN and MFCC are in the graph, so
    their time counts as model time (features is 0).
    """

    def __init__(self, run_dir: str | Path, model: str = "keras", allow_unfinished: bool = False):
        start = time.perf_counter()
        self.runner = RunModel(run_dir, model=model, allow_unfinished=allow_unfinished)
        self.run_dir = Path(run_dir)
        self.classes = self.runner.classes
        self.cfg = self.runner.clip_cfg
        self.kind = self.cfg.data.kind  # video | speech
        self.ms = {"decode": 0.0, "features": 0.0, "model": 0.0}
        if "audio" in self.cfg.preprocess.modalities:  # librosa's import and first MFCC take seconds: start-up, not a file's time
            audio_arrays(np.zeros(self.cfg.preprocess.sample_rate, np.float32), self.cfg)
        self.startup_ms = (time.perf_counter() - start) * 1e3  # loading; model tracing is added when it happens
        self._warm_sizes: set[int] = set()  # batch sizes the model has been called with
        self.warning: str | None = None  # of the file being classified (a video without sound: media.audio.NO_AUDIO_WARNING)

    # ---- checks

    def check_file(self, path: Path) -> None:
        """Raise MediaError unless `path` is a file this run can classify (by its extension)."""
        from pipeline.media import check_readable

        check_readable(path)
        suffix = path.suffix.lower()
        if suffix not in MEDIA_EXTENSIONS:
            raise MediaError(f"not a media file (expected a video {'/'.join(VIDEO_EXTENSIONS)} or audio {'/'.join(AUDIO_EXTENSIONS)})")
        if self.kind == "speech" and suffix in VIDEO_EXTENSIONS:
            raise MediaError(f"a video, but this run ({self.run_dir.name}) recognises speech in audio files ({', '.join(AUDIO_EXTENSIONS)})")
        if self.kind != "speech" and suffix in AUDIO_EXTENSIONS:
            raise MediaError(f"an audio file, but this run ({self.run_dir.name}) classifies video clips ({', '.join(VIDEO_EXTENSIONS)})")
        if suffix in VIDEO_EXTENSIONS:  # the decoder samples the frames a cut-off copy has left; `actrec index` refuses it
            from pipeline.media.probe import check_not_cut_short

            check_not_cut_short(path)

    def _media_error(self, error: MediaError) -> MediaError:
        if str(error) == "no audio track":
            return MediaError("video has no audio track, and this run's model needs the sound (preprocess.modalities includes audio)")
        return error

    # ---- steps (each adds its time to self.ms)

    def decode(self, path: Path) -> dict:
        """The run's own preprocessing of one file: {'frames': uint8 [1, T, S, S, 3], 'frame_lengths', 'mfcc', ...}."""
        start = time.perf_counter()
        try:
            decoded = decode_clip(path, self.cfg)
            self.warning = decoded.get("warning", self.warning)
            return decoded
        except MediaError as e:
            raise self._media_error(e) from None
        finally:
            self.ms["decode"] += (time.perf_counter() - start) * 1e3

    def features(self, decoded: Sequence[dict]) -> list[dict]:
        """Frames -> frame_features [1, T, D] for a list of decoded clips (one encoder call)."""
        if self.runner.tflite is not None:  # the exported graph holds the frame CNN
            return list(decoded)
        start = time.perf_counter()
        out = self.runner.encoder.encode(decoded)
        self.ms["features"] += (time.perf_counter() - start) * 1e3
        return out

    def model(self, encoded: Sequence[dict]) -> np.ndarray:
        """Encoded clips or windows (one view each) -> probabilities float32 [N, K]."""
        if len(encoded) not in self._warm_sizes:  # a new batch size may trace the model (seconds): start-up, not this file's time
            start = time.perf_counter()
            self._run_model(encoded)
            self.startup_ms += (time.perf_counter() - start) * 1e3
            self._warm_sizes.add(len(encoded))
        start = time.perf_counter()
        probs = self._run_model(encoded)
        self.ms["model"] += (time.perf_counter() - start) * 1e3
        return probs

    def _run_model(self, encoded: Sequence[dict]) -> np.ndarray:
        if self.runner.tflite is not None:  # a batch-1 graph: one clip or window at a time
            return np.concatenate([self.runner.predict_decoded(d) for d in encoded]).astype(np.float32)
        inputs = [self.runner.model_inputs(a) for a in encoded]
        batch = {name: np.concatenate([x[name] for x in inputs]) for name in inputs[0]}
        # predict_on_batch, not predict: predict builds a tf.data pipeline per call (~0.4 s against ~30 ms here)
        return np.asarray(self.runner.model.predict_on_batch(batch), np.float32)

    def reset_times(self) -> dict:
        times, self.ms = self.ms, {k: 0.0 for k in self.ms}
        return {k: round(v, 1) for k, v in times.items()}

    # ---- one file

    def classify(self, path: Path) -> np.ndarray:
        """probabilities float32 [K] of one whole clip or WAV: the mean over its views (multi_clip windows), as evaluate."""
        return self.model(self.features([self.decode(path)])).mean(axis=0)

    def timeline(self, path: Path, window_s: float, stride_s: float) -> dict:
        """Sliding windows over one file: {'starts', 'ends': float [Wn] seconds, 'probs': float32 [Wn, K],
        'max_frames_held': int}. A file shorter than one window is classified whole, as one window."""
        from pipeline.media.audio import NO_AUDIO_WARNING, load_audio
        from pipeline.media.video import count_frames

        p = self.cfg.preprocess
        start = time.perf_counter()
        ms_before = self.ms["features"] + self.ms["model"] + self.startup_ms
        try:
            waveform = None
            if "audio" in p.modalities:  # an audio-visual run classifies a video without sound from its frames
                waveform = load_audio(path, p.sample_rate, absent_ok="video" in p.modalities)
                if waveform.size == 0:
                    self.warning = NO_AUDIO_WARNING
            if "video" in p.modalities:
                fps = count_frames(path)[1] or 25.0  # stream_frames' convention for a container without a rate
                frames = FrameWindows(SlidingWindows(fps, window_s, stride_s), p.num_frames)
                windows = self._video_windows(path, frames, waveform)
            else:
                frames = None
                windows = self._audio_windows(waveform, SlidingWindows(p.sample_rate, window_s, stride_s))
            starts, ends, probs, pending = [], [], [], []
            # Keras: one model call per WINDOW_BATCH windows; the .tflite graph takes one window at a time, raw frames
            # and all, so waiting windows would only hold frames.
            batch = 1 if self.runner.tflite is not None else WINDOW_BATCH
            for t0, t1, decoded in windows:
                pending += self.features([decoded])
                starts.append(t0)
                ends.append(t1)
                if frames is not None:  # the hybrid model takes raw frames: those waiting for it count too (<= T x WINDOW_BATCH)
                    waiting = sum(len(e["frames"][0]) for e in pending if "frames" in e)
                    frames.max_frames_held = max(frames.max_frames_held, len(frames.buffer) + waiting)
                if len(pending) == batch:
                    probs.append(self.model(pending))
                    pending = []
            if pending:
                probs.append(self.model(pending))
        except MediaError as e:
            raise self._media_error(e) from None
        # decode = everything but the encoder, the model and its tracing (streaming interleaves them)
        self.ms["decode"] += (time.perf_counter() - start) * 1e3 - (self.ms["features"] + self.ms["model"] + self.startup_ms - ms_before)
        max_held = frames.max_frames_held if frames is not None else 0
        if not starts:  # shorter than one window: the whole file is the one window
            duration = frames.decoded / frames.windows.rate if frames is not None else len(waveform) / p.sample_rate
            return {"starts": np.array([0.0]), "ends": np.array([duration]), "probs": self.classify(path)[None], "max_frames_held": max_held}
        return {"starts": np.array(starts), "ends": np.array(ends), "probs": np.concatenate(probs), "max_frames_held": max_held}

    def _window_audio(self, waveform: np.ndarray | None, t0: float, t1: float) -> dict:
        """The sound of [t0, t1) seconds with the clip's own audio recipe ({} for a video-only run)."""
        if waveform is None:
            return {}
        if waveform.size == 0:  # no sound track at all: audio absent (zero length), not a silent window
            return silent_audio_arrays(self.cfg)
        rate = self.cfg.preprocess.sample_rate
        sound = waveform[round(t0 * rate) : round(t1 * rate)]
        if sound.size == 0:  # the sound track ended before the pictures: this window is silent
            sound = np.zeros(round((t1 - t0) * rate), np.float32)
        return audio_arrays(sound, self.cfg)

    def _video_windows(self, path: Path, frames: FrameWindows, waveform: np.ndarray | None) -> Iterator[tuple[float, float, dict]]:
        """(start s, end s, decoded window) as the stream completes each window: frames uint8 [1, T, S, S, 3]."""
        from pipeline.media.video import stream_frames

        fps = frames.windows.rate

        def decoded(done):
            for window, clip, length in done:
                t0, t1 = window.start / fps, window.end / fps
                yield t0, t1, {"frames": clip[None], "frame_lengths": np.array([length], np.int32), **self._window_audio(waveform, t0, t1)}

        for index, _, frame in stream_frames(path, self.cfg.preprocess.image_size, keep=frames.keep):
            yield from decoded(frames.add(index, frame))
        yield from decoded(frames.complete())

    def _audio_windows(self, waveform: np.ndarray, windows: SlidingWindows) -> Iterator[tuple[float, float, dict]]:
        """(start s, end s, decoded window) for every window wholly inside the recording."""
        for k in range(windows.count(len(waveform))):
            t0, t1 = windows.start(k) / windows.rate, (windows.start(k) + windows.span) / windows.rate
            yield t0, t1, self._window_audio(waveform, t0, t1)


# ----------------------------------------------------------------------------- the stage


def top_k(probs: np.ndarray, classes: Sequence[str], k: int) -> list[dict]:
    """[{'label', 'prob'}] of the k most probable classes (stable: ties favour the lower class index)."""
    order = np.argsort(-np.asarray(probs), kind="stable")[:k]
    return [{"label": classes[i], "prob": round(float(probs[i]), 6)} for i in order]


def iter_predict(
    run_dir: str | Path,
    paths: Iterable[str | Path],
    model: str = "keras",
    top: int = 3,
    window: float | None = None,
    stride: float | None = None,
    out: str | Path | None = None,
    allow_unfinished: bool = False,
    threshold: float | None = None,
) -> Iterator[dict]:
    """Yield one result per file, as soon as it is done (see `predict`)."""
    from pipeline.report import plot_timeline, write_timeline_csv

    if top < 1:
        raise UserError(f"--top-k must be >= 1 (got {top})")
    if threshold is not None and not 0 < threshold < 1:
        raise UserError(f"--threshold must be a probability between 0 and 1, both excluded (got {threshold})")
    if stride is not None and window is None:
        raise UserError("--stride needs --window (the window length in seconds)")
    if window is not None:
        stride = window / 2 if stride is None else stride
        if not (0 < window < math.inf and 0 < stride < math.inf):
            raise UserError(f"--window and --stride must be finite and > 0 seconds (got {window} and {stride})")
    files = expand_paths(paths)
    predictor = Predictor(run_dir, model, allow_unfinished)
    out_dir = Path(out) if out is not None else predictor.runner.run.predictions
    used_names: set[str] = set()
    # Timelines written into RUN/predict are a write to the run dir: one writer at a time (RunDir.lock)
    writes_run_dir = window is not None and out is None
    with predictor.runner.run.lock("predict --window") if writes_run_dir else contextlib.nullcontext():
        for path, reason in files:
            result: dict = {"path": str(path), "error": reason, "top": None, "probs": None}
            predictor.warning = None
            if reason is None:
                try:
                    predictor.check_file(path)
                    if window is None:
                        probs = predictor.classify(path)
                    else:
                        timeline = predictor.timeline(path, window, stride)
                        probs = timeline["probs"].mean(axis=0)
                        name = _unique(f"{path.stem}_timeline", used_names)
                        csv_file, png_file = out_dir / f"{name}.csv", out_dir / f"{name}.png"
                        window_labels = None if threshold is None else decided_labels(timeline["probs"], predictor.classes, threshold)
                        write_timeline_csv(csv_file, timeline["starts"], timeline["ends"], timeline["probs"], predictor.classes, window_labels)
                        plot_timeline((timeline["starts"] + timeline["ends"]) / 2, timeline["probs"], predictor.classes, png_file,
                                      top=min(TIMELINE_TOP, len(predictor.classes)), title=f"{path.name}: {window:g} s windows every {stride:g} s")
                        result["windows"] = len(timeline["starts"])
                        result["window_probs"] = timeline["probs"]
                        result["max_frames_held"] = timeline["max_frames_held"]
                        result["timeline_csv"], result["timeline_png"] = str(csv_file), str(png_file)
                        if window_labels is not None:
                            result["window_labels"] = window_labels
                    if threshold is not None:
                        result["label"] = decided_labels(probs[None], predictor.classes, threshold)[0]
                        result["threshold"] = threshold
                    result["top"] = top_k(probs, predictor.classes, top)
                    result["probs"] = probs
                except MediaError as e:
                    result["error"] = str(e)
            result["ms"] = predictor.reset_times()
            if predictor.warning is not None and result["error"] is None:
                result["warning"] = predictor.warning
            yield result


def _unique(name: str, used: set[str]) -> str:
    """name, or name-2, name-3, ... so two inputs with the same file name do not overwrite each other's timeline."""
    candidate, n = name, 1
    while candidate in used:
        n += 1
        candidate = f"{name}-{n}"
    used.add(candidate)
    return candidate


def predict(
    run_dir: str | Path,
    paths: Iterable[str | Path],
    model: str = "keras",
    top: int = 3,
    window: float | None = None,
    stride: float | None = None,
    out: str | Path | None = None,
    output: str | None = None,
    verbose: bool = False,
    allow_unfinished: bool = False,
    threshold: float | None = None,
) -> list[dict]:
    """Classify raw video clips or audio files with a trained run; one result per file.

    paths: files, or folders (their media files, recursively). A result is a dict:
        path, error (None, or the one-line reason the file could not be used), warning (only when there is one:
        a video without sound, classified from its frames by an audio-visual run),
        top: [{'label', 'prob'}] the `top` most probable classes, probs: float32 [K] (both None on error),
        ms: {'decode', 'features', 'model'} milliseconds;
    with `window` (seconds) and `stride` (default window / 2), a long video is classified in sliding
    windows (top/probs are then the mean over windows) and also gets windows, window_probs float32 [Wn, K],
    max_frames_held, timeline_csv, timeline_png (written to `out`, default RUN/predict/).
    allow_unfinished: use model.keras even though its training did not finish.
    threshold (0 < P < 1): adds label, the keyword-spotting decision (kws_metrics.decided_labels): the top class,
    or `_unknown_` when that is a keyword below P (in a run without an `_unknown_` class too), and threshold;
    with `window`, also window_labels [Wn] (and a label column in the timeline CSV).
    output: None (silent), "text" (one line per file) or "json" (JSON lines), printed as files finish,
    then a summary line (on stderr for JSON, so stdout stays JSON lines).
    """
    import sys

    results = []
    for result in iter_predict(run_dir, paths, model, top, window, stride, out, allow_unfinished, threshold):
        results.append(result)
        if output is not None and "warning" in result:
            print(f"warning: {result['path']}: {result['warning']}", file=sys.stderr, flush=True)
        if output is not None:
            print(format_result(result, json_lines=output == "json", verbose=verbose), flush=True)
    if output is not None:
        failed = sum(r["error"] is not None for r in results)
        print(f"predict: {len(results)} file(s), {len(results) - failed} predicted, {failed} failed",
              file=sys.stderr if output == "json" else sys.stdout)
    return results


def format_result(result: dict, json_lines: bool = False, verbose: bool = False) -> str:
    """One line: `path: label1 0.91, label2 0.05, label3 0.02`, `path: error: reason`, or a JSON object.

    With a threshold, the decided label leads: `path: _unknown_ | yes 0.42, no 0.30, _silence_ 0.10`, and a
    timeline counts its windows' labels: `path: 3 window(s) [yes 2, _unknown_ 1], mean yes | yes 0.61, ... -> ...`.
    """
    if json_lines:
        keys = (("path", "error", "warning", "label", "threshold", "top", "windows", "window_labels", "timeline_csv", "timeline_png")
                + (("ms",) if verbose else ()))
        return json.dumps({k: result[k] for k in keys if result.get(k) is not None})
    if result["error"] is not None:
        return f"{result['path']}: error: {result['error']}"
    labels = ", ".join(f"{t['label']} {t['prob']:.2f}" for t in result["top"])
    if "label" in result:
        labels = f"{result['label']} | {labels}"
    line = f"{result['path']}: {labels}"
    if "windows" in result:
        counts = ""
        if "window_labels" in result:
            counts = " [" + ", ".join(f"{label} {n}" for label, n in collections.Counter(result["window_labels"]).most_common()) + "]"
        line = (f"{result['path']}: {result['windows']} window(s){counts}, mean {labels} -> "
                f"{result['timeline_csv']}, {Path(result['timeline_png']).name}")
    if verbose:
        ms = result["ms"]
        line += f"  [decode {ms['decode']:.0f} ms, features {ms['features']:.0f} ms, model {ms['model']:.0f} ms]"
    return line
