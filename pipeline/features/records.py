"""The feature cache's format: one tf.train.Example per clip in TFRecord shards of fixed slices of the rows.

    ClipJob(root, row, label_id) --(runtime: decode, encode)--> arrays --serialize_example--> bytes
        {clip_id, label, split, group, frame_features float32 [V, T, D] | frames uint8 [V, T, S, S, 3],
         frame_lengths int64 [V], mfcc float32 [F, C], mfcc_length, waveform float32 [N], num_samples}
    rows --plan_shards--> Shard(split, index, count, rows) --write_shard--> RUN/features/<split>-<i>-of-<n>.tfrecord
                                                                           (+ <name>.json: examples, errors)

Shards are fixed slices of the rows sorted by (split, path), so an interrupted run resumes by
skipping the shards that exist (each is written under a temporary name and renamed when complete; a write that
fails, e.g. on a full disk, removes its temporary file and raises one OSError naming the shard).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.config import Config
from pipeline.datasets import SPLITS, ManifestRow
from pipeline.files import atomic_write_json, temp_path, write_error

# The arrays of each modality, cached or decoded: a modality is absent from a clip when its length is 0.
MODALITY_FEATURES = {"video": ("frames", "frame_features", "frame_lengths"), "audio": ("mfcc", "mfcc_length", "waveform", "num_samples")}


def modalities_of(names: Iterable[str]) -> list[str]:
    """The modalities (video, audio) that feature or input names belong to."""
    names = set(names)
    return [m for m, features in MODALITY_FEATURES.items() if names & set(features)]


@dataclass(frozen=True)
class ClipJob:
    """One clip to cache: the dataset root, its manifest row, and its class index."""

    root: str
    row: ManifestRow
    label_id: int

    @property
    def path(self) -> Path:
        return Path(self.root) / self.row.path


def serialize_example(job: ClipJob, arrays: dict) -> bytes:
    import tensorflow as tf

    def floats(a):
        return tf.train.Feature(float_list=tf.train.FloatList(value=np.asarray(a, np.float32).ravel()))

    def ints(a):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=np.atleast_1d(np.asarray(a, np.int64)).ravel()))

    def raw(b):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[b]))

    feature = {
        "clip_id": raw(job.row.clip_id.encode()),
        "label": ints(job.label_id),
        "split": raw(job.row.split.encode()),
        "group": raw(job.row.group.encode()),
    }
    if "frame_features" in arrays:
        feature["frame_features"] = floats(arrays["frame_features"])
    if "frames" in arrays:
        feature["frames"] = raw(np.ascontiguousarray(arrays["frames"], np.uint8).tobytes())
    if "frame_lengths" in arrays:
        feature["frame_lengths"] = ints(arrays["frame_lengths"])
    if "mfcc" in arrays:
        feature["mfcc"] = floats(arrays["mfcc"])
        feature["mfcc_length"] = ints(arrays["mfcc_length"])
    if "waveform" in arrays:
        feature["waveform"] = floats(arrays["waveform"])
        feature["num_samples"] = ints(arrays["num_samples"])
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def feature_schema(cfg: Config, feature_dim: int | None) -> dict:
    """Name -> {shape, dtype} of every per-example feature (V views, T frames, F MFCC frames)."""
    from pipeline.features.mfcc import MFCCParams

    p = cfg.preprocess
    views = p.num_clips if p.sampling == "multi_clip" else 1
    schema = {"clip_id": {"shape": [], "dtype": "string"}, "label": {"shape": [], "dtype": "int64"}}
    if "video" in p.modalities:
        if p.encoder == "none":
            schema["frames"] = {"shape": [views, p.num_frames, p.image_size, p.image_size, 3], "dtype": "uint8"}
        else:
            schema["frame_features"] = {"shape": [views, p.num_frames, feature_dim], "dtype": "float32"}
        schema["frame_lengths"] = {"shape": [views], "dtype": "int64"}
    if "audio" in p.modalities:
        params = MFCCParams.from_config(p)
        num_samples = round(p.audio_seconds * p.sample_rate)
        schema["mfcc"] = {"shape": [params.num_frames(num_samples), params.feature_dim], "dtype": "float32"}
        schema["mfcc_length"] = {"shape": [], "dtype": "int64"}
        if p.keeps_waveform:
            schema["waveform"] = {"shape": [num_samples], "dtype": "float32"}
            schema["num_samples"] = {"shape": [], "dtype": "int64"}
    return schema


@dataclass
class Shard:
    split: str
    index: int
    count: int
    rows: list[ManifestRow]

    @property
    def name(self) -> str:
        return f"{self.split}-{self.index:05d}-of-{self.count:05d}.tfrecord"


def plan_shards(rows: Sequence[ManifestRow], shard_size: int) -> list[Shard]:
    """Fixed slices of the rows sorted by (split, path): the same rows always land in the same shard."""
    shards = []
    for split in SPLITS:
        part = sorted((r for r in rows if r.split == split), key=lambda r: r.clip_id)
        count = max(1, -(-len(part) // shard_size)) if part else 0
        shards += [Shard(split, i, count, part[i * shard_size : (i + 1) * shard_size]) for i in range(count)]
    return shards


def write_shard(features_dir: Path, shard: Shard, examples: Iterable[bytes], errors: list[tuple[str, str]]) -> None:
    """Write the shard's examples and its errors; the .tfrecord appears (atomically) last.

    A failed write leaves no temporary file and raises OSError naming the shard (files.write_error).
    """
    import tensorflow as tf

    examples = list(examples)
    atomic_write_json(features_dir / (shard.name + ".json"), {"examples": len(examples), "errors": errors})
    path = features_dir / shard.name
    tmp = temp_path(path)
    try:
        with tf.io.TFRecordWriter(str(tmp)) as writer:
            for example in examples:
                writer.write(example)
        tmp.replace(path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)  # a partial shard is of no use to a resumed run, which writes the whole shard again
        if isinstance(e, tf.errors.OpError):  # a full disk reaches us as TensorFlow's error (OutOfRangeError for EFBIG)
            raise write_error(path, e.message) from None
        raise
