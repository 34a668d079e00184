"""Config files, command-line overrides and the resolved-config record that guards resumes."""

import json

import pytest

from ddjax.config import load_config, record_config
from ddjax.errors import DdjaxError

CONFIG_SOURCE = """
import ml_collections

def get_config():
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.data = ml_collections.ConfigDict({"name": "cifar10", "fraction": 0.5, "shape": (32, 32)})
    return config
"""


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "exp.py"
    path.write_text(CONFIG_SOURCE)
    return path


def test_overrides_are_parsed_and_typed(config_file):
    config = load_config(config_file, ["seed=3", "data.name=cifar100", "data.fraction=1", "data.shape=(64, 64)"])
    assert config.seed == 3
    assert config.data.name == "cifar100"
    assert config.data.fraction == 1.0 and isinstance(config.data.fraction, float)
    assert tuple(config.data.shape) == (64, 64)


@pytest.mark.parametrize("override, words", [
    ("data.nme=x", "no field 'nme'"),
    ("dta.name=x", "no section 'dta'"),
    ("seed", "not of the form"),
    ("seed=abc", "seed"),
])
def test_bad_overrides_name_the_problem(config_file, override, words):
    with pytest.raises(DdjaxError, match=words):
        load_config(config_file, [override])


def test_missing_or_broken_config_file(tmp_path):
    with pytest.raises(DdjaxError, match="does not exist"):
        load_config(tmp_path / "nope.py")
    broken = tmp_path / "broken.py"
    broken.write_text("def get_config(:\n")
    with pytest.raises(DdjaxError, match="failed to load"):
        load_config(broken)


def test_record_config_writes_once_and_rejects_changed_reruns(config_file, tmp_path):
    run_dir = tmp_path / "run"
    config = load_config(config_file)
    record_config(run_dir, config)
    assert json.loads((run_dir / "config.json").read_text())["data"]["name"] == "cifar10"
    record_config(run_dir, load_config(config_file))  # same settings: a resume, accepted
    with pytest.raises(DdjaxError, match="data.fraction"):
        record_config(run_dir, load_config(config_file, ["data.fraction=0.25"]))
    assert json.loads((run_dir / "config.json").read_text())["data"]["fraction"] == 0.5


def test_fields_newer_than_the_record_are_accepted_and_recorded(config_file, tmp_path):
    run_dir = tmp_path / "run"
    record_config(run_dir, load_config(config_file))
    newer = load_config(config_file)
    newer.data.added_later = 3
    record_config(run_dir, newer)  # a run recorded before the field existed still resumes
    assert json.loads((run_dir / "config.json").read_text())["data"]["added_later"] == 3
    with pytest.raises(DdjaxError, match="data.added_later"):
        record_config(run_dir, load_config(config_file))  # now recorded: removing it is a change


def test_layout_fields_are_not_recorded_and_a_run_resumes_with_other_values(config_file, tmp_path):
    run_dir = tmp_path / "run"
    streamed = load_config(config_file)
    streamed.data.stream = True
    record_config(run_dir, streamed)
    plain = load_config(config_file)
    plain.data.stream = False
    record_config(run_dir, plain)  # data.stream is how data are read, not a setting: accepted
    assert json.loads((run_dir / "config.json").read_text())["data"] == {
        "name": "cifar10", "fraction": 0.5, "shape": [32, 32]}
    with pytest.raises(DdjaxError, match="data.fraction"):  # the rest of the section still counts
        record_config(run_dir, load_config(config_file, ["data.fraction=0.25"]))


def test_file_argument_selects_a_setting(tmp_path):
    path = tmp_path / "multi.py"
    path.write_text("import ml_collections\n\ndef get_config(arg='a'):\n"
                    "    return ml_collections.ConfigDict({'which': arg})\n")
    assert load_config(path).which == "a"
    assert load_config(f"{path}:b").which == "b"
    with pytest.raises(DdjaxError, match="does not exist"):
        load_config(f"{tmp_path / 'nope.py'}:b")


def test_paper_settings_follow_the_reference_table():
    from ddjax.mkdt.defaults import PAPER_DISTILL

    repo = __import__("pathlib").Path(__file__).resolve().parents[1]
    for (dataset, percent), row in PAPER_DISTILL.items():
        config = load_config(f"{repo / 'experiments' / 'mkdt_paper.py'}:{dataset}_{percent}")
        assert config.data.name == dataset and config.distill.percent == percent
        assert {k: config.distill[k] for k in row} == row
        assert (config.distill.expert_epochs, config.distill.batch_syn, config.distill.lr_lr) == (2, 256, 1e-4)
    with pytest.raises(DdjaxError, match="no paper setting"):
        load_config(f"{repo / 'experiments' / 'mkdt_paper.py'}:cifar10_7")
