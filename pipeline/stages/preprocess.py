"""Preprocess stage: raw clips -> cached features in TFRecord shards.

    dataset root --datasets.resolve_rows--> rows (path, label, split, group)
        --runtime.decode_clip (worker processes)--> frames uint8 [V, T, S, S, 3], waveform float32 [N] -> MFCC [F, C]
        --runtime.ClipEncoder (the run's frame CNN, batched)--> frame_features float32 [V, T, D]
        --features.records--> RUN/features/<split>-<i>-of-<n>.tfrecord, index.json, RUN/preprocess_errors.csv

Shards are fixed slices of the sorted rows, so an interrupted run resumes by skipping the
shards that exist (each is written under a temporary name and renamed when complete).
`ClipEncoder.process` is the per-clip function both runners use (local pool, Apache Beam).
"""

from __future__ import annotations

import collections
import csv
import hashlib
import io
import itertools
import multiprocessing
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline import storage
from pipeline.config import Config, features_hash, load_config, to_yaml
from pipeline.datasets import SPLITS, check_splits, resolve_rows
from pipeline.errors import UserError
from pipeline.features.records import ClipJob, Shard, feature_schema, plan_shards, serialize_example, write_shard
from pipeline.files import atomic_write_json, atomic_write_text
from pipeline.rundir import RunDir, absolute_paths, read_json
from pipeline.runtime.encode import ClipEncoder, available_cpus, decode_job


def cache_key(cfg: Config) -> dict:
    """What the cached features are checked against, saved in preprocess_state.json and index.json: the config hash,
    and a hash of the preprocess.weights file when there is one (retrained under the same path, as when stage 1 of
    the two-stage hybrid recipe runs again, it encodes other features). Read after check_encoder_weights passed."""
    p = cfg.preprocess
    from_file = p.encoder != "none" and p.weights not in (None, "imagenet")  # `none` caches raw frames, which no weights change
    digest = hashlib.sha256(storage.path(p.weights).read_bytes()).hexdigest()[:16] if from_file else None
    return {"config_hash": features_hash(cfg), "weights_sha256": digest}


# ----------------------------------------------------------------------------- the stage


def _check_run_dir(run: RunDir, cfg: Config, key: dict, overwrite: bool) -> bool:
    """True when the run dir already holds finished features for this config (key: its cache_key)."""
    for existing in (run.index_file, run.preprocess_state):
        if existing.is_file():
            state = read_json(existing)
            digest = key["weights_sha256"]  # runs cached before it was recorded are not checked against it
            changed = ("a different data/preprocess config" if state.get("config_hash") != key["config_hash"]
                       else f"another {cfg.preprocess.weights} (the file changed since)" if state.get("weights_sha256", digest) != digest
                       else None)
            if changed:
                if not overwrite:
                    raise UserError(f"{run}: features were made with {changed}; use --overwrite to redo them or choose another --run-dir")
                storage.rmtree(run.features)
                return False
            return existing == run.index_file
    return False


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
    cfg = absolute_paths(config if isinstance(config, Config) else load_config(config, overrides))
    if runner == "beam":  # fail before any work when Beam is not installed or an option is wrong
        from pipeline.stages.preprocess_beam import pipeline_options, run_beam

        beam_pipeline_options = pipeline_options(beam_options, cfg.preprocess.workers)
    elif runner != "local":
        raise UserError(f"--runner {runner}: expected local or beam")
    elif storage.is_url(cfg.data.root):
        raise UserError(f"data.root={cfg.data.root}: the local runner reads local folders; use --runner beam (its workers fetch clips from URLs)")
    from pipeline.features.encoders import check_encoder_weights  # imports Keras

    check_encoder_weights(cfg.preprocess.encoder, cfg.preprocess.weights)  # also for `none`: the hybrid model starts from it
    key = cache_key(cfg)
    run = RunDir(run_dir)
    with run.lock("preprocess"):
        if _check_run_dir(run, cfg, key, overwrite):
            index = run.read_index()
            print(f"{run}: features already complete ({sum(index['counts'].values())} clips); nothing to do")
            return index
        rows, classes, problems = resolve_rows(cfg, manifest)
        if not rows:
            raise UserError(f"{cfg.data.root}: no usable clips ({len(problems)} files skipped, e.g. {problems[0][0]}: {problems[0][1]})"
                            if problems else f"{cfg.data.root}: no usable clips")
        train_per_class = collections.Counter(r.label for r in rows if r.split == "train")
        # _silence_ windows (start set) share their recording's group across splits by design: cut apart in time
        train_groups = len({r.group for r in rows if r.split in ("train", "val") and r.start is None})
        if {r.group for r in rows if r.split == "val" and r.start is None} & {r.group for r in rows if r.split == "train" and r.start is None}:
            print(f"preprocess: warning: {train_groups} training group(s) only: validation clips were drawn from the same "
                  f"group(s), so validation accuracy is optimistic (add groups: actors or speakers)")
        for warning in check_splits(collections.Counter(r.split for r in rows), classes, str(cfg.data.root), train_per_class,
                                    val_needed=cfg.data.val_fraction > 0, train_groups=train_groups):
            print(f"preprocess: warning: {warning}")
        features_dir = run.features
        features_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run.config_file, to_yaml(cfg))
        atomic_write_json(run.preprocess_state, key)
        label_ids = {c: i for i, c in enumerate(classes)}
        shards = plan_shards(rows, cfg.preprocess.shard_size)
        todo = [s for s in shards if not (features_dir / s.name).is_file()]

        processor = ClipEncoder(cfg, features_dir)
        processor.setup()
        start = time.time()
        done_before = sum(len(s.rows) for s in shards) - sum(len(s.rows) for s in todo)
        if runner == "beam":
            run_beam(cfg, todo, features_dir, label_ids, beam_pipeline_options)
        else:
            _run_local(cfg, processor, todo, features_dir, label_ids, done_before, len(rows), progress)
        seconds = time.time() - start

        index = _finalize(cfg, key, run, shards, classes, problems, processor)
        n_done, n_skipped = sum(index["counts"].values()), len(index["errors"])
        processed = sum(len(s.rows) for s in todo)
        rate = processed / seconds if seconds > 0 else 0.0
        print(f"preprocess: {n_done} clips cached, {n_skipped} skipped (see {run.errors_csv}), "
              f"{seconds:.1f} s, {rate:.1f} clips/s")
    # Clips that failed to decode can still leave a split empty: say so now, not at `actrec train`.
    check_splits(index["counts"], classes, f"{run} (after {n_skipped} clips were skipped)", val_needed=cfg.data.val_fraction > 0)
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
                    errors.append((job.row.clip_id, error))
                else:
                    pending.append((job, decoded))
                    if "warning" in decoded:  # a video without sound in an audio-visual run: cached with audio absent
                        bar.write(f"preprocess: warning: {job.row.clip_id}: {decoded['warning']}", file=sys.stderr)
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


