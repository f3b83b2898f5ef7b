"""A trained causal model run one step at a time, its memory passed in and out as named tensors.

Audio (audio_rnn), one step per hop of H samples:

    samples        float32 [1, H]        the newest hop of audio (H = model.audio_stack x preprocess.hop_length)
    audio_context  float32 [1, n_fft - hop_length]   the samples before it (zeros at the start)
        --concat--> [1, n_fft - hop_length + H] --frames ending at each hop--> [1, k, n_fft]   (k = audio_stack)
        --MFCC (causal framing: a frame depends on its own samples only)--> [1, k, C]
        --dataset normalisation (fixed statistics), or running (audio_norm_sum, _sumsq, _count: the frames so far)--> [1, k, C]
        (--model.freq_conv: the model's FrequencyConv, frame by frame--> [1, k, C'])
        --stack the k frames (the model's StackSteps)--> [1, k C]                                      = this step's input

Video (video_rnn on a per-frame encoder), one step per frame:

    frame                 uint8   [1, S, S, 3]   the newest frame, sampled and cropped as for the whole-clip model
    video_previous_frame  float32 [1, S, S, 3]   the frame before it (motion and frame differences only)
    video_frames_seen     float32 [1, 1]         1 once a frame was seen (0 at the start: the first frame has no predecessor)
        --the run's frame encoder on [previous, newest] (the newest twice at the start: no motion, as frame 0 of a
          clip has), its second row; a CNN on plain frames reads the newest only--> [1, D]
        --the model's video_norm (fixed statistics, or per frame)--> [1, D]                           = this step's input

Both then:
    <modality>_<cell><i>_h (and _c for LSTM)  float32 [1, units]   each RNN layer's state (zeros at the start)
        --one step of each RNN cell, the trained weights--> [1, units]
        --pooling: `last` the state now; `mean` (`max`) the mean (maximum) of the last W states (a ring of them is a
          state: <modality>_<pooling>_window [1, W, units] and <modality>_<pooling>_count [1, 1]; W = the training
          window's steps)--> [1, units]
        --the classifier--> probabilities [1, K] for "now", plus every state's new value under its name

Audio and video (av_fusion with both branches causal, AVStepper), one step per frame: the frame and the audio hops
since the frame before, each branch stepped as above only on what it was given, then the model's own fusion layers on
the two pooled states (a branch that has had no step yet is absent, as a length of 0 is in the whole-clip model).
k, the hops a step can carry, is one more than the hops per frame at the stream's frame rate (av_hops_per_step).

Fed an utterance (clip) step by step from zero states, the probabilities after the last step are the whole-window
model's: nothing looks ahead (causal MFCC framing or per-frame encoding, unidirectional RNN, `last`, `mean` or `max` pooling).
States are plain tensors, at most 4-D, so a TFLite file of `step` holds no variables: an app keeps them between
calls, as MoViNet-Stream and kws_streaming models have it.

`pipeline.derived.streaming_blockers(cfg)` says why a config cannot stream (empty when it can): the
derived `model.streamable` of `actrec config show`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.runtime.tflite import AUDIO_HOPS, FRAME, FRAME_VALID, SAMPLES, STREAM_SIGNATURE  # noqa: F401  (re-exported: the step's names in one place)
from pipeline.runtime.tflite import OUTPUT as PROBABILITIES

CONTEXT = "audio_context"  # the samples before the newest hop
CONTROL = "stream_control"  # a step's bookkeeping (state blends, counts, pooling windows): kept float in int8 files (tflite_edit.kept_float)
NORM = "audio_norm"  # the running MFCC normalisation's states (preprocess.normalize: running)
WINDOW_POOLINGS = ("mean", "max")  # poolings a stream computes over a ring of the last window's RNN outputs
VALID_FRAMES = "valid_frames"  # inside an audio-visual step: the MFCC frames of a hop that hold sound [1, 1] (not an input)
PREVIOUS_FRAME, FRAMES_SEEN = "video_previous_frame", "video_frames_seen"


@dataclass(frozen=True)
class StateSpec:
    """One tensor of the step signature: a state (zeros at the start, the step's output of the same name fed back),
    or the step's newest input."""

    name: str
    shape: tuple[int, ...]  # with the batch axis (1)
    doc: str
    dtype: str = "float32"

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "doc": self.doc}

    def zeros(self) -> np.ndarray:
        return np.zeros(self.shape, self.dtype)


