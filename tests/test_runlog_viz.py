"""Metrics lines, the one-line summary and PNG grids."""

import json

import jax
import numpy as np
from PIL import Image

from ddjax import mesh
from ddjax.runlog import MetricsLog, print_summary
from ddjax.viz import image_grid, save_image_grid


def test_metrics_append_across_instances(tmp_path):
    MetricsLog(tmp_path, "experts").write(1, loss=np.float32(0.5), per_epoch=np.arange(2))
    log = MetricsLog(tmp_path, "experts")
    log.write(2, loss=0.25)
    records = log.read()
    assert [r["step"] for r in records] == [1, 2]
    assert records[0]["loss"] == 0.5 and records[0]["per_epoch"] == [0, 1]
    assert all(r["stage"] == "experts" for r in records)


def test_summary_is_one_json_line_naming_the_mesh_once_built(capsys, monkeypatch):
    expected = {"stage": "distill", "workdir": "/tmp/w", "artifacts": {"images": "/tmp/w/x"},
                "loss": 0.125}
    monkeypatch.setattr(mesh, "_MESH", [])  # the mesh is the process's: other tests may build it
    print_summary("distill", "/tmp/w", {"images": "/tmp/w/x"}, loss=np.float64(0.125))
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and json.loads(out[0]) == expected
    mesh.build()
    print_summary("distill", "/tmp/w", {"images": "/tmp/w/x"}, loss=np.float64(0.125))
    [line] = capsys.readouterr().out.strip().splitlines()
    devices = len(jax.devices())
    assert json.loads(line) == {**expected, "mesh": {"devices": devices, "processes": 1,
                                                     "shape": {"data": devices}}}


def test_grid_places_each_image_in_row_major_order(tmp_path):
    images = np.stack([np.full((4, 5, 3), 10 * (i + 1), np.uint8) for i in range(5)])
    grid = image_grid(images, columns=3, pad=1)
    assert grid.shape == (2 * 5 + 1, 3 * 6 + 1, 3)
    for i in range(5):
        top, left = 1 + (i // 3) * 5, 1 + (i % 3) * 6
        assert (grid[top:top + 4, left:left + 5] == 10 * (i + 1)).all()
    assert (grid[0] == 0).all() and (grid[6:10, 13:18] == 0).all()  # padding and the empty tile
    path = save_image_grid(images.astype(np.float32) / 255.0, tmp_path / "g.png", columns=3, scale=2)
    full = image_grid(images, columns=3)
    assert Image.open(path).size == (2 * full.shape[1], 2 * full.shape[0])
    np.testing.assert_array_equal(np.asarray(Image.open(path))[::2, ::2], full)
