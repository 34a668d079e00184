"""The target-standardisation option: every consumer of the teacher's representations sees each
dimension divided by its RMS over the train split, and stores made with and without it are never
mixed."""

from pathlib import Path

import numpy as np

from ddjax.artifacts.synset import SYNSET, read_synset
from ddjax.artifacts.trajectories import TRAJECTORIES, TrajectoryStore
from ddjax.mkdt.student import dimension_rms


def test_dimension_rms_is_the_closed_form_and_spares_dead_dimensions():
    reps = np.array([[3.0, 0.0, 1.0], [-4.0, 0.0, -1.0]], np.float32)
    np.testing.assert_allclose(dimension_rms(reps), [np.sqrt(12.5), 1.0, 1.0])
    scaled = reps / dimension_rms(reps)
    np.testing.assert_allclose(np.sqrt(np.mean(scaled ** 2, axis=0))[[0, 2]], [1.0, 1.0], rtol=1e-6)


def test_standardized_experts_are_refused_by_an_unstandardized_distillation(toy_pipeline, tmp_path):
    toy, workdir = toy_pipeline, tmp_path / "w"
    reps = toy.write_reps(workdir)
    on = ["experts.standardize_targets=True"]
    for command in (["experts"], ["select", "high-loss"]):
        code, _, err = toy.cli(command, workdir, on)
        assert code == 0, err
    store = TrajectoryStore.open(TRAJECTORIES.locate(workdir))
    assert store.meta["standardize_targets"] is True
    code, _, err = toy.cli(["distill", "mkdt"], workdir)  # the option off: another store's targets
    last = err.strip().splitlines()[-1]
    assert code == 2 and "made differently" in last and "standardize_targets" in last
    # The refused run wrote nothing, not even its settings: the corrected command runs.
    code, out, err = toy.cli(["distill", "mkdt"], workdir, on)
    assert code == 0, err
    first, meta = read_synset(SYNSET.locate(workdir, iteration=0))
    expected = (reps / dimension_rms(reps))[meta["init_indices"]]
    np.testing.assert_allclose(first["targets"], expected, rtol=1e-6)


def test_eval_pre_trains_the_kd_rows_on_the_standardized_targets(toy_pipeline, tmp_path):
    """``eval mkdt`` reads the option too: its KD rows regress the targets the experts and the
    distilled set were made with."""
    from ddjax.config import load_config
    from ddjax.mkdt import eval_stage
    from ddjax.workdir import Stage, read_fields

    toy, workdir = toy_pipeline, tmp_path / "w"
    reps = toy.write_reps(workdir)
    smoke = str(Path(__file__).resolve().parents[2] / "experiments" / "smoke.py")
    for option, expected in ((False, reps), (True, reps / dimension_rms(reps))):
        config = load_config(smoke, [*toy.overrides, f"experts.standardize_targets={option}"])
        stage = Stage("mkdt_eval", read_fields(config, eval_stage.READS), workdir)
        targets = eval_stage.EvalInputs(stage).train_rows().targets
        np.testing.assert_allclose(targets, expected, rtol=1e-6)