def stream_modality(cfg) -> str:
    """'audio', 'video' or 'av' (a frame and the audio hops since the one before): what a streamable config's step reads."""
    return {"video_rnn": "video", "av_fusion": "av"}.get(cfg.model.name, "audio")


def av_hops_per_step(cfg, frame_rate: float) -> int:
    """k: the audio hops an audio-visual step carries, one more than a frame's interval holds at `frame_rate` frames per
    second (a frame's hops vary by one with rounding; a clip played faster than that streams in extra frameless steps)."""
    hops_per_second = cfg.preprocess.sample_rate / hop_samples(cfg)
    return int(np.ceil(hops_per_second / frame_rate - 1e-9)) + 1


def hop_samples(cfg) -> int:
    """H: samples per audio step, one RNN step (model.audio_stack MFCC frames of preprocess.hop_length samples)."""
    return cfg.model.audio_stack * cfg.preprocess.hop_length


def needs_previous_frame(cfg) -> bool:
    """Whether a frame's features depend on the frame before it (motion, frame differences)."""
    return cfg.preprocess.encoder == "motion" or cfg.preprocess.frame_difference


def step_input(cfg, modality: str | None = None) -> StateSpec:
    """The step's newest input: one hop of audio, or one frame (of the config's, or `modality`'s, branch)."""
    p = cfg.preprocess
    if (modality or stream_modality(cfg)) == "video":
        return StateSpec(FRAME, (1, p.image_size, p.image_size, 3),
                         f"the newest RGB frame, resized (short side {p.image_size}) and centre-cropped as the whole-clip model's", "uint8")
    hop = hop_samples(cfg)
    return StateSpec(SAMPLES, (1, hop), f"the newest {hop} samples, mono at {p.sample_rate} Hz in [-1, 1]")


def window_steps(cfg, modality: str | None = None) -> int:
    """W: steps in the training window (audio_seconds of hops; num_frames frames, one audio-visual step per frame) of the
    config's (or `modality`'s) branch."""
    if (modality or stream_modality(cfg)) in ("video", "av"):
        return cfg.preprocess.num_frames
    return round(cfg.preprocess.audio_seconds * cfg.preprocess.sample_rate) // hop_samples(cfg)


def require_streamable(cfg) -> None:
    """ValueError naming every reason (pipeline.derived.streaming_blockers) unless the config's model can stream."""
    from pipeline.derived import streaming_blockers

    blockers = streaming_blockers(cfg)
    if blockers:
        raise ValueError(f"this model cannot stream: {'; '.join(blockers)}")


def window_state_names(modality: str, pooling: str) -> tuple[str, str]:
    """The states of a `mean` or `max` pooling window: (the ring of the last W outputs, how many of them are real)."""
    return f"{modality}_{pooling}_window", f"{modality}_{pooling}_count"


def stream_inputs(cfg, hops_per_step: int | None = None) -> list[StateSpec]:
    """The step's newest inputs, in signature order: one (a hop or a frame), or an audio-visual step's four (k =
    hops_per_step, see av_hops_per_step)."""
    if stream_modality(cfg) != "av":
        return [step_input(cfg)]
    k, h = hops_per_step, hop_samples(cfg)
    return [step_input(cfg, "video"), StateSpec(FRAME_VALID, (1, 1), "1 when `frame` is a new frame, 0 when this step has none"),
            StateSpec(SAMPLES, (1, k * h), f"up to {k} hops of {h} samples since the last step, oldest first, the unused ones zero"),
            StateSpec(AUDIO_HOPS, (1, 1), f"how many hops of `samples` are real (0..{k}; 0 for a video without sound; a "
                      "fraction, samples / hop_samples, when the sound ends inside the last one)")]


