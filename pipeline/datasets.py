"""Index a dataset folder into manifest rows: (path relative to root, label, split, group).

Recognised layouts:
  ucf101           <root>/<Class>/<clip> with classInd.txt, trainlist0N.txt, testlist0N.txt
                   (in root or root/ucfTrainTestlist), like UCF101.
  speech_commands  <root>/<word>/<speaker>_nohash_<n>.wav with validation_list.txt / testing_list.txt.
  folders          <root>/<class>/<clip> with no split files (HMDB51, Kinetics, your own data):
                   test and validation are drawn by group so no actor/speaker spans splits.

Groups: UCF101's `_gNN_`, Speech Commands' speaker id, else the file's stem (its own group).
Every file that cannot be used is reported with a reason, never silently dropped.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline import storage
from pipeline.errors import UserError
from pipeline.files import atomic_write_text
from pipeline.labels import BACKGROUND_NOISE, SILENCE, UNKNOWN, reject_clips
from pipeline.media import AUDIO_EXTENSIONS, VIDEO_EXTENSIONS, MediaError
from pipeline.media.probe import probe_media

MANIFEST_COLUMNS = ("path", "label", "split", "group", "start")
SPLITS = ("train", "val", "test")
# Speech Commands' own validation and test shares: where the background recordings of a dataset with
# split lists are cut for the _silence_ windows of each split.
SPEECH_COMMANDS_FRACTIONS = (0.1, 0.1)


@dataclass(frozen=True)
class ManifestRow:
    path: str  # relative to the dataset root, '/'-separated
    label: str
    split: str  # train | val | test
    group: str  # actor (UCF101 gNN) or speaker: never spans splits
    start: float | None = None  # seconds: a window of a long recording (a _silence_ cut), else the whole file

    @property
    def clip_id(self) -> str:
        """Unique per row: the path, plus the start of a window cut from a longer file."""
        return self.path if self.start is None else f"{self.path}@{self.start:.2f}"


@dataclass
class Index:
    root: Path
    layout: str
    classes: list[str]
    rows: list[ManifestRow] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): files left out
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): kept, but limited

    def counts(self) -> dict[str, int]:
        return {s: sum(r.split == s for r in self.rows) for s in SPLITS}


# ----------------------------------------------------------------------------- groups and layout

_UCF_GROUP = re.compile(r"_g(\d+)_c\d+", re.IGNORECASE)
_SPEAKER = re.compile(r"^(.+?)_nohash_")


def group_of(relpath: str) -> str:
    """The actor/speaker a clip belongs to, so splits can keep groups apart."""
    name = Path(relpath).name
    if m := _UCF_GROUP.search(name):
        return f"g{int(m.group(1)):02d}"
    if m := _SPEAKER.match(name):
        return m.group(1)
    return Path(relpath).stem


def _split_dir(root: Path) -> Path | None:
    for d in (root, root / "ucfTrainTestlist"):
        if (d / "classInd.txt").is_file() or list(d.glob("trainlist0[0-9].txt")):
            return d
    return None


def detect_layout(root: Path) -> str:
    if _split_dir(root) is not None:
        return "ucf101"
    if (root / "validation_list.txt").is_file() or (root / "testing_list.txt").is_file():
        return "speech_commands"
    return "folders"


def _media_files(root: Path, extensions: tuple[str, ...]) -> tuple[list[str], list[tuple[str, str]]]:
    """Relative paths of media files one folder down (<class>/<file>), and files left out with a reason."""
    found, problems = [], []
    real_root = root.resolve()

    def unreadable(error: OSError) -> None:  # os.walk would skip a folder it cannot list without a word
        folder = Path(error.filename) if error.filename else root
        problems.append((folder.relative_to(root).as_posix() + "/", f"folder not readable ({error.strerror or error})"))

    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))):
        for dirpath, dirnames, filenames in os.walk(class_dir, onerror=unreadable):
            dirnames.sort()
            for name in sorted(filenames):
                full = Path(dirpath) / name
                rel = full.relative_to(root).as_posix()
                if full.suffix.lower() not in extensions:
                    continue
                try:
                    target = full.resolve(strict=True)
                except (OSError, RuntimeError):  # dangling, or a loop (RuntimeError before Python 3.13)
                    problems.append((rel, "broken symbolic link (or a link loop)"))
                    continue
                if not target.is_relative_to(real_root):  # the file, or its class folder, links out of the root
                    problems.append((rel, "symlink to a file outside the dataset root"))
                    continue
                found.append(rel)
    return found, problems


def _read_lines(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]


def _escapes(rel: str) -> bool:
    p = Path(rel)
    return p.is_absolute() or ".." in p.parts


# ----------------------------------------------------------------------------- splits per layout


def _ucf101_splits(root: Path, split_id: int, files: list[str]) -> tuple[list[str] | None, dict[str, str], list[tuple[str, str]]]:
    """Class order from classInd.txt and {relpath: 'train'|'test'} from the split files."""
    d = _split_dir(root)
    problems = []
    classes = None
    if (d / "classInd.txt").is_file():
        classes = [ln.split(maxsplit=1)[1] for ln in _read_lines(d / "classInd.txt")]
    split_of: dict[str, str] = {}
    for split, name in (("train", f"trainlist{split_id:02d}.txt"), ("test", f"testlist{split_id:02d}.txt")):
        list_file = d / name
        if not list_file.is_file():
            raise UserError(f"{list_file}: split file not found (data.split_id={split_id}); expected {name} beside classInd.txt")
        for ln in _read_lines(list_file):
            rel = ln.split()[0]
            if _escapes(rel):
                problems.append((rel, f"listed in {name} but escapes the dataset root"))
                continue
            split_of[rel] = split
    on_disk = set(files)
    problems += [(rel, "listed in split files but missing on disk") for rel in sorted(set(split_of) - on_disk)]
    return classes, split_of, problems


def _speech_commands_splits(root: Path) -> dict[str, str]:
    split_of = {}
    for split, name in (("val", "validation_list.txt"), ("test", "testing_list.txt")):
        if (root / name).is_file():
            split_of.update({rel: split for rel in _read_lines(root / name) if not _escapes(rel)})
    return split_of


def _draw_groups(groups: list[str], fraction: float, rng: np.random.Generator) -> set[str]:
    """A seeded random subset of groups, at least one when fraction > 0 and there are 2+ groups."""
    groups = sorted(set(groups))
    if fraction <= 0 or len(groups) < 2:
        return set()
    n = min(len(groups) - 1, max(1, round(fraction * len(groups))))
    return set(rng.permutation(groups)[:n].tolist())


def _draw_clips_per_class(clips: list[str], fraction: float, rng: np.random.Generator) -> list[str]:
    """A seeded share of each class's clips (never all of a class's clips), at least one clip in all."""
    by_class: dict[str, list[str]] = {}
    for rel in clips:
        by_class.setdefault(rel.split("/", 1)[0], []).append(rel)
    counts = {c: min(len(v) - 1, round(fraction * len(v))) for c, v in by_class.items()}
    if not sum(counts.values()):
        largest = max(by_class, key=lambda c: len(by_class[c]))
        counts[largest] = min(1, len(by_class[largest]) - 1)
    return [rel for c, v in by_class.items() for rel in rng.permutation(v)[: counts[c]].tolist()]


# ----------------------------------------------------------------------------- main entry


def index_dataset(
    root: str | Path,
    kind: str = "video",
    layout: str = "auto",
    split_id: int = 1,
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
    classes: list[str] | None = None,
    seed: int = 0,
    probe: bool = True,
    needs_audio: bool = False,
) -> Index:
    """Walk a dataset folder and return its manifest rows plus every file left out and why.

    With probe=True each file's container is opened (headers only) so empty, truncated and
    non-media files are reported here rather than failing later. needs_audio: a video without a sound
    track is left out (a problem), not kept with a warning, before the validation groups are drawn.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: dataset folder not found (data.root)")
    layout = detect_layout(root) if layout == "auto" else layout
    extensions = AUDIO_EXTENSIONS if kind == "speech" else VIDEO_EXTENSIONS
    files, problems = _media_files(root, extensions)
    if not files:
        raise UserError(f"{root}: no {'audio' if kind == 'speech' else 'video'} files found in <root>/<class>/ folders (extensions {', '.join(extensions)})")

    listed_classes = None
    split_of: dict[str, str] = {}
    if layout == "ucf101":
        listed_classes, split_of, list_problems = _ucf101_splits(root, split_id, files)
        problems += list_problems
    elif layout == "speech_commands":
        split_of = _speech_commands_splits(root)

    folder_classes = sorted({rel.split("/", 1)[0] for rel in files})
    known = list(classes) if classes else (listed_classes or folder_classes)
    source = "data.classes" if classes else ("classInd.txt" if listed_classes else "the class folders")
    kept = []
    for rel in files:
        label = rel.split("/", 1)[0]
        if label not in known:
            problems.append((rel, f"unknown label '{label}' (not in {source})"))
        else:
            kept.append(rel)

    warnings: list[tuple[str, str]] = []
    if probe:  # before the split check, so a broken unlisted file is reported as broken
        kept, probe_problems, warnings = _probe_all(root, kept, kind)
        problems += probe_problems
        if needs_audio:
            silent = {rel for rel, _ in warnings}
            problems += [(rel, "no audio track (preprocess.modalities needs audio)") for rel in kept if rel in silent]
            kept, warnings = [rel for rel in kept if rel not in silent], []
    if layout == "ucf101":
        problems += [(rel, "not listed in any split file") for rel in kept if rel not in split_of]
        warnings = [(rel, reason) for rel, reason in warnings if rel in split_of]
        kept = [rel for rel in kept if rel in split_of]

    rng = np.random.default_rng(seed)
    if layout == "folders":
        test_groups = _draw_groups([group_of(r) for r in kept], test_fraction, rng)
        split_of = {r: "test" for r in kept if group_of(r) in test_groups}
    if layout != "speech_commands" or not any(s == "val" for s in split_of.values()):
        train_groups = [group_of(r) for r in kept if split_of.get(r, "train") == "train"]
        val_groups = _draw_groups(train_groups, val_fraction, rng)
        for r in kept:
            if split_of.get(r, "train") == "train" and group_of(r) in val_groups:
                split_of[r] = "val"
        if val_fraction > 0 and not val_groups and len(train_groups) > 1:
            # One training group: hold out some of its clips rather than none (validation then shares the
            # group's actors with training, which the preprocess stage says), never every one of them.
            split_of.update({r: "val" for r in _draw_clips_per_class(
                sorted(r for r in kept if split_of.get(r, "train") == "train"), val_fraction, rng)})

    rows = [ManifestRow(r, r.split("/", 1)[0], split_of.get(r, "train"), group_of(r)) for r in kept]
    return Index(root=root, layout=layout, classes=known, rows=rows, problems=problems, warnings=warnings)


