"""experiments/device_check.py in tiny mode on the CPU: every part runs and is recorded, the
float32 numerics match the float64 reference, and a part that raises leaves the others running."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "device_check.py"
PARTS = ("numerics", "mkdt_outer", "experts", "lgm_vit")


@pytest.fixture(scope="module")
def device_check():
    spec = importlib.util.spec_from_file_location("device_check_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.fixture(scope="module")
def tiny_run(device_check, tmp_path_factory):
    """One tiny run of every part, after a first part that raises (one run: each compile costs)."""
    out = tmp_path_factory.mktemp("device_check")

    def explode(ctx, res):
        res["partial"] = "written before the error"
        raise RuntimeError("planted failure")

    parts = dict(device_check.PARTS)
    device_check.PARTS["explode"] = explode
    tfds_before = "tensorflow_datasets" in sys.modules
    try:
        record = device_check.main(["--tiny", "--out", str(out),
                                    "--parts", ",".join(("explode",) + PARTS)])
    finally:
        device_check.PARTS.clear()
        device_check.PARTS.update(parts)
    return out, record, tfds_before


@pytest.mark.slow
def test_every_part_is_recorded_and_ok(tiny_run):
    out, record, tfds_before = tiny_run
    written = json.loads((out / "device_check.json").read_text())
    assert written["finished"] is True
    assert list(written["parts"]) == ["explode", *PARTS]
    for name in PARTS:
        assert written["parts"][name]["status"] == "ok", written["parts"][name].get("error")
    meta = written["meta"]
    assert meta["tiny"] is True and meta["device_kind"] and meta["jax"]
    assert meta["assumed_peak_bf16_tflops"] == 989.0
    if not tfds_before:  # the GPU image has no tensorflow-datasets
        assert meta["tensorflow_datasets_imported"] is False


@pytest.mark.slow
def test_a_failing_part_is_recorded_and_the_next_parts_run(tiny_run):
    out = tiny_run[0]
    failed = json.loads((out / "device_check.json").read_text())["parts"]["explode"]
    assert failed["status"] == "error"
    assert failed["error"] == "RuntimeError: planted failure"
    assert "planted failure" in failed["traceback"]
    assert failed["partial"] == "written before the error"
    assert "seconds" in failed


@pytest.mark.slow
def test_numerics_match_float64_on_cpu(tiny_run):
    numerics = tiny_run[1]["parts"]["numerics"]
    assert numerics["float64_on_device"]["conv_value_max_abs_vs_numpy"] < 1e-12
    assert numerics["float64_on_device"]["second_order_grad_max_abs_vs_lax"] < 1e-9
    checks = numerics["float32_default_precision"]
    assert {"convnet_forward", "convnet_inner_grad", "convnet_meta_grad"} <= set(checks)
    assert any(name.endswith("_lax") for name in checks)
    for name, errors in checks.items():
        assert errors["finite"], name
        assert errors["rel_l2"] < 1e-5, (name, errors)
        assert errors["max_abs_over_max_ref"] < 1e-5, (name, errors)


@pytest.mark.slow
def test_measurements_are_filled_in(tiny_run):
    parts = tiny_run[1]["parts"]
    for dtype in ("float32", "bfloat16"):
        entry = parts["mkdt_outer"][dtype]
        assert entry["step_s_median"] > 0 and entry["compile_s"] > 0
        assert entry["flops_counted"] > 0 and entry["timed_calls"] >= 2
        assert all(isinstance(x, float) for x in entry["losses"])
    experts = parts["experts"]["by_experts"]
    assert list(experts) == ["1", "2"]
    assert all(e["expert_epochs_per_hour"] > 0 for e in experts.values())
    lgm = parts["lgm_vit"]
    assert lgm["step_s_median"] > 0 and lgm["flops_counted"] > lgm["forward_flops_per_image"] > 0
    assert 0 < lgm["fraction_of_peak"] < 1
    assert lgm["config"]["depth"] == 1


def test_flop_count_multiplies_scan_bodies(device_check):
    import jax
    import jax.numpy as jnp

    def f(x, w):
        return jax.lax.scan(lambda c, _: (jnp.tanh(c @ w), None), x, None, length=5)[0]

    x = jnp.ones((4, 8))
    w = jnp.ones((8, 8))
    flops, whiles = device_check.traced_flops(f, x, w)
    assert (flops, whiles) == (5 * 2 * 4 * 8 * 8, 0)
    conv = lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    flops, _ = device_check.traced_flops(conv, jnp.ones((2, 6, 6, 3)), jnp.ones((3, 3, 3, 5)))
    assert flops == 2 * (2 * 6 * 6 * 5) * (3 * 3 * 3)


def test_a_failing_measurement_marks_the_part_partial(device_check, tmp_path, monkeypatch, capsys):
    def part(ctx, res):
        with device_check._section(res, "first"):
            raise ValueError("bad size")
        res["second"] = {"figure": 1.0}

    monkeypatch.setitem(device_check.PARTS, "fake", part)
    record = device_check.main(["--tiny", "--out", str(tmp_path), "--parts", "fake"])
    fake = record["parts"]["fake"]
    assert fake["status"] == "partial" and fake["section_errors"] == ["first"]
    assert fake["first"]["error"] == "ValueError: bad size"
    assert fake["second"] == {"figure": 1.0}
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["fake"]["status"] == "partial"
    assert json.loads((tmp_path / "device_check.json").read_text())["finished"] is True


def test_unknown_part_is_refused(device_check, tmp_path):
    with pytest.raises(SystemExit):
        device_check.main(["--tiny", "--out", str(tmp_path), "--parts", "numerics,nope"])