def stream_states(cfg) -> list[StateSpec]:
    """Every state tensor of a streamable config's step, in signature order (no model needed)."""
    if stream_modality(cfg) != "av":
        return branch_states(cfg, stream_modality(cfg))
    present = [StateSpec(f"{branch}_present", (1, 1), f"1 once the {branch} branch has had a step") for branch in ("video", "audio")]
    return branch_states(cfg, "video") + branch_states(cfg, "audio") + present


def branch_states(cfg, modality: str) -> list[StateSpec]:
    """The states of one modality's branch: its input's memory (audio context, previous frame), RNN states, pooling."""
    p, m = cfg.preprocess, cfg.model
    specs = []
    if modality == "audio":
        context = p.n_fft - p.hop_length
        specs.append(StateSpec(CONTEXT, (1, context), f"the last {context} samples before this hop (n_fft - hop_length)"))
        if p.normalize == "running":
            c = p.n_mfcc
            specs += [StateSpec(f"{NORM}_sum", (1, c), "running normalisation: the sum of the MFCC frames so far, less the training mean"),
                      StateSpec(f"{NORM}_sumsq", (1, c), "running normalisation: the sum of their squares"),
                      StateSpec(f"{NORM}_count", (1, 1), "running normalisation: how many frames so far")]
    elif needs_previous_frame(cfg):
        specs.append(StateSpec(PREVIOUS_FRAME, (1, p.image_size, p.image_size, 3), "the frame before this one (RGB values 0..255)"))
        specs.append(StateSpec(FRAMES_SEEN, (1, 1), "1 once a frame has been seen, 0 at the start"))
    for i in range(m.num_layers):
        name = f"{modality}_{m.cell}{i}"
        specs.append(StateSpec(f"{name}_h", (1, m.units), f"RNN layer {i}: hidden state"))
        if m.cell == "lstm":
            specs.append(StateSpec(f"{name}_c", (1, m.units), f"RNN layer {i}: cell state"))
    if m.pooling in WINDOW_POOLINGS:
        steps = window_steps(cfg, modality)
        ring, count = window_state_names(modality, m.pooling)
        specs.append(StateSpec(ring, (1, steps, m.units), f"the last RNN outputs, oldest first ({steps}: the training window's steps)"))
        specs.append(StateSpec(count, (1, 1), f"how many of them are real (counts up to {steps})"))
    return specs