_worker_processor: ClipEncoder | None = None  # one per pool worker process (see _init_clip_worker)


def _init_clip_worker(cfg: Config, encoder_dir: str, threads: int) -> None:
    """Pool initializer: load the run's encoder once per worker process (the saved weights, so it is the same encoder)."""
    global _worker_processor
    _worker_processor = ClipEncoder(cfg, encoder_dir, encoder_threads=threads)
    _worker_processor.setup()


def _clip_worker(args: tuple[ClipJob, Config]) -> tuple[ClipJob, dict | None, str | None]:
    """decode + encode one clip in a pool worker: (job, arrays with frame_features instead of frames, error)."""
    job, decoded, error = decode_job(*args)
    return job, None if error else _worker_processor.encode([decoded])[0], error


def _decode_worker(args: tuple[ClipJob, Config]) -> tuple[ClipJob, dict | None, str | None]:
    return decode_job(*args)


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


def _finalize(cfg: Config, key: dict, run: RunDir, shards: list[Shard], classes: list[str], problems, processor: ClipEncoder) -> dict:
    features_dir = run.features
    counts = {s: 0 for s in SPLITS}
    errors = list(problems)
    train_per_class = {c: 0 for c in classes}  # cached training clips per class
    for shard in shards:
        meta = read_json(features_dir / (shard.name + ".json"))
        counts[shard.split] += meta["examples"]
        errors += [tuple(e) for e in meta["errors"]]
        if shard.split == "train":
            failed = {path for path, _ in meta["errors"]}
            for row in shard.rows:
                train_per_class[row.label] += row.clip_id not in failed
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "reason"])
    writer.writerows(errors)
    atomic_write_text(run.errors_csv, buffer.getvalue())

    p = cfg.preprocess
    dim = processor.encoder.dim if processor.encoder is not None else None
    index = {
        **key,
        "classes": classes,
        "counts": counts,
        "train_per_class": train_per_class,
        "shards": {s: [sh.name for sh in shards if sh.split == s] for s in SPLITS},
        "features": feature_schema(cfg, dim),
        "encoder": {"name": p.encoder, "weights": p.weights, "image_size": p.image_size, "backend": p.encoder_backend,
                    "weights_file": run.encoder_weights.name if dim and p.encoder != "motion" else None},
        "sampling": {"strategy": p.sampling, "num_frames": p.num_frames, "num_clips": p.num_clips},
        "audio": {k: getattr(p, k) for k in ("sample_rate", "audio_seconds", "n_mfcc", "n_fft", "hop_length", "n_mels", "fmin", "fmax", "deltas", "normalize")},
        "errors": [list(e) for e in errors],
    }
    if "audio" in p.modalities:
        index["mfcc_stats"] = _feature_stats(features_dir, index, "mfcc", "mfcc_length")
    if p.encoder == "motion" and "video" in p.modalities:  # the CNNs' features are normalised per frame (fusion.video_branch)
        index["frame_stats"] = _feature_stats(features_dir, index, "frame_features", "frame_lengths")
    atomic_write_json(run.index_file, index)
    return index


def _feature_stats(features_dir: Path, index: dict, feature: str, lengths: str) -> dict:
    """Mean and std per channel of `feature` over the valid steps of the training split (dataset normalisation).

    feature float32 [..., steps, C] per example (mfcc [F, C], frame_features [V, T, D]), lengths int [...] (its valid steps)
    """
    import tensorflow as tf

    *_, steps, c = index["features"][feature]["shape"]
    total, sq, n = np.zeros(c), np.zeros(c), 0
    spec = {feature: tf.io.VarLenFeature(tf.float32), lengths: tf.io.VarLenFeature(tf.int64)}
    for name in index["shards"]["train"]:
        for record in tf.data.TFRecordDataset(str(features_dir / name)):
            ex = tf.io.parse_single_example(record, spec)
            values = tf.sparse.to_dense(ex[feature]).numpy().reshape(-1, steps, c)
            valid = np.concatenate([v[:k] for v, k in zip(values, tf.sparse.to_dense(ex[lengths]).numpy())])
            total += valid.sum(0)
            sq += (valid.astype(np.float64) ** 2).sum(0)
            n += len(valid)
    mean = total / max(n, 1)
    std = np.sqrt(np.maximum(sq / max(n, 1) - mean**2, 1e-12))
    return {"mean": mean.tolist(), "std": std.tolist(), "frames": n}
