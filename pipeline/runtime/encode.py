"""Decoded clips -> the features a feature-level model reads: the run's frame encoder, loaded once per process.

    frames uint8 [V, T, S, S, 3] --(FrameDifference, if preprocess.frame_difference)--> --FrameEncoder
        (Keras or TFLite, batched over every frame of every clip given)--> frame_features float32 [V, T, D]
    frames uint8 [V, T, S, S, 3] --motion_features (encoder `motion`: clip by clip, numpy)--> frame_features float32 [V, T, D]

The encoder is rebuilt from RUN/features/encoder.weights.h5, saved by the first preprocess of the run, so
random-init encoders stay identical in every later stage and process. `ClipEncoder.process` is the whole
per-clip work of preprocessing (decode, encode, serialise), shared by the local and the Beam runner.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline import storage
from pipeline.config import Config
from pipeline.features.motion import MOTION_DIM, motion_features
from pipeline.files import atomic_write_weights
from pipeline.media import MediaError
from pipeline.runtime.decode import decode_clip

ENCODER_WEIGHTS = "encoder.weights.h5"  # in the run's features/ folder


def load_frame_encoder(cfg: Config, encoder_dir: str | Path, threads: int | None = None):
    """The run's frame encoder with its saved weights (saved on first use, so random-init encoders stay identical).

    threads: TFLite interpreter threads (None: one per CPU).
    """
    from pipeline.features.encoders import FrameEncoder, build_encoder

    p = cfg.preprocess
    weights_file = storage.path(encoder_dir) / ENCODER_WEIGHTS
    if weights_file.is_file():
        with storage.local_copy(weights_file) as local_weights:
            keras_encoder = build_encoder(p.encoder, p.image_size, str(local_weights), seed=cfg.seed)
    else:
        keras_encoder = build_encoder(p.encoder, p.image_size, p.weights, seed=cfg.seed)
        atomic_write_weights(weights_file, keras_encoder)  # a full disk: one OSError naming the file, no temporary left
    return FrameEncoder(keras_encoder, p.encoder_backend, p.encoder_batch, threads=threads)


def decode_job(job, cfg: Config) -> tuple[object, dict | None, str | None]:
    """(job, decode_clip arrays or None, reason or None) for one records.ClipJob: picklable work for a process pool."""
    try:
        return job, decode_clip(job.path, cfg, train=job.row.split == "train", clip_id=job.row.clip_id, start=job.row.start), None
    except MediaError as e:
        reason = str(e)
        if reason == "no audio track":
            reason = "no audio track (preprocess.modalities needs audio)"
        return job, None, reason


class MotionEncoder:
    """The `motion` encoder in ClipEncoder's hands: no weights, D features per frame (pipeline.features.motion)."""

    dim = MOTION_DIM


class ClipEncoder:
    """Frame features for decoded clips with the run's encoder.

    ClipEncoder(cfg, encoder_dir).setup() loads the encoder once (per process / Beam worker);
    encode(decoded clips) -> the same dicts with frame_features [V, T, D] instead of frames;
    process(job) -> (serialised tf.train.Example, None) or (None, reason).
    """

    def __init__(self, cfg: Config, encoder_dir: str | Path, encoder_threads: int | None = None):
        self.cfg = cfg
        self.encoder_dir = storage.path(encoder_dir)  # a local folder or a URL (Beam workers on a cluster)
        self.encoder_threads = encoder_threads  # TFLite interpreter threads; None: one per CPU
        self.encoder = None
        self.frame_difference = None

    def setup(self) -> None:
        p = self.cfg.preprocess
        if p.encoder == "motion" and "video" in p.modalities:
            self.encoder = MotionEncoder()
        elif p.encoder != "none" and "video" in p.modalities:
            self.encoder = load_frame_encoder(self.cfg, self.encoder_dir, self.encoder_threads)
            if p.frame_difference:
                from pipeline.features.encoders import FrameDifference

                self.frame_difference = FrameDifference()

    def encode(self, decoded: Sequence[dict]) -> list[dict]:
        """Replace frames by frame_features for a batch of decoded clips (one encoder call for all)."""
        if self.encoder is None:
            return list(decoded)
        features = self._frame_features([d["frames"] for d in decoded])
        return [{**{k: v for k, v in d.items() if k != "frames"}, "frame_features": f} for d, f in zip(decoded, features)]

    def _frame_features(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        """uint8 [V, T, S, S, 3] per clip -> float32 [V, T, D] per clip."""
        if isinstance(self.encoder, MotionEncoder):  # whole clips: motion is between consecutive frames
            return [motion_features(f) for f in frames]
        if self.frame_difference is not None:  # per view: [V, T, S, S, 3] is a batch of V clips
            frames = [np.asarray(self.frame_difference(f)) for f in frames]
        sizes = [f.shape[0] * f.shape[1] for f in frames]  # V * T frames per clip
        flat = self.encoder.encode(np.concatenate([f.reshape(-1, *f.shape[2:]) for f in frames]))  # every frame at once
        parts = np.split(flat, np.cumsum(sizes)[:-1])
        return [part.reshape(*f.shape[:2], -1) for part, f in zip(parts, frames)]

    def process(self, job) -> tuple[bytes | None, str | None]:
        from pipeline.features.records import serialize_example

        job, decoded, error = decode_job(job, self.cfg)
        if error:
            return None, error
        return serialize_example(job, self.encode([decoded])[0]), None


def available_cpus() -> int:
    """CPUs this process may run on (the affinity mask: a container or `taskset` may allow fewer than os.cpu_count())."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