class Stepper:
    """The step function of a trained streamable model (see the module docstring), built from its layers.

    make_stepper(model, cfg[, encode_frames]): model is the trained keras.Model (weights shared, not copied), cfg its
    Config; video runs also need the run's frame encoder (frames [1, t, S, S, 3] uint8 -> features [1, t, D]).
    input: the newest input's StateSpec; hop_samples: H (audio; None for video); states(): [StateSpec]; step({input name: value, state name: value}) ->
    {'probabilities': [1, K], state name: new value}
    """

    hops_per_step = None  # an audio-visual step's (AVStepper)

    def __init__(self, model, cfg, branch: str | None = None):
        """branch: None for a model of one modality (its classifier answers); 'video' or 'audio' for that branch of an
        audio-visual model (AVStepper steps it and fuses)."""
        if not branch:  # a branch's config is its audio-visual model's, which AVStepper checks
            require_streamable(cfg)
        m = cfg.model
        self.cfg, self.model, self.modality = cfg, model, branch or stream_modality(cfg)
        self.input = step_input(cfg, self.modality)
        self.hop_samples = hop_samples(cfg) if self.modality == "audio" else None  # samples per step (audio)
        self.cells = [model.get_layer(f"{self.modality}_{m.cell}{i}").cell for i in range(m.num_layers)]
        self.classifier = None if branch else model.get_layer("head_probs")

    def inputs(self) -> list[StateSpec]:
        return [self.input]

    def states(self) -> list[StateSpec]:
        return branch_states(self.cfg, self.modality)

    def features(self, inputs: dict, out: dict):
        """This step's RNN input [1, features] from the newest input and the states; the new states go in `out`."""
        raise NotImplementedError

    def step(self, inputs: dict) -> dict:
        """One step: {newest input, every state} -> {'probabilities' [1, K], every new state}. TensorFlow ops."""
        out = self.advance(inputs)
        out[PROBABILITIES] = self.classifier(self.pooled(out))
        return out

    def pooled(self, states: dict):
        """The branch's pooled state [1, units] after a step, from its new states: what the whole-clip model pools."""
        import tensorflow as tf

        pooling = self.cfg.model.pooling
        if pooling not in WINDOW_POOLINGS:
            return states[f"{self.modality}_{self.cfg.model.cell}{self.cfg.model.num_layers - 1}_h"]  # the last layer's output
        ring, count = (states[name] for name in window_state_names(self.modality, pooling))
        with tf.name_scope(CONTROL):  # MaskedMean / MaskedMax over the valid steps of the window (none yet: zeros)
            if pooling == "mean":  # the ring's unused places are zeros
                return tf.reduce_sum(ring, axis=1) / tf.maximum(count, 1.0)
            steps = ring.shape[1]
            valid = tf.range(steps, dtype=tf.float32)[None, :, None] >= steps - count[:, :, None]  # the newest `count`
            peak = tf.reduce_max(tf.where(valid, ring, ring[:, -1:]), axis=1)  # the newest stands in: no large constant for int8
            return tf.where(count > 0, peak, tf.zeros_like(peak))

    def advance(self, inputs: dict) -> dict:
        """The branch's new states after one step of its newest input: {state name: new value}."""
        import tensorflow as tf

        out = {}
        x = self.features(inputs, out)
        cell_type = self.cfg.model.cell
        for i, cell in enumerate(self.cells):
            name = f"{self.modality}_{cell_type}{i}"
            if cell_type == "lstm":
                x, (h, c) = cell(x, [inputs[f"{name}_h"], inputs[f"{name}_c"]], training=False)
                out[f"{name}_h"], out[f"{name}_c"] = h, c
            else:
                x, new = cell(x, inputs[f"{name}_h"], training=False)
                out[f"{name}_h"] = new[0] if isinstance(new, (list, tuple)) else new
        if self.cfg.model.pooling in WINDOW_POOLINGS:  # mean or max over the window: the ring of the last W outputs
            ring, count = window_state_names(self.modality, self.cfg.model.pooling)
            with tf.name_scope(CONTROL):  # kept float in int8 files: re-quantized at every step, the ring's rounding would add up
                out[ring] = tf.concat([inputs[ring][:, 1:], x[:, None]], axis=1)  # [1, W, units]
                out[count] = tf.minimum(inputs[count] + 1.0, float(out[ring].shape[1]))  # [1, 1]
        return out


