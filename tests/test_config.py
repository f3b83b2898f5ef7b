"""Configs: defaults, YAML + --set merging, type checks, one-line errors, docs in sync."""

import dataclasses
from pathlib import Path

import pytest

from pipeline.config import Config, load_config, markdown_reference, parse_overrides, replace, section_hash, to_yaml
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
    assert cfg.data.classes == ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]


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
        (["train.epochs=0"], "key 'train.epochs' must be >= 1"),
        (["preprocess.encoder=resnet"], "key 'preprocess.encoder' must be one of"),
        (["export.formats=[float,onnx]"], "unknown format 'onnx'"),
        (["train.epochs"], "expected key=value"),
        (["preprocess.audio_seconds=0.1", "preprocess.n_fft=2048"], "key 'preprocess.n_fft' (2048) is longer than the audio window"),
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