def _probe_all(root: Path, rels: list[str], kind: str):
    def check(rel):
        try:
            return rel, probe_media(root / rel), None
        except MediaError as e:
            return rel, None, str(e)

    kept, problems, warnings = [], [], []
    with ThreadPoolExecutor(max_workers=4) as pool:
        for rel, info, error in pool.map(check, rels):
            if error:
                problems.append((rel, error))
            elif kind == "video" and not info.has_video:
                problems.append((rel, "no video stream"))
            elif kind == "speech" and not info.has_audio:
                problems.append((rel, "no audio track"))
            else:
                kept.append(rel)
                if kind == "video" and not info.has_audio:
                    warnings.append((rel, "no audio track (audio-visual runs classify it from video only; audio-only runs skip it)"))
    return kept, problems, warnings


# ----------------------------------------------------------------------------- manifest files


def write_manifest(rows: list[ManifestRow], path: str | Path) -> None:
    """Write manifest.csv atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(MANIFEST_COLUMNS)
    writer.writerows((r.path, r.label, r.split, r.group, "" if r.start is None else f"{r.start:.3f}") for r in rows)
    atomic_write_text(path, buffer.getvalue())


def read_manifest(path: str | Path) -> list[ManifestRow]:
    """Read manifest.csv; paths that escape the dataset root or unknown splits are errors."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: manifest not found (make one with `actrec index DIR --out {path.name}`)")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in MANIFEST_COLUMNS[:4] if c not in (reader.fieldnames or [])]  # start is optional
        if missing:
            raise UserError(f"{path}: missing column(s) {', '.join(missing)}; expected header {','.join(MANIFEST_COLUMNS)}")
        rows = []
        for line, rec in enumerate(reader, start=2):
            if _escapes(rec["path"]):
                raise UserError(f"{path}:{line}: path '{rec['path']}' escapes the dataset root")
            if rec["split"] not in SPLITS:
                raise UserError(f"{path}:{line}: split '{rec['split']}' is not one of {', '.join(SPLITS)}")
            try:
                start = float(rec["start"]) if rec.get("start") else None
            except ValueError:
                raise UserError(f"{path}:{line}: start '{rec['start']}' is not a number of seconds") from None
            if start is not None and not (math.isfinite(start) and start >= 0):
                raise UserError(f"{path}:{line}: start '{rec['start']}' must be a non-negative number of seconds")
            rows.append(ManifestRow(rec["path"], rec["label"], rec["split"], rec["group"] or group_of(rec["path"]), start))
    return rows


