"""Preprocess stage: raw clips -> cached features in TFRecord shards.

    dataset root --index--> rows (path, label, split, group)
        --decode_clip (worker processes)--> frames uint8 [V, T, S, S, 3], waveform float32 [N] -> MFCC [F, C]
        --(FrameDifference, if preprocess.frame_difference)--FrameEncoder (main process, batched)--> frame_features float32 [V, T, D]
        --> DIR/features/<split>-<i>-of-<n>.tfrecord, index.json, DIR/preprocess_errors.csv

Shards are fixed slices of the sorted rows, so an interrupted run resumes by skipping the
shards that exist (each is written under a temporary name and renamed when complete).
`ClipProcessor` is the per-clip function both runners use (local pool, Apache Beam).
"""

from __future__ import annotations

import collections
import csv
import hashlib
import io
import itertools
import json
import multiprocessing
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from pipeline import storage
from pipeline.config import Config, load_config, section_hash, to_yaml
from pipeline.errors import UserError
from pipeline.files import atomic_write_json, atomic_write_text, temp_path
from pipeline.media import MediaError

if TYPE_CHECKING:  # data_prep.index imports pipeline, whose __init__ imports this module: import it late
    from data_prep.index import ManifestRow

SPLITS = ("train", "val", "test")


def preprocess_hash(cfg: Config) -> str:
    """What decides the cached features: the data and preprocess sections and the seed."""
    return section_hash(cfg.data, cfg.preprocess) + f"-{cfg.seed}"


def cache_key(cfg: Config) -> dict:
    """What the cached features are checked against, saved in preprocess_state.json and index.json: the config hash,
    and a hash of the preprocess.weights file when there is one (retrained under the same path, as when stage 1 of
    the two-stage hybrid recipe runs again, it encodes other features). Read after check_encoder_weights passed."""
    p = cfg.preprocess
    from_file = p.encoder != "none" and p.weights not in (None, "imagenet")  # `none` caches raw frames, which no weights change
    digest = hashlib.sha256(storage.path(p.weights).read_bytes()).hexdigest()[:16] if from_file else None
    return {"config_hash": preprocess_hash(cfg), "weights_sha256": digest}


# ----------------------------------------------------------------------------- the per-clip work


@dataclass(frozen=True)
class ClipJob:
    root: str
    row: ManifestRow
    label_id: int


def clip_seed(seed: int, relpath: str) -> int:
    """A per-clip seed independent of processing order (for TSN segment sampling)."""
    return zlib.crc32(f"{seed}:{relpath}".encode())


def decode_clip(job: ClipJob, cfg: Config, crops: Sequence[str] = ("center",)) -> dict:
    """Decode one clip into arrays (no encoder): the part that runs in worker processes.

    Returns {'frames': uint8 [V, T, S, S, 3], 'frame_lengths': int32 [V]} for video and
    {'mfcc': float32 [F, C], 'mfcc_length': int, 'waveform'?: float32 [N], 'num_samples': int} for audio.
    Raises MediaError with the reason when the clip cannot be used.
    """
    from pipeline.media.audio import load_audio
    from pipeline.media.video import read_clip

    p = cfg.preprocess
    path = Path(job.root) / job.row.path
    out: dict = {}
    if "video" in p.modalities:
        rng = np.random.default_rng(clip_seed(cfg.seed, job.row.path))
        clip = read_clip(path, p.num_frames, p.image_size, p.sampling, p.num_clips, crops, train=job.row.split == "train", rng=rng)
        out["frames"], out["frame_lengths"] = clip.frames, clip.lengths
    if "audio" in p.modalities:
        out.update(audio_arrays(load_audio(path, p.sample_rate), cfg))
    return out


def audio_arrays(waveform: np.ndarray, cfg: Config) -> dict:
    """The audio part of decode_clip, for a whole clip or one window of a long recording.

    waveform: float32 [N] mono at preprocess.sample_rate -> {'mfcc': float32 [F, C], 'mfcc_length': int,
    'waveform'?: float32 [M], 'num_samples'?: int}, M = audio_seconds x sample_rate (centre crop or zero padding).
    """
    from pipeline.features.mfcc import MFCCParams, librosa_mfcc
    from pipeline.media.audio import fit_length

    p = cfg.preprocess
    if waveform.size == 0:
        raise MediaError("audio track is empty")
    params = MFCCParams.from_config(p)
    waveform, valid = fit_length(waveform, round(p.audio_seconds * p.sample_rate))
    out = {"mfcc": librosa_mfcc(waveform, params).astype(np.float32)}
    out["mfcc_length"] = min(len(out["mfcc"]), params.num_frames(valid))
    if p.encoder == "none":  # the end-to-end model computes its own MFCC in-graph
        out["waveform"], out["num_samples"] = waveform.astype(np.float32), valid
    return out


