"""Running a streaming export as an app does: one hop of audio (or one frame) per call, the states fed back; detections.

    audio stream (file, stdin PCM, microphone), mono at the export's sample_rate
        --hops of H samples (preprocessing.json "stream".hop_samples)-->
    StreamingClassifier.step(samples [H]) --model_stream_*.tflite `step`, states in and out--> probabilities [K]
        --KeywordDetector.update (posterior smoothing over a window, threshold, refractory period)--> Detection | None

    video stream (file, camera), frames sampled at the export's frame_rate, RGB, centre-cropped to S x S
    StreamingClassifier.step(frame uint8 [S, S, 3]) --the same `step`--> probabilities [K] --the same detector-->

    audio-visual stream (a video file and its sound): per frame, the frame and the hops since the frame before
    StreamingClassifier.step_av(frame uint8 [S, S, 3] | None, samples float32 [n H], n <= hops_per_step) --> [K] -->

kws_streaming's post-processing: the mean of the last `smoothing` seconds of probabilities per class; a
keyword fires when its smoothed probability reaches `threshold`, no keyword fired in the last `refractory`
seconds, and it is armed: a keyword that fired re-arms only once its smoothed probability has fallen below the
threshold. A causal model keeps a word's probability up for a while after the word (it was trained on windows
that contain the word anywhere), so one spoken word fires once. With a PauseGate (speech), a hop's keyword
probabilities count only when the sound has fallen `drop_db` below its loudest of the last half second: a keyword
is decided once a word has ended, not from the first part of a word still being said ("ye" of "yellow").
`_silence_` and `_unknown_` never fire. For an action model a detection is the start of an action: it fires again
only once another action has fired.

Like pipeline.runtime.tflite this imports no TensorFlow: LiteRT and numpy are all a device needs.
Memory is constant in the stream's length: the states and a smoothing window of hops.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import UserError
from pipeline.labels import REJECT_LABELS
from pipeline.runtime.tflite import AUDIO_HOPS, FRAME, FRAME_VALID, OUTPUT, SAMPLES, STREAM_SIGNATURE, load_interpreter


class StreamingClassifier:
    """A model_stream_*.tflite file (LiteRT), with the states an app keeps between calls.

    StreamingClassifier(path, threads=1, refresh=False) reads preprocessing.json and labels.txt beside the file.
    step(samples float32 [H] | frame uint8 [S, S, 3]) -> probabilities float32 [K] for "now"; reset() zeroes every state.
    step_av(frame uint8 [S, S, 3] | None, samples float32 [n H]): an audio-visual step (n from 0 to hops_per_step).
    run(waveform float32 [N] | frames uint8 [T, S, S, 3]) -> probabilities [steps, K], one row per hop (a last partial
    hop is dropped) or frame.
    run_clip(clip_inputs dict) -> the probabilities after the clip's last step: its waveform, or its valid frames, or
    (audio-visual) both, each frame with its share of the hops (clip_feeds).

    refresh=True bounds what the model remembers to what it was trained on (one window, W hops): two copies of the
    states run side by side, each restarted from zeros every W hops, half a window apart, and the answer comes from
    the copy that has heard between W/2 and W hops. Without it the states run on for the whole stream, longer than
    any training example (measured in docs/streaming.md). Twice the calls per hop.
    """

    def __init__(self, path: str | Path, threads: int = 1, refresh: bool = False):
        self.path = Path(path)
        preprocessing = self.read_preprocessing(self.path)
        self.spec = preprocessing["stream"]
        self.labels = (self.path.parent / preprocessing["labels_file"]).read_text().splitlines()
        self.modality = self.spec.get("modality", "audio")
        step_inputs = self.spec.get("step_inputs", [self.spec.get("input", SAMPLES)])
        self.input = next(s for s in self.spec["inputs"] if s["name"] == step_inputs[0])
        self.hop_samples = int(self.spec.get("hop_samples", 0))  # audio
        self.sample_rate = int(self.spec.get("sample_rate", 0))
        self.frame_size, self.frame_rate = int(self.spec.get("frame_size", 0)), float(self.spec.get("frame_rate", 0))  # video
        self.hops_per_step = int(self.spec.get("hops_per_step", 0))  # audio-visual
        self.states = {s["name"]: s for s in self.spec["inputs"] if s["name"] not in step_inputs}
        self.refresh = refresh
        self.window_hops = int(self.spec["window_hops"])
        try:
            self.runner = load_interpreter(self.path, threads).get_signature_runner(STREAM_SIGNATURE)
        except (ValueError, RuntimeError) as e:
            raise UserError(f"{self.path}: not a streaming TFLite model `actrec export` wrote ({str(e).splitlines()[0][:120]})") from None
        self.reset()

    @staticmethod
    def read_preprocessing(path: Path) -> dict:
        """The preprocessing.json beside a streaming file (with its "stream" entry), or a one-line error."""
        meta_file = path.parent / "preprocessing.json"
        if not path.is_file():
            raise UserError(f"{path}: no such file; `actrec export` of a streamable run writes RUN/export/model_stream_*.tflite")
        if not meta_file.is_file():
            raise UserError(f"{meta_file}: missing; the .tflite file must sit beside the preprocessing.json `actrec export` wrote")
        preprocessing = json.loads(meta_file.read_text())
        if "stream" not in preprocessing:
            raise UserError(f"{path.parent}: not the export of a streamable run (preprocessing.json has no 'stream' entry)")
        return preprocessing

    @property
    def hop_seconds(self) -> float:
        """Seconds of input per step: a hop of audio, or one frame's interval."""
        return float(self.spec["hop_seconds"])

    @property
    def warmup_seconds(self) -> float:
        """Half a window: before it, the states have heard less of the stream than the model ever answered from
        (training clips are answered after a whole window; refresh answers after half to one window)."""
        return self.window_hops // 2 * self.hop_seconds

    def zero_states(self) -> dict[str, np.ndarray]:
        return {name: np.zeros(s["shape"], s["dtype"]) for name, s in self.states.items()}

    def reset(self) -> None:
        """Back to the start of a stream: every state zero."""
        self._copies = [self.zero_states(), self.zero_states()]  # the second one runs only with refresh
        self._hops = 0

    def _call(self, feed: dict, copy: int) -> np.ndarray:
        out = self.runner(**feed, **self._copies[copy])
        self._copies[copy] = {name: out[name] for name in self.states}
        return out[OUTPUT][0]

    def step(self, newest: np.ndarray) -> np.ndarray:
        """One step: a hop of samples (float32 [H]) or one frame (uint8 [S, S, 3]) -> probabilities [K]."""
        if self.modality == "av":
            raise UserError(f"{self.path.name}: an audio-visual step takes a frame and its hops: call step_av")
        shape = tuple(self.input["shape"])
        newest = np.asarray(newest)
        if newest.size != int(np.prod(shape)) or (self.modality == "video" and newest.shape[-3:] != shape[1:]):
            what = f"a hop is {self.hop_samples} samples" if self.modality == "audio" else f"a frame is {'x'.join(map(str, shape[1:]))}"
            raise UserError(f"{self.path.name}: {what}, got an array of shape {newest.shape}")
        return self.feed({self.input["name"]: newest.reshape(shape).astype(self.input["dtype"])})

    def step_av(self, frame: np.ndarray | None, samples: np.ndarray) -> np.ndarray:
        """One audio-visual step: the newest frame (uint8 [S, S, 3], None when this step has none) and the hops of
        audio since the last step (float32 [n H], n from 0, no sound, to hops_per_step; the sound's end may cut the last
        one short) -> probabilities [K]."""
        shape = tuple(self.input["shape"][1:])
        samples = np.asarray(samples, np.float32).reshape(-1)
        if frame is not None and np.shape(frame) != shape:
            raise UserError(f"{self.path.name}: a frame is {'x'.join(map(str, shape))}, got an array of shape {np.shape(frame)}")
        if len(samples) > self.hops_per_step * self.hop_samples:
            raise UserError(f"{self.path.name}: a step takes at most {self.hops_per_step} hops of {self.hop_samples} samples; "
                            f"got {len(samples)} samples")
        return self.feed(av_feed(frame, samples, shape, self.hop_samples, self.hops_per_step))

    def feed(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        """One step of the newest inputs (each with its batch axis, by name) -> probabilities [K]; the states kept."""
        k, self._hops = self._hops, self._hops + 1
        if not self.refresh:
            return self._call(feed, 0)
        window, half = self.window_hops, self.window_hops // 2
        for copy, offset in ((0, 0), (1, half)):
            if k >= offset and (k - offset) % window == 0 and k > 0:
                self._copies[copy] = self.zero_states()
        first = self._call(feed, 0)
        if k < half:  # only the first copy has started
            return first
        second = self._call(feed, 1)
        return first if k % window >= half else second

    def run(self, stream: np.ndarray) -> np.ndarray:
        """A waveform [N] in hops, or frames [T, S, S, 3] one by one -> probabilities [steps, K]."""
        steps = list(stream) if self.modality == "video" else whole_hops(stream, self.hop_samples)
        return np.stack([self.step(x) for x in steps]) if steps else np.zeros((0, len(self.labels)), np.float32)

    def run_clip(self, inputs: dict) -> np.ndarray:
        """The whole-clip model's inputs (runtime.tflite.clip_inputs: waveform, or frames and frame_lengths) streamed
        from zero states -> the probabilities [K] after the last step, what the whole-clip model answers."""
        self.reset()
        return [self.feed(feed) for feed in clip_feeds(inputs, self.modality, self.hop_samples, self.hops_per_step)][-1]


def whole_hops(waveform: np.ndarray, hop_samples: int) -> list[np.ndarray]:
    """waveform [N] -> its N // H consecutive hops of H samples (a last partial hop is dropped)."""
    return [waveform[k * hop_samples : (k + 1) * hop_samples] for k in range(len(waveform) // hop_samples)]


def clip_steps(clip: dict, modality: str, hop_samples: int | None) -> list[np.ndarray]:
    """A whole clip's inputs (runtime.tflite.clip_inputs: waveform, or frames and frame_lengths) as a stream's newest
    inputs, one per step: the waveform's whole hops (audio), or the valid frames one by one (video)."""
    if modality == "video":
        return list(clip["frames"][: int(clip["frame_lengths"])])
    return whole_hops(clip["waveform"], hop_samples)


def clip_feeds(clip: dict, modality: str, hop_samples: int | None, hops_per_step: int | None = None) -> list[dict[str, np.ndarray]]:
    """A whole clip's inputs (runtime.tflite.clip_inputs) as the streaming step's newest inputs, one dict per step, each
    array with its batch axis: {samples [1, H]} or {frame [1, S, S, 3]} (clip_steps), or an audio-visual clip's frames,
    each with the hops that fall before the next one (interleave; sound that ends inside its last hop gives a
    fractional audio_hops, and the step masks the frames past the end, as the whole-clip model does)."""
    if modality != "av":
        name = FRAME if modality == "video" else SAMPLES
        return [{name: newest[None]} for newest in clip_steps(clip, modality, hop_samples)]
    frames = clip["frames"][: int(clip["frame_lengths"])]
    valid = int(clip["num_samples"])
    num_hops = -(-valid // hop_samples)
    waveform = clip["waveform"][:valid]
    return [av_feed(None if j is None else frames[j], waveform[first * hop_samples : end * hop_samples], clip["frames"].shape[1:],
                    hop_samples, hops_per_step)
            for j, first, end in interleave(len(frames), num_hops, hops_per_step)]


def av_feed(frame: np.ndarray | None, samples: np.ndarray, frame_shape: tuple, hop_samples: int, hops_per_step: int) -> dict[str, np.ndarray]:
    """An audio-visual step's inputs: {frame [1, S, S, 3] uint8, frame_valid [1, 1], samples [1, k H] (the given
    samples first, zeros after), audio_hops [1, 1]} from a frame (None: none this step) and up to k H samples (n whole
    hops; sound that ends inside the last one gives a fraction, which the step reads as its end)."""
    padded = np.zeros((1, hops_per_step * hop_samples), np.float32)
    padded[0, : len(samples)] = samples
    return {FRAME: (np.zeros(frame_shape, np.uint8) if frame is None else np.asarray(frame, np.uint8))[None],
            FRAME_VALID: np.full((1, 1), float(frame is not None), np.float32), SAMPLES: padded,
            AUDIO_HOPS: np.full((1, 1), len(samples) / hop_samples, np.float32)}


def interleave(num_frames: int, num_hops: int, hops_per_step: int) -> list[tuple[int | None, int, int]]:
    """An audio-visual clip's steps: (frame index or None, first hop, end hop) per step, each frame with the hops that
    fall between it and the next one in proportion (at most hops_per_step per step; what does not fit follows in
    steps without a frame). Each branch sees its own inputs in order, so any such interleaving streams the clip exactly.
    """
    if hops_per_step < 1:
        raise ValueError(f"hops_per_step must be at least 1, got {hops_per_step}")
    steps, done = [], 0
    for j in range(num_frames):
        end = min(num_hops * (j + 1) // num_frames, done + hops_per_step)
        steps.append((j, done, end))
        done = end
    while done < num_hops:
        end = min(done + hops_per_step, num_hops)
        steps.append((None, done, end))
        done = end
    return steps


# ----------------------------------------------------------------------------- detections


@dataclass(frozen=True)
class Detection:
    time: float  # seconds of input from the stream's start, at the end of the hop that fired
    label: str
    score: float  # the smoothed probability that crossed the threshold

    def to_json(self) -> dict:
        return {"time": round(self.time, 3), "label": self.label, "score": round(self.score, 4)}

    def __str__(self) -> str:
        return f"{self.time:8.2f} s  {self.label}  {self.score:.2f}"


class PauseGate:
    """Whether each hop of sound comes after a word: its level at least `drop_db` below the loudest hop of the last
    `window` seconds (this hop included).

    PauseGate(hop_seconds, drop_db=10.0, window=0.5); update(samples float32 [H]) -> bool, once per hop in stream
    order. Levels are relative, so the gate opens after words in a loud room as in a quiet one; in a steady sound
    (silence, constant noise) it stays shut, and so do the keywords. drop_db 0: always open (no gate).
    """

    def __init__(self, hop_seconds: float, drop_db: float = 10.0, window: float = 0.5):
        if not 0.0 <= drop_db < 200.0:
            raise UserError(f"pause drop must be in [0, 200) dB; got {drop_db}")
        self.drop_db = float(drop_db)
        self.levels: deque = deque(maxlen=max(1, round(window / hop_seconds)))

    def update(self, samples: np.ndarray) -> bool:
        level = 10.0 * np.log10(float(np.mean(np.square(samples, dtype=np.float64))) + 1e-12)  # dB of full scale
        self.levels.append(level)
        return self.drop_db == 0.0 or level <= max(self.levels) - self.drop_db


class KeywordDetector:
    """Posterior smoothing, a threshold and a refractory period over a stream of per-hop probabilities.

    KeywordDetector(labels, hop_seconds, threshold=0.7, smoothing=0.2, refractory=1.0, warmup=0.0, rearm="below")
    update(probabilities [K], now=None, pause=True) -> Detection | None, called once per hop in stream order. Nothing
    fires in the first `warmup` seconds of the stream (StreamingClassifier.warmup_seconds: the model has not heard
    enough yet). pause=False (PauseGate: a word is still being said) smooths the hop's keyword probabilities as 0.
    rearm: when a label that fired may fire again: "below", once its smoothed probability has fallen below the
    threshold (a keyword said twice); "change", once another label has fired (an action goes on for a while, and a
    dip of its probability is not a new action).
    """

    def __init__(self, labels: list[str], hop_seconds: float, threshold: float = 0.7, smoothing: float = 0.2, refractory: float = 1.0,
                 warmup: float = 0.0, rearm: str = "below"):
        if rearm not in ("below", "change"):
            raise ValueError(f"rearm must be 'below' or 'change', got {rearm!r}")
        self.rearm = rearm
        if not 0.0 < threshold <= 1.0:
            raise UserError(f"detection threshold must be in (0, 1]; got {threshold}")
        if smoothing < 0 or refractory < 0 or warmup < 0:
            raise UserError(f"smoothing, refractory and warmup must be >= 0 seconds; got {smoothing}, {refractory} and {warmup}")
        self.labels, self.hop_seconds = list(labels), float(hop_seconds)
        self.threshold, self.refractory, self.warmup = float(threshold), float(refractory), float(warmup)
        self.keywords = np.array([label not in REJECT_LABELS for label in self.labels])
        self.window: deque = deque(maxlen=max(1, round(smoothing / self.hop_seconds)))
        self.hops = 0
        self.last_fired = -np.inf
        self.holding: int | None = None  # the keyword that fired and is still above the threshold

    def update(self, probabilities: np.ndarray, now: float | None = None, pause: bool = True) -> Detection | None:
        """One hop's probabilities; `now`: its time in seconds of input (default: hops so far x hop_seconds); `pause`:
        whether its keywords count (PauseGate)."""
        probabilities = np.asarray(probabilities, np.float64)
        self.window.append(probabilities if pause else np.where(self.keywords, 0.0, probabilities))
        self.hops += 1
        now = self.hops * self.hop_seconds if now is None else float(now)
        smoothed = np.mean(self.window, axis=0)
        scores = np.where(self.keywords, smoothed, -1.0)
        if self.rearm == "below" and self.holding is not None and scores[self.holding] < self.threshold:
            self.holding = None  # re-armed
        best = int(np.argmax(scores))
        if scores[best] < self.threshold or now - self.last_fired < self.refractory or best == self.holding or now < self.warmup:
            return None
        self.last_fired, self.holding = now, best
        return Detection(now, self.labels[best], float(scores[best]))