def resolve_rows(cfg, manifest: str | Path | None = None, own_dataset: bool = True
                 ) -> tuple[list[ManifestRow], list[str], list[tuple[str, str]]]:
    """(rows, classes, problems) from a manifest file or by indexing data.root.

    With data.keywords the rows become open-set (see open_set_rows). own_dataset: the run's own data, whose
    validation and test splits get the configured _silence_/_unknown_ shares and must have both; False for a
    folder a trained run is evaluated on (every clip counts, either source may be missing).
    """
    d = cfg.data
    manifest = manifest or d.manifest
    if not manifest and storage.is_url(d.root):
        raise UserError(f"data.root={d.root}: indexing reads local folders only; pass --manifest (from `actrec index`) to read clips from a URL")
    if manifest:
        rows = read_manifest(manifest)
        problems = []
        if d.keywords:
            silence = [] if any(r.label == SILENCE for r in rows) else silence_windows(
                Path(d.root), cfg.preprocess.audio_seconds, SPEECH_COMMANDS_FRACTIONS, problems)
            rows, classes = open_set_rows(rows + silence, d, cfg.seed, own_dataset, where=str(manifest))
        else:
            classes = list(d.classes) or sorted({r.label for r in rows})
        problems += [(r.path, f"unknown label '{r.label}' (not in data.classes)") for r in rows if r.label not in classes]
        return [r for r in rows if r.label in classes], classes, problems
    index = index_dataset(d.root, d.kind, d.layout, d.split_id, d.val_fraction, d.test_fraction, list(d.classes) or None, cfg.seed,
                          needs_audio=d.kind == "video" and "video" not in cfg.preprocess.modalities)
    if not d.keywords:
        return index.rows, index.classes, index.problems
    rows, classes = keyword_index_rows(index, d, cfg.preprocess.audio_seconds, cfg.seed, own_dataset)
    return rows, classes, index.problems