class AudioStepper(Stepper):
    """One hop of audio per step: causal MFCC frames of the hop, normalised and stacked."""

    def __init__(self, model, cfg, branch: str | None = None):
        from pipeline.features.mfcc import MFCCParams
        from pipeline.features.mfcc_layers import MFCC

        super().__init__(model, cfg, branch)
        self.params = MFCCParams.from_config(cfg.preprocess)
        self.context_samples = self.params.n_fft - self.params.hop_length
        self.mfcc = MFCC.from_params(self.params, name="mfcc")
        self.normalization = model.get_layer("mfcc_norm")
        self.freq_conv = model.get_layer(f"{self.modality}_freq_conv") if cfg.model.freq_conv else None

    def features(self, inputs: dict, out: dict):
        import tensorflow as tf

        from pipeline.features.mfcc_layers import frame_signal

        # under the "mfcc" scope: an int8 export keeps these ops float (tflite_edit.kept_float), 8-bit samples would not do
        with tf.name_scope("mfcc"):
            signal = tf.concat([inputs[CONTEXT], inputs[SAMPLES]], axis=1)  # [1, n_fft - hop + H]
            frames = frame_signal(signal, self.params.n_fft, self.params.hop_length)  # [1, k, n_fft]
            mfcc = self.mfcc.frames_to_mfcc(frames)  # [1, k, C]
            out[CONTEXT] = tf.identity(signal[:, -self.context_samples:])
        if self.cfg.preprocess.normalize == "running":  # the frames' causal statistics, carried from hop to hop
            with tf.name_scope("mfcc_norm"):  # an int8 export keeps it float (tflite_edit.kept_float), as the whole-clip layer
                memory = tuple(inputs[f"{NORM}_{part}"] for part in ("sum", "sumsq", "count"))
                normalised, memory = self.normalization.running(mfcc, memory)
                for part, value in zip(("sum", "sumsq", "count"), memory):
                    out[f"{NORM}_{part}"] = value
        else:
            normalised = self.normalization(mfcc)
        valid = None  # a stream's own hop: every frame holds sound
        if VALID_FRAMES in inputs:  # the sound ended inside this hop: the frames past its end are padding, zero (as masked)
            valid = tf.range(normalised.shape[1], dtype=tf.float32)[None, :] < inputs[VALID_FRAMES]  # [1, k]
            normalised *= tf.cast(valid[:, :, None], tf.float32)
        if self.freq_conv is not None:  # per frame, as in the whole-clip model
            normalised = self.freq_conv(normalised, valid)
        return tf.reshape(normalised, [1, -1])  # [1, k C]: StackSteps' order (frame-major)


class VideoStepper(Stepper):
    """One frame per step: the run's frame encoder on it (and on the frame before, for motion), normalised."""

    def __init__(self, model, cfg, encode_frames, branch: str | None = None):
        super().__init__(model, cfg, branch)
        self.encode_frames = encode_frames
        self.normalization = model.get_layer("video_norm")
        self.with_previous = needs_previous_frame(cfg)

    def features(self, inputs: dict, out: dict):
        import tensorflow as tf

        frame = inputs[FRAME]  # [1, S, S, 3] uint8
        if self.with_previous:
            # under the "motion" scope: an int8 export keeps these ops float (tflite_edit.kept_float); a previous frame
            # off by one grey level would be motion everywhere
            with tf.name_scope("motion"):
                newest = tf.cast(frame, tf.float32)
                seen = tf.reshape(inputs[FRAMES_SEEN], [1, 1, 1, 1])
                previous = seen * inputs[PREVIOUS_FRAME] + (1.0 - seen) * newest  # the first frame: itself, so no motion
                pair = tf.cast(tf.stack([previous, newest], axis=1), tf.uint8)  # [1, 2, S, S, 3]
                out[PREVIOUS_FRAME], out[FRAMES_SEEN] = tf.identity(newest), tf.ones_like(inputs[FRAMES_SEEN])
            features = self.encode_frames(pair)[:, 1:]  # [1, 1, D]: what the whole clip's encoder gives this frame
        else:
            features = self.encode_frames(frame[:, None])  # [1, 1, D]
        return tf.reshape(self.normalization(features), [1, -1])  # [1, D]


