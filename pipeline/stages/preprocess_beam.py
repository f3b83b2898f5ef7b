"""The preprocess stage's per-clip work as an Apache Beam pipeline (`actrec preprocess --runner beam`).

    features/.beam_plan.jsonl  one line per clip: shard name, position in the shard, manifest row, label id
        --ReadPlan (tf.io.gfile)--> clip jobs --Reshuffle (spreads clips over the workers)-->
        --ProcessClip: ClipEncoder.process = decode_clip + FrameEncoder + serialize_example, the same
                       per-clip function as the local runner; the encoder is loaded once per worker (setup)-->
          (shard name, (position, clip path, serialized tf.train.Example | None, error | None))
        --GroupByKey(shard)--> WriteShard: write_shard(...) with the examples in row order; .tfrecord renamed last

The driver (the preprocess stage) does everything else exactly as for the local runner: it
plans the shards, saves the encoder weights the workers load, skips shards that already exist (resume),
and after the pipeline writes index.json and preprocess_errors.csv. So both runners write the same files.

Locally the pipeline runs on Beam's DirectRunner with `preprocess.workers` processes. On a cluster runner
(Dataflow, Flink, Spark) the run dir must be shared storage every worker reaches (a gs:// bucket or a
shared mount), and so must data.root (a URL root is read through tf.io.gfile; give --manifest then).
"""

from __future__ import annotations

import difflib
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Iterator, Sequence

from pipeline import storage
from pipeline.config import Config
from pipeline.datasets import ManifestRow
from pipeline.errors import UserError
from pipeline.features.records import ClipJob, Shard, write_shard
from pipeline.files import atomic_write_text
from pipeline.runtime.encode import ClipEncoder, available_cpus

_root_logger_level = logging.getLogger().level
logging.getLogger().setLevel(logging.ERROR)  # Beam's import warns about Google Cloud clients it does not need here
try:
    import apache_beam as beam
    from apache_beam.metrics import Metrics
    from apache_beam.options.pipeline_options import PipelineOptions
except ImportError:
    raise UserError("--runner beam needs Apache Beam, which is not installed: pip install -e .[beam]") from None
finally:
    logging.getLogger().setLevel(_root_logger_level)

PLAN_FILE = ".beam_plan.jsonl"
COUNTERS = "actrec"


# ----------------------------------------------------------------------------- options


def pipeline_options(items: Sequence[str], workers: int) -> PipelineOptions:
    """Beam pipeline options from `--beam-option KEY=VALUE` items over the local defaults.

    Defaults: DirectRunner with `workers` processes (multi_processing; 0 workers = in this process).
    KEY is a Beam command-line option without its dashes; a flag takes VALUE true or false.
    Unknown keys and malformed items are one-line UserErrors (Beam itself would drop or exit on them).
    """
    takes_value = beam_option_names()
    options = {
        "runner": "DirectRunner",
        "direct_num_workers": str(max(1, workers)),
        "direct_running_mode": "multi_processing" if workers > 0 else "in_memory",
        "default_sdk_harness_log_level": "ERROR",  # the worker processes' per-bundle INFO lines are not for users
    }
    chosen = []
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key:
            raise UserError(f"--beam-option {item!r}: expected KEY=VALUE, e.g. --beam-option runner=DataflowRunner")
        if key not in takes_value:
            close = difflib.get_close_matches(key, list(takes_value), n=1)
            raise UserError(f"--beam-option {key}: not a Beam pipeline option" + (f" (did you mean '{close[0]}'?)" if close else ""))
        if not takes_value[key] and value.lower() not in ("true", "false"):
            raise UserError(f"--beam-option {key}: a flag; expected true or false, got {value!r}")
        options.pop(key, None)  # a user's value replaces the local default
        chosen.append((key, value))  # in order, repeats kept (e.g. several extra_package)
    flags = [f"--{key}" if not takes_value[key] else f"--{key}={value}"
             for key, value in [*options.items(), *chosen] if takes_value[key] or value.lower() == "true"]
    return PipelineOptions(flags)


def beam_option_names() -> dict[str, bool]:
    """Every Beam command-line option name (without dashes) -> whether it takes a value (False: a flag)."""
    parsers = []
    PipelineOptions([]).get_all_options(add_extra_args_fn=parsers.append)  # the parser Beam builds from all option classes
    return {name.lstrip("-"): action.nargs != 0
            for action in parsers[0]._actions for name in action.option_strings if name.startswith("--")}


# ----------------------------------------------------------------------------- the pipeline