def _decode_worker(args: tuple[ClipJob, Config]) -> tuple[ClipJob, dict | None, str | None]:
    job, cfg = args
    try:
        return job, decode_clip(job, cfg), None
    except MediaError as e:
        reason = str(e)
        if reason == "no audio track":
            reason = "no audio track (preprocess.modalities needs audio)"
        return job, None, reason


class ClipProcessor:
    """Decode + encode one clip into a serialised tf.train.Example; shared by the local and Beam runners.

    setup() loads the frame encoder once (per process / Beam worker), process() handles one clip.
    """

    def __init__(self, cfg: Config, encoder_dir: str | Path, encoder_threads: int | None = None):
        self.cfg = cfg
        self.encoder_dir = storage.path(encoder_dir)  # a local folder or a URL (Beam workers on a cluster)
        self.encoder_threads = encoder_threads  # TFLite interpreter threads; None: one per CPU
        self.encoder = None

    def setup(self) -> None:
        if self.cfg.preprocess.encoder != "none" and "video" in self.cfg.preprocess.modalities:
            self.encoder = load_frame_encoder(self.cfg, self.encoder_dir, self.encoder_threads)

    def encode(self, decoded: Sequence[dict]) -> list[dict]:
        """Replace frames by frame_features for a batch of decoded clips (one encoder call for all)."""
        if self.encoder is None:
            return list(decoded)
        frames = [d["frames"] for d in decoded]
        if self.cfg.preprocess.frame_difference:  # per view: [V, T, S, S, 3] is a batch of V clips
            from pipeline.features.encoders import FrameDifference

            frames = [np.asarray(FrameDifference()(f)) for f in frames]
        shapes = [f.shape[:2] for f in frames]  # (V, T) per clip
        flat = np.concatenate([f.reshape(-1, *f.shape[2:]) for f in frames])
        features = self.encoder.encode(flat)
        out, start = [], 0
        for d, (v, t) in zip(decoded, shapes):
            d = dict(d)
            del d["frames"]
            d["frame_features"] = features[start : start + v * t].reshape(v, t, -1)
            start += v * t
            out.append(d)
        return out

    def process(self, job: ClipJob) -> tuple[bytes | None, str | None]:
        job, decoded, error = _decode_worker((job, self.cfg))
        if error:
            return None, error
        return serialize_example(job, self.encode([decoded])[0]), None


# ----------------------------------------------------------------------------- encoder (saved once per run)


def load_frame_encoder(cfg: Config, encoder_dir: str | Path, threads: int | None = None):
    """The run's frame encoder with its saved weights (random-init encoders must stay identical).

    threads: TFLite interpreter threads (None: one per CPU).
    """
    from pipeline.features.encoders import FrameEncoder, build_encoder

    p = cfg.preprocess
    encoder_dir = storage.path(encoder_dir)
    weights_file = encoder_dir / "encoder.weights.h5"
    if weights_file.is_file():
        with storage.local_copy(weights_file) as local_weights:
            keras_encoder = build_encoder(p.encoder, p.image_size, str(local_weights), seed=cfg.seed)
    else:
        keras_encoder = build_encoder(p.encoder, p.image_size, p.weights, seed=cfg.seed)
        tmp = temp_path(weights_file).with_suffix(".weights.h5")
        keras_encoder.save_weights(str(tmp))  # Keras writes URLs through tf.io.gfile
        tmp.replace(weights_file)
    return FrameEncoder(keras_encoder, p.encoder_backend, p.encoder_batch, threads=threads)


# ----------------------------------------------------------------------------- TFRecord schema