def first_clip_of_each_class(cfg, split: str = "test") -> dict[str, Path]:
    """{label: path} of the split's first whole file of each class, in row order (not _silence_ windows of a long
    recording): clips the demo sends through the exported model and assembles into a stream."""
    first: dict[str, Path] = {}
    for r in resolve_rows(cfg)[0]:
        if r.split == split and r.start is None:
            first.setdefault(r.label, Path(cfg.data.root) / r.path)
    return first


def keyword_index_rows(index: Index, d, seconds: float, seed: int, own_dataset: bool) -> tuple[list[ManifestRow], list[str]]:
    """An indexed folder's open-set (rows, classes): its word rows plus `seconds`-long _silence_ windows of its
    background recordings, split in time like Speech Commands' lists (or data.val/test_fraction for `folders`)."""
    fractions = SPEECH_COMMANDS_FRACTIONS if index.layout == "speech_commands" else (d.val_fraction, d.test_fraction)
    silence = silence_windows(index.root, seconds, fractions, index.problems)
    return open_set_rows(index.rows + silence, d, seed, own_dataset, where=str(index.root))


# ----------------------------------------------------------------------------- open-set keyword spotting


def background_files(root: Path) -> list[str]:
    """Relative paths of the sound files in <root>/_background_noise_/ (sorted; none if there is no such folder)."""
    folder = root / BACKGROUND_NOISE
    if not folder.is_dir():
        return []
    return sorted(f"{BACKGROUND_NOISE}/{p.name}" for p in folder.iterdir() if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())