def run_beam(cfg: Config, todo: Sequence[Shard], features_dir, label_ids: dict[str, int], options: PipelineOptions) -> dict:
    """Process the clips of the `todo` shards on Beam and write those shards into features_dir.

    features_dir: a Path or storage.GFilePath every worker can reach; its encoder.weights.h5 must exist
    (the driver's ClipEncoder.setup() saved it). Returns the pipeline's counters
    {'clips', 'skipped', 'encoder_loads', 'seconds'}.
    """
    if not todo:
        return {"clips": 0, "skipped": 0, "encoder_loads": 0, "seconds": 0.0}
    logging.getLogger("apache_beam").setLevel(logging.ERROR)
    root = cfg.data.root if storage.is_url(cfg.data.root) else str(Path(cfg.data.root).absolute())
    plan_file = features_dir / PLAN_FILE
    lines = [json.dumps({"shard": shard.name, "position": i, "path": row.path, "label": row.label, "split": row.split,
                         "group": row.group, "start": row.start, "label_id": label_ids[row.label]})
             for shard in todo for i, row in enumerate(shard.rows)]
    atomic_write_text(plan_file, "\n".join(lines) + "\n")
    headers = {shard.name: (shard.split, shard.index, shard.count) for shard in todo}
    all_options = options.get_all_options()
    local = all_options["runner"] in ("DirectRunner", "FnApiRunner", "PrismRunner", "SwitchingDirectRunner")
    # Locally the workers share this machine's cores; on a cluster each worker has its own machine.
    threads = max(1, available_cpus() // max(1, all_options["direct_num_workers"] or 1)) if local else None

    start = time.time()
    pipeline = beam.Pipeline(options=options)
    _ = (
        pipeline
        | "Plan" >> beam.Create([str(plan_file)])
        | "ReadPlan" >> beam.FlatMap(read_plan)
        | "SpreadClips" >> beam.Reshuffle()
        | "ProcessClip" >> beam.ParDo(ProcessClip(cfg, str(features_dir), root, threads))
        | "ByShard" >> beam.GroupByKey()
        | "WriteShard" >> beam.ParDo(WriteShard(str(features_dir), headers))
    )
    try:
        result = pipeline.run()
        result.wait_until_finish()
    except ImportError as e:  # e.g. DataflowRunner without apache-beam[gcp]
        raise UserError(f"Beam runner {all_options['runner']}: missing package ({e}); "
                        f"install the runner's extra, e.g. pip install 'apache-beam[gcp]==2.77.*' for Dataflow") from None
    counters = {c.key.metric.name: c.committed for c in result.metrics().query()["counters"]}
    plan_file.unlink(missing_ok=True)
    summary = {"clips": counters.get("clips", 0), "skipped": counters.get("skipped", 0),
               "encoder_loads": counters.get("encoder_loads", 0), "seconds": time.time() - start}
    print(f"beam: {summary['clips']} clips processed, {summary['skipped']} skipped, frame encoder loaded "
          f"{summary['encoder_loads']} time(s) (once per worker), {summary['seconds']:.1f} s")
    return summary


def read_plan(plan_file: str) -> Iterator[tuple[str, int, ClipJob]]:
    """The plan's lines as (shard name, position, ClipJob without root); read through tf.io.gfile on a cluster."""
    for line in storage.path(plan_file).read_text().splitlines():
        item = json.loads(line)
        row = ManifestRow(item["path"], item["label"], item["split"], item["group"], item.get("start"))
        yield item["shard"], item["position"], ClipJob("", row, item["label_id"])


class ProcessClip(beam.DoFn):
    """(shard, position, job) -> (shard, (position, clip path, example bytes | None, error | None)).

    setup() runs once per DoFn instance, which Beam keeps for the life of a worker: the frame encoder
    (and its TFLite conversion) is loaded there, not once per clip.
    """

    def __init__(self, cfg: Config, features_dir: str, root: str, encoder_threads: int | None = None):
        self.cfg = cfg
        self.features_dir = features_dir
        self.root = root
        self.encoder_threads = encoder_threads
        self.clips = Metrics.counter(COUNTERS, "clips")
        self.skipped = Metrics.counter(COUNTERS, "skipped")
        self.encoder_loads = Metrics.counter(COUNTERS, "encoder_loads")

    def setup(self):
        self.processor = ClipEncoder(self.cfg, self.features_dir, self.encoder_threads)
        self.processor.setup()
        self.loads_to_report = 1  # counters can only be updated inside a bundle

    def process(self, item):
        shard, position, job = item
        if self.loads_to_report:
            self.encoder_loads.inc(self.loads_to_report)
            self.loads_to_report = 0
        example, error = self._process(ClipJob(self.root, job.row, job.label_id))
        (self.skipped if error else self.clips).inc()
        yield shard, (position, job.row.clip_id, example, error)

    def _process(self, job: ClipJob) -> tuple[bytes | None, str | None]:
        import tensorflow as tf

        if not storage.is_url(job.root):
            return self.processor.process(job)
        # OpenCV and PyAV read local files: fetch the clip from the bucket first.
        with tempfile.TemporaryDirectory(prefix="actrec-clip-") as local_root:
            local = Path(local_root) / job.row.path
            local.parent.mkdir(parents=True, exist_ok=True)
            try:
                (storage.GFilePath(job.root) / job.row.path).copy_to(local)
            except tf.errors.OpError as e:  # missing object, no permission: this clip is skipped and listed
                return None, f"cannot read from data.root ({(str(e).splitlines() or [type(e).__name__])[0]})"
            return self.processor.process(ClipJob(local_root, job.row, job.label_id))


class WriteShard(beam.DoFn):
    """(shard name, results) -> the shard's .tfrecord and .json, examples in the shard's row order."""

    def __init__(self, features_dir: str, headers: dict[str, tuple[str, int, int]]):
        self.features_dir = features_dir
        self.headers = headers

    def process(self, item):
        name, results = item
        results = sorted(results, key=lambda r: r[0])
        examples = [example for _, _, example, error in results if error is None]
        errors = [(path, error) for _, path, _, error in results if error is not None]
        split, index, count = self.headers[name]
        write_shard(storage.path(self.features_dir), Shard(split, index, count, []), examples, errors)
        yield name