def serialize_example(job: ClipJob, arrays: dict) -> bytes:
    import tensorflow as tf

    def floats(a):
        return tf.train.Feature(float_list=tf.train.FloatList(value=np.asarray(a, np.float32).ravel()))

    def ints(a):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=np.atleast_1d(np.asarray(a, np.int64)).ravel()))

    def raw(b):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[b]))

    feature = {
        "clip_id": raw(job.row.path.encode()),
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
        if p.encoder == "none":
            schema["waveform"] = {"shape": [num_samples], "dtype": "float32"}
            schema["num_samples"] = {"shape": [], "dtype": "int64"}
    return schema


# ----------------------------------------------------------------------------- the stage


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
        part = sorted((r for r in rows if r.split == split), key=lambda r: r.path)
        count = max(1, -(-len(part) // shard_size)) if part else 0
        shards += [Shard(split, i, count, part[i * shard_size : (i + 1) * shard_size]) for i in range(count)]
    return shards


def _check_run_dir(run_dir: Path, cfg: Config, key: dict, overwrite: bool) -> bool:
    """True when the run dir already holds finished features for this config (key: its cache_key)."""
    index_file = run_dir / "features" / "index.json"
    state_file = run_dir / "features" / "preprocess_state.json"
    for existing in (index_file, state_file):
        if existing.is_file():
            state = json.loads(existing.read_text())
            digest = key["weights_sha256"]  # runs cached before it was recorded are not checked against it
            changed = ("a different data/preprocess config" if state.get("config_hash") != key["config_hash"]
                       else f"another {cfg.preprocess.weights} (the file changed since)" if state.get("weights_sha256", digest) != digest
                       else None)
            if changed:
                if not overwrite:
                    raise UserError(f"{run_dir}: features were made with {changed}; use --overwrite to redo them or choose another --run-dir")
                storage.rmtree(run_dir / "features")
                return False
            return existing == index_file
    return False


def resolve_rows(cfg: Config, manifest: str | Path | None = None) -> tuple[list[ManifestRow], list[str], list[tuple[str, str]]]:
    """(rows, classes, problems) from a manifest file or by indexing data.root."""
    from data_prep.index import index_dataset, read_manifest

    d = cfg.data
    manifest = manifest or d.manifest
    if not manifest and storage.is_url(d.root):
        raise UserError(f"data.root={d.root}: indexing reads local folders only; pass --manifest (from `actrec index`) to read clips from a URL")
    if manifest:
        rows = read_manifest(manifest)
        classes = list(d.classes) or sorted({r.label for r in rows})
        problems = [(r.path, f"unknown label '{r.label}' (not in data.classes)") for r in rows if r.label not in classes]
        return [r for r in rows if r.label in classes], classes, problems
    index = index_dataset(d.root, d.kind, d.layout, d.split_id, d.val_fraction, d.test_fraction, list(d.classes) or None, cfg.seed)
    return index.rows, index.classes, index.problems


def preprocess(
    config: Config | str | Path | None = None,
    run_dir: str | Path = "runs/default",
    overrides: Sequence[str] = (),
    manifest: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    runner: str = "local",
    beam_options: Sequence[str] = (),
) -> dict:
    """Cache features for every clip of the dataset into run_dir/features; returns the index.json dict.

    Resumable: shards that exist are kept; re-running a finished run does nothing.
    runner: `local` (a process pool on this machine) or `beam` (an Apache Beam pipeline; beam_options are
    its KEY=VALUE pipeline options, e.g. runner=DataflowRunner); both write the same files. run_dir may
    be a URL (gs://...) that TensorFlow's file systems reach.
    """
    cfg = config if isinstance(config, Config) else load_config(config, overrides)
    if runner == "beam":  # fail before any work when Beam is not installed or an option is wrong
        from pipeline.preprocess_beam import pipeline_options, run_beam

        beam_pipeline_options = pipeline_options(beam_options, cfg.preprocess.workers)
    elif runner != "local":
        raise UserError(f"--runner {runner}: expected local or beam")
    elif storage.is_url(cfg.data.root):
        raise UserError(f"data.root={cfg.data.root}: the local runner reads local folders; use --runner beam (its workers fetch clips from URLs)")
    from pipeline.features.encoders import check_encoder_weights  # imports Keras

    check_encoder_weights(cfg.preprocess.encoder, cfg.preprocess.weights)  # also for `none`: the hybrid model starts from it
    key = cache_key(cfg)
    run_dir = storage.path(run_dir)
    if _check_run_dir(run_dir, cfg, key, overwrite):
        index = json.loads((run_dir / "features" / "index.json").read_text())
        print(f"{run_dir}: features already complete ({sum(index['counts'].values())} clips); nothing to do")
        return index
    rows, classes, problems = resolve_rows(cfg, manifest)
    if not rows:
        raise UserError(f"{cfg.data.root}: no usable clips ({len(problems)} files skipped, e.g. {problems[0][0]}: {problems[0][1]})"
                        if problems else f"{cfg.data.root}: no usable clips")
    features_dir = run_dir / "features"
    features_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", to_yaml(cfg))
    atomic_write_json(features_dir / "preprocess_state.json", key)
    label_ids = {c: i for i, c in enumerate(classes)}
    shards = plan_shards(rows, cfg.preprocess.shard_size)
    todo = [s for s in shards if not (features_dir / s.name).is_file()]

    processor = ClipProcessor(cfg, features_dir)
    processor.setup()
    start = time.time()
    done_before = sum(len(s.rows) for s in shards) - sum(len(s.rows) for s in todo)
    if runner == "beam":
        run_beam(cfg, todo, features_dir, label_ids, beam_pipeline_options)
    else:
        _run_local(cfg, processor, todo, features_dir, label_ids, done_before, len(rows), progress)
    seconds = time.time() - start

    index = _finalize(cfg, key, run_dir, shards, classes, problems, processor)
    n_done, n_skipped = sum(index["counts"].values()), len(index["errors"])
    processed = sum(len(s.rows) for s in todo)
    rate = processed / seconds if seconds > 0 else 0.0
    print(f"preprocess: {n_done} clips cached, {n_skipped} skipped (see {run_dir / 'preprocess_errors.csv'}), "
          f"{seconds:.1f} s, {rate:.1f} clips/s")
    return index


def _run_local(cfg, processor, todo, features_dir, label_ids, done_before, total, progress) -> None:
    """Run the clips through a process pool, write each shard when complete.

    With the TFLite encoder backend each worker handles whole clips: it decodes one, encodes its
    frames with its own interpreter (cores / workers threads), and sends back the features (~50 KB)
    instead of the frames (~3 MB at 20 x 224 px). Decoding in workers while a multi-threaded
    interpreter encoded in this process put more busy threads than cores on the machine and
    pickled every frame across processes: measured 3.1x the decode/encode floor on 2 cores.
    The Keras backend (and workers: 0) still decodes in the pool and encodes here, in batches.
    """
    from pipeline.progress import progress_bar

    p = cfg.preprocess
    jobs = [(ClipJob(str(Path(cfg.data.root)), row, label_ids[row.label]), cfg) for s in todo for row in s.rows]
    bar = progress_bar(total=total, initial=done_before, unit="clip", desc="preprocess", disable=not progress)
    workers = p.workers if len(jobs) > 1 else 0
    encode_in_workers = workers > 0 and processor.encoder is not None and p.encoder_backend == "tflite"
    if encode_in_workers:
        threads = max(1, available_cpus() // workers)
        pool = multiprocessing.get_context("spawn").Pool(
            workers, initializer=_init_clip_worker, initargs=(cfg, str(processor.encoder_dir), threads))
        work, encode = _clip_worker, list  # results arrive encoded
        window = 2 * workers
    else:
        pool = multiprocessing.get_context("spawn").Pool(workers) if workers else None
        work, encode = _decode_worker, processor.encode
        # At most a few batches of decoded clips wait for the encoder: memory stays flat however many clips.
        window = max(2 * workers, 2 * -(-p.encoder_batch // p.num_frames))
    results = bounded_imap(pool, work, jobs, window) if pool else map(work, jobs)
    try:
        for shard in todo:
            examples, errors, pending = [], [], []
            for _ in shard.rows:
                job, decoded, error = next(results)
                if error:
                    errors.append((job.row.path, error))
                else:
                    pending.append((job, decoded))
                if len(pending) * p.num_frames >= p.encoder_batch:
                    examples += [serialize_example(j, a) for (j, _), a in zip(pending, encode([d for _, d in pending]))]
                    pending = []
                bar.update(1)
            if pending:
                examples += [serialize_example(j, a) for (j, _), a in zip(pending, encode([d for _, d in pending]))]
            write_shard(features_dir, shard, examples, errors)
    finally:
        bar.close()
        if pool:
            pool.terminate()


def available_cpus() -> int:
    """CPUs this process may run on (the affinity mask: a container or `taskset` may allow fewer than os.cpu_count())."""
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


_worker_processor: ClipProcessor | None = None  # one per pool worker process (see _init_clip_worker)


def _init_clip_worker(cfg: Config, encoder_dir: str, threads: int) -> None:
    """Pool initializer: load the run's encoder once per worker process (the saved weights, so it is the same encoder)."""
    global _worker_processor
    _worker_processor = ClipProcessor(cfg, encoder_dir, encoder_threads=threads)
    _worker_processor.setup()


def _clip_worker(args: tuple[ClipJob, Config]) -> tuple[ClipJob, dict | None, str | None]:
    """decode + encode one clip in a pool worker: (job, arrays with frame_features instead of frames, error)."""
    job, decoded, error = _decode_worker(args)
    return job, None if error else _worker_processor.encode([decoded])[0], error


def bounded_imap(pool, fn, items, window: int):
    """Ordered pool.imap with at most `window` tasks in flight (Pool.imap queues every task at once,
    and its finished results pile up in memory while the consumer is slower than the workers)."""
    items = iter(items)
    pending = collections.deque(pool.apply_async(fn, (item,)) for item in itertools.islice(items, window))
    while pending:
        result = pending.popleft().get()
        for item in itertools.islice(items, 1):
            pending.append(pool.apply_async(fn, (item,)))
        yield result


def write_shard(features_dir: Path, shard: Shard, examples: Iterable[bytes], errors: list[tuple[str, str]]) -> None:
    """Write the shard's examples and its errors; the .tfrecord appears (atomically) last."""
    import tensorflow as tf

    examples = list(examples)
    atomic_write_json(features_dir / (shard.name + ".json"), {"examples": len(examples), "errors": errors})
    tmp = temp_path(features_dir / shard.name)
    with tf.io.TFRecordWriter(str(tmp)) as writer:
        for example in examples:
            writer.write(example)
    tmp.replace(features_dir / shard.name)


def _finalize(cfg: Config, key: dict, run_dir: Path, shards: list[Shard], classes: list[str], problems, processor: ClipProcessor) -> dict:
    features_dir = run_dir / "features"
    counts = {s: 0 for s in SPLITS}
    errors = list(problems)
    for shard in shards:
        meta = json.loads((features_dir / (shard.name + ".json")).read_text())
        counts[shard.split] += meta["examples"]
        errors += [tuple(e) for e in meta["errors"]]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "reason"])
    writer.writerows(errors)
    atomic_write_text(run_dir / "preprocess_errors.csv", buffer.getvalue())

    p = cfg.preprocess
    dim = processor.encoder.dim if processor.encoder is not None else None
    index = {
        **key,
        "classes": classes,
        "counts": counts,
        "shards": {s: [sh.name for sh in shards if sh.split == s] for s in SPLITS},
        "features": feature_schema(cfg, dim),
        "encoder": {"name": p.encoder, "weights": p.weights, "image_size": p.image_size, "backend": p.encoder_backend,
                    "weights_file": "encoder.weights.h5" if dim else None},
        "sampling": {"strategy": p.sampling, "num_frames": p.num_frames, "num_clips": p.num_clips},
        "audio": {k: getattr(p, k) for k in ("sample_rate", "audio_seconds", "n_mfcc", "n_fft", "hop_length", "n_mels", "fmin", "fmax", "deltas", "normalize")},
        "errors": [list(e) for e in errors],
    }
    if "audio" in p.modalities:
        index["mfcc_stats"] = _mfcc_stats(features_dir, index)
    atomic_write_json(features_dir / "index.json", index)
    return index


def _mfcc_stats(features_dir: Path, index: dict) -> dict:
    """Mean and std per MFCC coefficient over the valid frames of the training split (dataset normalisation)."""
    import tensorflow as tf

    c = index["features"]["mfcc"]["shape"][1]
    total, sq, n = np.zeros(c), np.zeros(c), 0
    spec = {"mfcc": tf.io.VarLenFeature(tf.float32), "mfcc_length": tf.io.FixedLenFeature([], tf.int64)}
    for name in index["shards"]["train"]:
        for record in tf.data.TFRecordDataset(str(features_dir / name)):
            ex = tf.io.parse_single_example(record, spec)
            mfcc = tf.sparse.to_dense(ex["mfcc"]).numpy().reshape(-1, c)[: int(ex["mfcc_length"])]
            total += mfcc.sum(0)
            sq += (mfcc.astype(np.float64) ** 2).sum(0)
            n += len(mfcc)
    mean = total / max(n, 1)
    std = np.sqrt(np.maximum(sq / max(n, 1) - mean**2, 1e-12))
    return {"mean": mean.tolist(), "std": std.tolist(), "frames": n}
