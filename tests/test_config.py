"""Configs: defaults, YAML + --set merging, type checks, one-line errors, docs in sync."""

import dataclasses
import time
from pathlib import Path

import pytest

from pipeline.config import (
    Config,
    allowed_range,
    config_path,
    feature_keys,
    features_hash,
    load_config,
    markdown_reference,
    parse_overrides,
    replace,
    section_hash,
    shipped_configs,
    to_yaml,
)
from pipeline.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "configs").glob("*.yaml"))


def test_defaults_are_frozen_dataclasses():
    cfg = load_config()
    assert isinstance(cfg, Config) and cfg.train.epochs == 40 and cfg.seed == 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.epochs = 3


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert cfg.data.root  # every shipped config names its dataset


def test_required_shipped_configs_exist():
    assert {p.name for p in SHIPPED} >= {"actions_av.yaml", "commands.yaml", "ucf101.yaml", "speech_commands.yaml"}


def test_speech_command_words_stay_strings():
    # YAML 1.1 would read yes/no/on/off as booleans
    cfg = load_config(ROOT / "configs/speech_commands.yaml")
    assert cfg.data.keywords == ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]


def test_overrides_are_typed():
    cfg = load_config(ROOT / "configs/commands.yaml", ["train.epochs=3", "train.learning_rate=1e-3", "model.cell=lstm", "preprocess.fmax=null"])
    assert cfg.train.epochs == 3 and cfg.train.learning_rate == pytest.approx(1e-3)
    assert cfg.model.cell == "lstm" and cfg.preprocess.fmax is None
    assert cfg.data.kind == "speech"  # the file's values survive overrides of other keys


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.epoch=3"], "unknown key 'train.epoch' (did you mean 'train.epochs'?)"),
        (["trian.epochs=3"], "unknown key 'trian' (did you mean 'train'?)"),
        (["train.epochs=abc"], "key 'train.epochs' expected int, got 'abc'"),
        (["model.cell=transformer"], "key 'model.cell' must be one of lstm, gru, simple_rnn"),
        (["train.epochs=0"], "key 'train.epochs' must be in [1, 100000]; got 0"),
        (["model.dropout=1.5"], "key 'model.dropout' must be in [0, 1); got 1.5"),
        (["model.dropout=1"], "key 'model.dropout' must be in [0, 1)"),
        (["model.recurrent_dropout=-0.1"], "key 'model.recurrent_dropout' must be in [0, 1)"),
        (["train.label_smoothing=2"], "key 'train.label_smoothing' must be in [0, 1); got 2.0"),
        (["data.val_fraction=1.5"], "key 'data.val_fraction' must be in [0, 1); got 1.5"),
        (["data.test_fraction=1"], "key 'data.test_fraction' must be in [0, 1)"),
        (["data.val_fraction=0.5", "data.test_fraction=0.5"], "keys 'data.val_fraction' + 'data.test_fraction' must add up to less than 1"),
        (["seed=-1"], "key 'seed' must be in [0, 4294967295]; got -1"),
        (["train.learning_rate=0"], "key 'train.learning_rate' must be > 0; got 0.0"),
        (["train.learning_rate=nan"], "key 'train.learning_rate' must be a finite number > 0; got nan"),
        (["train.learning_rate=.inf"], "key 'train.learning_rate' must be a finite number > 0; got inf"),
        (["preprocess.audio_seconds=inf"], "key 'preprocess.audio_seconds' must be a finite number in [0.1, 600]; got inf"),
        (["preprocess.audio_seconds=nan"], "key 'preprocess.audio_seconds' must be a finite number"),
        (["preprocess.audio_seconds=10000"], "key 'preprocess.audio_seconds' must be in [0.1, 600]; got 10000.0"),
        (["preprocess.fmax=-inf"], "key 'preprocess.fmax' must be a finite number > 0"),
        (["preprocess.fmax=100000"], "key 'preprocess.fmax' must be at most sample_rate / 2 = 8000 Hz; got 100000"),
        (["preprocess.fmin=8000"], "key 'preprocess.fmin' must be below fmax (8000 Hz)"),
        (["preprocess.n_mfcc=41"], "key 'preprocess.n_mfcc' must be at most n_mels (40); got 41"),
        (["preprocess.image_size=100000"], "key 'preprocess.image_size' must be in [16, 1024]"),
        (["train=5"], "--set: train: expected a mapping of keys (e.g. train.epochs), got 5"),
        (["data=[1, 2]"], "--set: data: expected a mapping of keys"),
        (["train="], "--set: train: expected a mapping of keys (e.g. train.epochs), got None"),
        (["train.epochs=&a [*a]"], "--set train.epochs: nested more than 32 levels deep"),
        (["preprocess.encoder=resnet"], "key 'preprocess.encoder' must be one of"),
        (["export.formats=[float,onnx]"], "unknown format 'onnx'"),
        (["train.epochs"], "expected key=value"),
        (["preprocess.audio_seconds=0.1", "preprocess.n_fft=2048"], "key 'preprocess.n_fft' (2048) is longer than the audio window"),
        (["model.name=av_fusion", "model.fusion=mid", "train.unimodal_first=true"],
         "key 'train.unimodal_first' needs model.name: av_fusion with model.fusion: backoff (a classifier per modality to freeze); got av_fusion with fusion mid"),
        (["model.name=av_fusion", "model.fusion=backoff", "train.unimodal_first=true", "train.modality_dropout=0.6"],
         "key 'train.unimodal_first' trains each modality alone before fusing: set train.modality_dropout and train.modality_loss to 0 (got 0.6 and 0)"),
        (["model.name=av_fusion", "model.fusion=backoff", "train.unimodal_first=true", "train.strategy=multi_worker"],
         "key 'train.unimodal_first' trains its stages on one machine"),
    ],
)
def test_bad_overrides_give_one_line(overrides, message):
    with pytest.raises(UserError) as e:
        load_config(None, overrides)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_bad_files_name_the_file(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: [1,\n")
    with pytest.raises(UserError, match=r"bad.yaml: line \d+ is not valid YAML"):
        load_config(bad)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("model:\n  celll: gru\n")
    with pytest.raises(UserError, match=r"unknown.yaml: unknown key 'model.celll' \(did you mean 'model.cell'\?\)"):
        load_config(unknown)
    tagged = tmp_path / "tagged.yaml"
    tagged.write_text("seed: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(tagged)  # safe loading: no object tags


def test_yaml_round_trip(tmp_path):
    cfg = load_config(ROOT / "configs/actions_av.yaml", ["train.epochs=7"])
    out = tmp_path / "resolved.yaml"
    out.write_text(to_yaml(cfg))
    assert load_config(out) == cfg


def test_hash_and_replace():
    cfg = load_config()
    assert section_hash(cfg.preprocess) == section_hash(load_config().preprocess)
    changed = replace(cfg, preprocess={"num_frames": 8})
    assert changed.preprocess.num_frames == 8 and cfg.preprocess.num_frames == 16
    assert section_hash(changed.preprocess) != section_hash(cfg.preprocess)


def test_parse_overrides_nests():
    assert parse_overrides(["a.b=1", "a.c=x", "d=[1, 2]"]) == {"a": {"b": 1, "c": "x"}, "d": [1, 2]}


def test_config_readme_in_sync():
    """configs/README.md documents every key; regenerate with `actrec config docs > configs/README.md`."""
    assert (ROOT / "configs/README.md").read_text() == markdown_reference()


def test_every_key_has_a_doc():
    cfg = load_config()
    for section in dataclasses.fields(Config):
        value = getattr(cfg, section.name)
        members = dataclasses.fields(value) if dataclasses.is_dataclass(value) else [section]
        for f in members:
            assert f.metadata.get("doc"), f"{section.name}.{f.name} has no doc"


# ----------------------------------------------------------------------------- ranges


def _numeric_fields():
    for section in dataclasses.fields(Config):
        members = dataclasses.fields(section.default_factory) if section.name != "seed" else [section]
        for f in members:
            key = f.name if section.name == "seed" else f"{section.name}.{f.name}"
            if str(f.type) in ("int", "float", "Optional[float]", "typing.Optional[float]"):
                yield key, f


def test_every_numeric_key_has_a_range():
    # Bounded on one side only: the learning rate (a huge one is reported as a NaN loss by train) and the mel
    # band edges (fmax is bounded by sample_rate / 2, fmin by fmax: checked across keys).
    one_sided = {"train.learning_rate", "preprocess.fmin", "preprocess.fmax"}
    for key, f in _numeric_fields():
        text = allowed_range(f.metadata)
        assert text, f"{key} has no range"
        assert (text[0] in "[(") or key in one_sided, f"{key}: {text} has no upper bound"


@pytest.mark.parametrize("key", [k for k, _ in _numeric_fields()])
def test_each_bound_is_enforced(key):
    f = dict(_numeric_fields())[key]
    meta, integer = f.metadata, str(f.type) == "int"
    outside = []
    if meta["minimum"] is not None:
        outside.append(meta["minimum"] - 1 if integer else meta["minimum"] - 0.01)
    if meta["above"] is not None:
        outside.append(meta["above"])
    if meta["maximum"] is not None:
        outside.append(meta["maximum"] + 1 if integer else meta["maximum"] * 1.01)
    if meta["below"] is not None:
        outside.append(meta["below"])
    assert outside
    for value in outside:
        with pytest.raises(UserError, match=f"key '{key}' must be (in|>|<)"):
            load_config(None, [f"{key}={value}"])
    if not integer:
        for value in ("inf", "-inf", "nan"):
            with pytest.raises(UserError, match=f"key '{key}' must be a finite number"):
                load_config(None, [f"{key}={value}"])


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_configs_keep_their_cross_key_rules(path):
    cfg = load_config(path)
    assert cfg.data.val_fraction + cfg.data.test_fraction < 1
    assert cfg.preprocess.n_mfcc <= cfg.preprocess.n_mels


# ----------------------------------------------------------------------------- hostile files


@pytest.mark.parametrize(
    "content, message",
    [
        ("seed: 1\n".encode("utf-16"), "UTF-16/32 text; save it as UTF-8"),
        ("seed: 1\n".encode("utf-16-le"), "is a binary file, not a YAML config"),
        (bytes(range(256)) * 8, "is a binary file, not a YAML config"),
        (b"seed: 1\n# caf\xe9\n", "is not UTF-8 text (line 2, byte 13); save the config as UTF-8"),
        (b"train: 5\n", "train: expected a mapping of keys (e.g. train.epochs), got 5"),
        (b"model: [gru]\n", "model: expected a mapping of keys (e.g. model.name), got ['gru']"),
        (b"a: &a [*a]\n", "nested more than 32 levels deep (a YAML alias that contains itself?)"),
        (b"[" * 600 + b"]" * 600, "nested deeper than Python can read"),
        (b"x" * (1 << 20) + b": 1\n", "too large for a config"),
    ],
    ids=["utf16-bom", "utf16-no-bom", "random-bytes", "latin1", "section-scalar", "section-list", "self-alias", "deep", "huge"],
)
def test_hostile_config_files_give_one_line(tmp_path, content, message):
    path = tmp_path / "hostile.yaml"
    path.write_bytes(content)
    with pytest.raises(UserError) as e:
        load_config(path)
    assert message in str(e.value) and str(path) in str(e.value)
    assert "\n" not in str(e.value)


def test_billion_laughs_is_refused_quickly(tmp_path):
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):  # 9 ** 10 values once expanded
        prev, name = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    bomb = tmp_path / "lol.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    start = time.monotonic()
    with pytest.raises(UserError, match="expands to more than 10000 values"):
        load_config(bomb)
    assert time.monotonic() - start < 5


def test_a_few_aliases_are_fine(tmp_path):
    path = tmp_path / "alias.yaml"
    path.write_text("train: &t {epochs: 3}\nexport:\n  formats: &f [float, int8]\n")
    cfg = load_config(path)
    assert cfg.train.epochs == 3 and cfg.export.formats == ["float", "int8"]


def test_directory_bom_and_empty_sections(tmp_path):
    with pytest.raises(UserError, match="is a directory, not a config file"):
        load_config(tmp_path)
    bom = tmp_path / "bom.yaml"
    bom.write_bytes(b"\xef\xbb\xbfseed: 3\ntrain:\n")  # UTF-8 with a BOM; a section whose keys are all commented out
    assert load_config(bom).seed == 3 and load_config(bom).train == load_config().train
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    assert load_config(empty) == load_config()


# ----------------------------------------------------------------------------- shipped configs by name


def test_shipped_configs_by_name():
    assert shipped_configs() == sorted(p.stem for p in SHIPPED)
    assert load_config("commands") == load_config(ROOT / "configs/commands.yaml")
    assert load_config("actions_av", ["train.epochs=2"]).train.epochs == 2
    assert config_path("commands") == ROOT / "configs/commands.yaml"
    assert config_path("runs/x/config.yaml") == Path("runs/x/config.yaml")  # a path stays a path


def test_unknown_config_name_lists_the_shipped_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as e:
        load_config("comands")
    assert str(e.value) == f"unknown config 'comands'; shipped: {', '.join(shipped_configs())} (or give a path to a YAML file)"
    with pytest.raises(UserError, match=r"configs/actions_av.yaml: config file not found \(the shipped one is --config actions_av\)"):
        load_config("configs/actions_av.yaml")  # README's path, typed outside the checkout
    (tmp_path / "mine").write_text("seed: 5\n")  # a file without a suffix in the working directory is still read
    assert load_config("mine").seed == 5


# ----------------------------------------------------------------------------- feature-cache key


def test_features_hash_ignores_execution_settings_and_data_location():
    cfg = load_config("actions_av")
    key = features_hash(cfg)
    assert key == features_hash(load_config("actions_av")) and len(key) == 16
    for change in ({"preprocess": {"workers": 0}}, {"preprocess": {"encoder_batch": 7}}, {"data": {"root": "/elsewhere/actions"}},
                   {"train": {"batch_size": 3, "epochs": 1}}, {"model": {"units": 8}}, {"export": {"latency_runs": 2}}):
        assert features_hash(replace(cfg, **change)) == key, change
    assert features_hash(replace(cfg, preprocess={"num_frames": 8})) != key
    assert features_hash(replace(cfg, seed=1)) != key


def _another_value(value, f):
    if f.metadata.get("choices"):
        return next(c for c in f.metadata["choices"] if c != value)
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, list):
        return value[:1] if len(value) > 1 else ["other"]
    return "other"


def test_every_feature_key_changes_the_hash():
    cfg = load_config()
    keys = feature_keys()
    assert {"data.root", "preprocess.workers", "preprocess.encoder_batch"}.isdisjoint(keys)
    assert {"seed", "data.kind", "preprocess.num_frames", "preprocess.weights", "preprocess.n_mfcc"} <= set(keys)
    assert not any(k.split(".")[0] in ("model", "train", "export") for k in keys)
    for key in keys:
        section, _, name = key.rpartition(".")
        f = next(f for f in dataclasses.fields(getattr(cfg, section) if section else cfg) if f.name == name)
        value = _another_value(getattr(getattr(cfg, section) if section else cfg, name), f)
        changed = replace(cfg, **({section: {name: value}} if section else {name: value}))
        assert features_hash(changed) != features_hash(cfg), key


def test_execution_keys_are_marked_in_the_docs():
    doc = markdown_reference()
    for key in ("data.root", "preprocess.workers", "preprocess.encoder_batch"):
        row = next(line for line in doc.splitlines() if line.startswith(f"| `{key}`"))
        assert "*Not in the feature-cache key.*" in row