def silence_windows(root: Path, seconds: float, fractions: tuple[float, float], problems: list[tuple[str, str]]) -> list[ManifestRow]:
    """_silence_ rows: back-to-back `seconds`-long windows of every background recording.

    Each recording is cut in time into train | val | test parts (fractions = (val, test) of its length, at
    its end), so no window of one split overlaps another's. Files too short or unreadable go to problems.
    """
    val_fraction, test_fraction = fractions
    rows = []
    for rel in background_files(root):
        try:
            duration = probe_media(root / rel).duration
        except MediaError as e:
            problems.append((rel, str(e)))
            continue
        if duration < seconds:
            problems.append((rel, f"background recording of {duration:.2f} s is shorter than one {seconds:g}-s _silence_ window"))
            continue
        edges = (0.0, duration * (1 - val_fraction - test_fraction), duration * (1 - test_fraction), duration)
        for split, begin, end in zip(SPLITS, edges[:-1], edges[1:]):
            count = int((end - begin) // seconds + 1e-9)
            rows += [ManifestRow(rel, SILENCE, split, f"{BACKGROUND_NOISE}/{Path(rel).stem}", round(begin + k * seconds, 3))
                     for k in range(count)]
    return rows


def open_set_rows(rows: list[ManifestRow], d, seed: int, own_dataset: bool, where: str) -> tuple[list[ManifestRow], list[str]]:
    """Speech Commands v2-12 labels: (rows, classes = data.keywords + _silence_ + _unknown_).

    rows: the indexed word rows plus the _silence_ windows. Keyword folders keep their label; every other word
    folder becomes _unknown_ (left out when data.unknown_fraction is 0, as _silence_ is with silence_fraction 0).
    Training keeps every _unknown_ and _silence_ row (train draws its shares per epoch); on the run's own data
    the validation and test splits keep a seeded subset giving them the same shares.
    """
    shares = {UNKNOWN: d.unknown_fraction, SILENCE: d.silence_fraction}
    classes = list(d.keywords) + [label for label in (SILENCE, UNKNOWN) if shares[label] > 0]
    missing = [w for w in d.keywords if w not in {r.label for r in rows}]
    if missing and own_dataset:  # a folder to evaluate on may hold some of the keywords
        raise UserError(f"{where}: keyword '{missing[0]}' has no folder of clips (data.keywords: {', '.join(d.keywords)})")
    mapped = []
    for r in rows:
        label = r.label if r.label in d.keywords or r.label == SILENCE else UNKNOWN
        if label in classes:
            mapped.append(r if label == r.label else dataclasses.replace(r, label=label))
    if own_dataset:
        found = {r.label for r in mapped}
        fixes = {SILENCE: f"add long noise recordings to {where}/{BACKGROUND_NOISE}/ or set data.silence_fraction: 0",
                 UNKNOWN: "add folders of other words or set data.unknown_fraction: 0"}
        for label in (SILENCE, UNKNOWN):
            if label in classes and label not in found:
                raise UserError(f"{where}: no {label} clips for data.{label.strip('_')}_fraction={shares[label]:g}; {fixes[label]}")
        mapped = _with_shares(mapped, shares, seed)
    return mapped, classes


def _with_shares(rows: list[ManifestRow], shares: dict[str, float], seed: int) -> list[ManifestRow]:
    """Validation and test rows with a seeded subset of each reject label: share x (its split's clips)."""
    drop = set()
    for split_no, split in enumerate(SPLITS[1:]):
        targets = reject_clips(sum(r.split == split and r.label not in shares for r in rows), shares)
        for label_no, label in enumerate(shares):
            pool = [i for i, r in enumerate(rows) if r.split == split and r.label == label]
            keep = min(len(pool), targets[label])
            rng = np.random.default_rng([seed, split_no, label_no])
            drop.update(rng.permutation(pool)[keep:].tolist())
    return [r for i, r in enumerate(rows) if i not in drop]


def check_splits(counts: dict[str, int], classes: list[str], where: str, train_per_class: dict[str, int] | None = None,
                 batch_size: int | None = None, val_needed: bool = True, train_groups: int | None = None) -> list[str]:
    """Refuse data that cannot train and test a classifier, before any work; return warnings worth printing.

    counts: clips per split; train_per_class: training clips per class (when known); batch_size: train.batch_size;
    val_needed: False when the user asked for no validation split (data.val_fraction 0); train_groups: how many
    groups (actors, speakers) the training split had to draw validation groups from, when known.
    """
    summary = f"train {counts.get('train', 0)} / val {counts.get('val', 0)} / test {counts.get('test', 0)}"
    if len(classes) < 2:
        raise UserError(f"{where}: {len(classes)} class ({', '.join(classes) or 'none'}): a classifier needs at least 2 "
                        f"(one <class>/ folder per class)")
    held_out = (f"only {train_groups} training group (actor/speaker), and validation needs groups of its own: add groups"
                if train_groups is not None and train_groups < 2 else "raise data.val_fraction or add groups (actors/speakers)")
    for split, fix in (("train", "add clips or groups"), ("val", held_out),
                       ("test", "raise data.test_fraction, add groups, or list test clips in the split files")):
        if not counts.get(split) and (split != "val" or val_needed):
            raise UserError(f"{where}: the {split} split is empty ({summary}); {fix}")
    if batch_size is not None and counts["train"] < batch_size:
        raise UserError(f"{where}: {counts['train']} training clips, fewer than one batch (train.batch_size={batch_size}); "
                        f"lower train.batch_size or add clips")
    missing = [c for c in classes if train_per_class is not None and not train_per_class.get(c)]
    warnings = [f"class '{c}' has no training clip: the model cannot learn it" for c in missing]
    if not counts.get("val"):
        warnings.append("no validation split (data.val_fraction is 0): training will select its epochs on the test split")
    return warnings