class AVStepper:
    """One step of an audio-visual model (av_fusion, both branches causal): one frame and the audio hops since the
    frame before, each branch's states updated only by what it was given this step, then the model's fusion.

        frame        uint8   [1, S, S, 3]   the newest frame              frame_valid  float32 [1, 1]  1 if there is one
        samples      float32 [1, k H]       up to k hops of audio, oldest first    audio_hops   float32 [1, 1]  how many (0..k)
            --VideoStepper's step of the frame (states kept where frame_valid is 0)-->
            --AudioStepper's step of each of the first audio_hops hops (the others change no state; in a last partial
              hop, the MFCC frames past the sound's end are zero, as the whole-clip model masks them)-->
        video_present, audio_present  float32 [1, 1]   1 once the branch has had a step (the whole-clip model's
                                                      length > 0: a video without sound never opens the audio branch)
            --each branch's pooled state [1, units]--> the model's own fusion layers (mid, late or backoff)--> [1, K]

    Fed a clip's frames and its audio's whole hops from zero states, in any interleaving, the probabilities after the
    last step are the whole-clip model's on those frames and hops: each branch sees its own steps in order.
    AVStepper(model, cfg, encode_frames, hops_per_step); inputs(), states(), step() as Stepper's.
    """

    modality = "av"

    def __init__(self, model, cfg, encode_frames, hops_per_step: int):
        require_streamable(cfg)
        self.cfg, self.model, self.hops_per_step = cfg, model, int(hops_per_step)
        self.video = VideoStepper(model, cfg, encode_frames, branch="video")
        self.audio = AudioStepper(model, cfg, branch="audio")
        self.hop_samples = self.audio.hop_samples

    def inputs(self) -> list[StateSpec]:
        return stream_inputs(self.cfg, self.hops_per_step)

    def states(self) -> list[StateSpec]:
        return stream_states(self.cfg)

    def step(self, inputs: dict) -> dict:
        import tensorflow as tf

        def keep(new: dict, valid, old: dict) -> dict:  # the new states where valid is 1, the old ones where it is 0
            return {name: valid * value + (1.0 - valid) * old[name] for name, value in new.items()}

        # The bookkeeping (which states change, how many frames a hop holds) runs under the "stream_control" scope:
        # an int8 export keeps it float (tflite_edit.kept_float), where counts and 0/1 blends stay exact.
        frame_valid, hops = inputs[FRAME_VALID], inputs[AUDIO_HOPS]
        video = self.video.advance(inputs)
        with tf.name_scope(CONTROL):
            out = keep(video, frame_valid, inputs)
        audio = {s.name: inputs[s.name] for s in self.audio.states()}
        h, stack = self.hop_samples, self.cfg.model.audio_stack
        for i in range(self.hops_per_step):
            with tf.name_scope(CONTROL):  # the hop's MFCC frames that hold sound (frames end at whole hop_lengths)
                valid = tf.clip_by_value(tf.floor((hops - i) * stack + 1e-3), 0.0, float(stack))  # [1, 1]
                samples = inputs[SAMPLES][:, i * h : (i + 1) * h]  # float: 8-bit samples would not do (AudioStepper)
            hop = {SAMPLES: samples, VALID_FRAMES: valid, **audio}
            new = self.audio.advance(hop)
            with tf.name_scope(CONTROL):
                audio = keep(new, tf.cast(valid > 0, tf.float32), audio)
        out.update(audio)
        with tf.name_scope(CONTROL):
            out["video_present"] = tf.maximum(inputs["video_present"], frame_valid)
            out["audio_present"] = tf.maximum(inputs["audio_present"], tf.cast(hops * stack >= 1.0 - 1e-3, tf.float32))
        out[PROBABILITIES] = self.fuse([self.video.pooled(out), self.audio.pooled(out)], [out["video_present"], out["audio_present"]])
        return out

    def fuse(self, pooled: list, present: list):
        """The model's fusion (models.fusion.fusion_head) on pooled states [1, units] and presence [1, 1], video first."""
        from pipeline.models.fusion import fusion_head

        get = self.model.get_layer
        # a classifier's dropout passes its input through at inference: its softmax Dense alone
        return fusion_head(pooled, present, self.cfg.model.fusion, lambda x, name: get(f"{name}_probs")(x), lambda kind, name: get(name))


def make_stepper(model, cfg, encode_frames=None, frame_rate: float | None = None) -> Stepper | AVStepper:
    """The stepper of a streamable config's modality (video and audio-visual runs: with the run's frame encoder;
    audio-visual ones also with the stream's frame rate, which sets the hops per step)."""
    modality = stream_modality(cfg)
    if modality == "av":
        return AVStepper(model, cfg, encode_frames, av_hops_per_step(cfg, frame_rate))
    if modality == "video":
        return VideoStepper(model, cfg, encode_frames)
    return AudioStepper(model, cfg)
