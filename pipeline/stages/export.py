"""Export stage: a trained run -> RUN/export/, the files an app ships, with measured parity.

    RUN/model.keras, config.yaml, features/index.json
        --InferenceGraphs (pipeline.deploy.graph)--> the deployable graph: frames uint8 [1, T, S, S, 3],
              frame_lengths int32 [1], waveform float32 [1, N], num_samples int32 [1] -> probabilities [1, K]
        --run_conversions (pipeline.deploy.convert: child processes)--> saved_model/, model_<format>.tflite
        --measure_parity (pipeline.deploy.parity)--> parity.json: agreement, accuracy, latency, acceptance checks
        --publish--> RUN/export/

    RUN/export/
      saved_model/            serving signature `serving_default`: the inputs above (any batch) -> {'probabilities'}
      model_float.tflite      float32
      model_float16.tflite    float16 weights
      model_dynamic.tflite    int8 weights, float activations (dynamic range)
      model_int8.tflite       int8 weights and activations (uint8 frames stay uint8, float in/out)
      head_float.tflite       feature-level runs: the RNN head alone (frame_features / mfcc in)
      model_mediapipe.tflite  speech runs: waveform [1, N] alone in, one subgraph (RNNs unrolled), for MediaPipe Tasks'
                              AudioClassifier
      model_stream_float.tflite, model_stream_int8.tflite
                              streamable runs (model.streamable): signature `step`, one audio hop and every state in,
                              probabilities and the new states out (pipeline.models.streaming)
      labels.txt  preprocessing.json  parity.json  (convert.log: what the converter printed, when it did)
    Every .tflite file carries TFLite Model Metadata (deploy.metadata): inputs described, labels.txt zipped in.

Nothing good is replaced by something worse:
- the export is built in RUN/.export.tmp-PID and renamed into place, so RUN/export is never half-overwritten;
  the folders a killed export leaves (.export.tmp-PID, .export.old-PID) are removed by the next one;
- a format that fails costs that format a one-line error in parity.json; an export in which no format
  succeeds raises UserError (conversion comes first, so before minutes of parity measurement) and leaves
  RUN/export as it was;
- an export of some formats (`--formats float`) keeps the files of the others from the previous export, with
  their parity.json entries, unless model.keras is newer than them (then they are dropped, with one line).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.config import EXPORT_FORMATS
from pipeline.deploy.convert import (
    LOG_FILE,
    REPRESENTATIVE_FILE,
    STATUS_FILE,
    STREAM_REPRESENTATIVE_FILE,
    run_conversions,
    write_representative_data,
)
from pipeline.deploy.graph import STREAM_FORMATS, TFLITE_FILES, InferenceGraphs, preprocessing_spec
from pipeline.deploy.parity import checks, measure_parity, parity_table
from pipeline.deploy.tflite_read import tflite_ops, tflite_weight_bytes
from pipeline.errors import UserError
from pipeline.files import atomic_write_json, atomic_write_text
from pipeline.rundir import pid_alive, read_json

TARGETS = ("saved_model", "float", "head_float", "stream_float", "mediapipe", "float16", "dynamic", "int8", "stream_int8")  # what a child converts, in this order
BROUGHT_BY = {"head_float": "float", "stream_float": "float", "mediapipe": "float", "stream_int8": "int8"}  # companion file -> its format
WORK_PREFIX, OLD_PREFIX = ".export.tmp-", ".export.old-"  # + the PID of the export that made them


def check_formats(formats: Sequence[str] | str) -> list[str]:
    """A list or comma-separated string of format names -> the list, in EXPORT_FORMATS order."""
    names = [f.strip() for f in formats.split(",")] if isinstance(formats, str) else [str(f).strip() for f in formats]
    unknown = [f for f in names if f not in EXPORT_FORMATS]
    if unknown or not names:
        problem = f"unknown format {unknown[0]!r}" if unknown else "none given"
        raise UserError(f"export formats: {problem}; known: {', '.join(EXPORT_FORMATS)}")
    return [f for f in EXPORT_FORMATS if f in names]


def export(run_dir: str | Path, formats: Sequence[str] | str | None = None, progress: bool = True,
           allow_unfinished: bool = False) -> dict:
    """Export a trained run to RUN/export/ (see the module docstring); returns the parity.json dict.

    formats: names from saved_model, float, float16, dynamic, int8 (default: the run's export.formats).
    A format that fails (converter error or crash, no calibration clips for int8) is reported in
    parity.json['errors'] with one line; the others are still written. None written: UserError.
    allow_unfinished: export a model whose training did not finish (no train_done.json).
    """
    run_dir = Path(run_dir)
    graphs = InferenceGraphs(run_dir, allow_unfinished)
    cfg = graphs.cfg
    formats = check_formats(formats if formats is not None else cfg.export.formats)
    classes = graphs.index["classes"]
    with graphs.run.lock("export"):
        remove_abandoned_work(run_dir)

        out_dir = graphs.run.export
        work = run_dir / f"{WORK_PREFIX}{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        try:
            atomic_write_text(work / "labels.txt", "".join(f"{c}\n" for c in classes))
            atomic_write_json(work / "preprocessing.json", preprocessing_spec(graphs, classes))
            errors: dict[str, str] = {}
            targets = [t for t in TARGETS if t in formats or t in companions(graphs, formats)]
            if "int8" in targets:
                try:
                    count = write_representative_data(cfg, work / REPRESENTATIVE_FILE, cfg.export.representative_samples,
                                                      [spec.name for spec in graphs.inputs()])
                    if progress:
                        print(f"export: int8 calibration on {count} inputs from training clips", flush=True)
                except UserError as e:
                    errors["int8"] = str(e)
                    targets = [t for t in targets if t not in ("int8", "stream_int8")]
                    if progress:
                        print(f"export: int8 failed: {e}", flush=True)

            # convert first: when nothing converts, no time goes to measuring the Keras model
            conversions = run_conversions(run_dir, work, targets, progress)
            errors.update({t: r["error"] for t, r in conversions.items() if "error" in r})
            for scratch in (work / REPRESENTATIVE_FILE, work / STREAM_REPRESENTATIVE_FILE, work / STATUS_FILE):
                scratch.unlink(missing_ok=True)
            log = work / LOG_FILE
            if log.is_file() and not log.read_text().strip():
                log.unlink()
            if all(f in errors for f in formats):
                raise UserError(_nothing_written(formats, errors, log, graphs.run.export_failed_log, out_dir))

            written = [t for t in targets if t in TFLITE_FILES and "error" not in conversions.get(t, {"error": ""})]
            ops = {t: tflite_ops(work / TFLITE_FILES[t]) for t in written}
            parity = measure_parity(graphs, work, written, progress)
            result = {
                "run_dir": str(run_dir),
                "model": cfg.model.name,
                "formats_requested": formats,
                "errors": errors,
                **({"parity_error": parity.pop("error")} if "error" in parity else {}),
                **parity,
            }
            for t in written:
                entry = result.setdefault("formats", {}).setdefault(t, {"file": TFLITE_FILES[t], "bytes": (work / TFLITE_FILES[t]).stat().st_size})
                entry.update({"convert_seconds": conversions[t]["seconds"], "weight_bytes": tflite_weight_bytes(work / TFLITE_FILES[t]), "ops": ops[t],
                              "flex_ops": sorted(name for name in ops[t] if name.startswith("Flex"))})
            redone = formats + companions(graphs, formats)  # written now, or failed now: the old files go
            kept = keep_previous_formats(out_dir, work, redone, graphs.run.model, result)
            result["checks"] = checks(result)
            atomic_write_json(work / "parity.json", result)
            publish(work, out_dir)
            graphs.run.export_failed_log.unlink(missing_ok=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        if progress:
            print(parity_table(result))
            print(f"export: {len([t for t in formats if t not in errors])} of {len(formats)} formats -> {out_dir}"
                  + (f"; failed: {', '.join(errors)}" if errors else "") + (f"; kept from the previous export: {', '.join(kept)}" if kept else ""))
        return result


def companions(graphs: InferenceGraphs, formats: Sequence[str]) -> list[str]:
    """The files a format brings along: float the head (feature-level runs) and the MediaPipe file (speech runs);
    float and int8 their streaming files (streamable runs)."""
    extra = ["head_float"] if "float" in formats and not graphs.end_to_end else []
    extra += ["mediapipe"] if "float" in formats and graphs.audio_only else []
    return extra + [STREAM_FORMATS[f] for f in formats if f in STREAM_FORMATS and graphs.streamable]


def _nothing_written(formats: list[str], errors: dict[str, str], log: Path, failed_log: Path, out_dir: Path) -> str:
    """The one-line error of an export in which every format failed; the converter's output is kept in failed_log."""
    if log.is_file():
        shutil.copyfile(log, failed_log)
    where = f"; converter output in {failed_log}" if log.is_file() else ""
    previous = f"{out_dir} left as it was" if out_dir.is_dir() else "nothing written"
    return f"export: no format written ({'; '.join(f'{f}: {errors[f]}' for f in formats)}){where}; {previous}"


def keep_previous_formats(out_dir: Path, work: Path, redone: Sequence[str], model: Path, result: dict) -> list[str]:
    """Copy into work the files of the previous export's formats that this export did not redo, and their
    parity.json entries into result; returns the formats kept.

    Files older than model.keras (retrained since) are not kept: they are dropped with one line on stderr.
    """
    # each format's file (saved_model: its saved_model.pb), whose time says which model it was exported from
    old_files = {t: out_dir / TFLITE_FILES.get(t, "saved_model/saved_model.pb") for t in TARGETS if t not in redone}
    old_files = {t: path for t, path in old_files.items() if path.is_file()}
    result["kept_from_previous_export"] = []
    if not old_files:
        return []
    stale = [t for t, path in old_files.items() if path.stat().st_mtime_ns < model.stat().st_mtime_ns]
    if stale:
        again = dict.fromkeys(BROUGHT_BY.get(t, t) for t in stale)
        print(f"export: dropped {', '.join(stale)} of the previous export: {model.name} is newer than them "
              f"(export them again with --formats {','.join(again)})", file=sys.stderr, flush=True)
    try:
        previous = read_json(out_dir / "parity.json") if (out_dir / "parity.json").is_file() else {}
    except UserError:  # damaged: the files are kept, with the entries that can be read off them
        previous = {}
    kept = [t for t in old_files if t not in stale]
    for t in kept:
        if t == "saved_model":
            shutil.copytree(old_files[t].parent, work / "saved_model")
            if "saved_model" in previous:
                result["saved_model"] = previous["saved_model"]
        else:
            shutil.copy2(old_files[t], work / TFLITE_FILES[t])
            entry = previous.get("formats", {}).get(t, {"file": TFLITE_FILES[t], "bytes": old_files[t].stat().st_size})
            result.setdefault("formats", {})[t] = entry
    if "formats" in result:
        result["formats"] = {t: result["formats"][t] for t in TARGETS if t in result["formats"]}
    result["kept_from_previous_export"] = kept
    return kept


def publish(work: Path, out_dir: Path) -> None:
    """Replace out_dir by work with renames only: readers see the old export or the new one, never a mix."""
    old = out_dir.with_name(f"{OLD_PREFIX}{os.getpid()}")
    if out_dir.exists():
        out_dir.rename(old)
    work.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)


def remove_abandoned_work(run_dir: Path) -> list[Path]:
    """Remove the RUN/.export.tmp-PID and .export.old-PID folders of exports that were killed (PID not running).

    An export killed inside `publish`, between its two renames, leaves no RUN/export but the previous one
    in .export.old-PID: that one is renamed back to RUN/export instead. Returns the folders removed or restored.
    """
    out_dir = run_dir / "export"
    abandoned = []
    for path in sorted(run_dir.glob(".export.*-*")):
        prefix, _, pid = path.name.rpartition("-")
        if f"{prefix}-" in (WORK_PREFIX, OLD_PREFIX) and pid.isdigit() and not pid_alive(int(pid)):
            abandoned.append(path)
    for path in abandoned:
        if path.name.startswith(OLD_PREFIX) and not out_dir.exists():
            path.rename(out_dir)
        else:
            shutil.rmtree(path, ignore_errors=True)
    return abandoned
