"""The `ddjax` command: data info on the real archive, one-line errors, PNG grids."""

import json

import numpy as np
from PIL import Image

from ddjax.cli import main
from ddjax.data import load_arrays


def test_data_info_reports_cifar10_counts(cifar10_data_dir, capsys):
    assert main(["data", "info", "cifar10", "--data-dir", str(cifar10_data_dir)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["splits"] == {"train": 50000, "test": 10000}
    assert info["num_classes"] == 10 and info["image_shape"] == [32, 32, 3]


def test_unknown_dataset_is_one_line_error(capsys, tmp_path):
    assert main(["data", "info", "cifar11", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ddjax: error:") and "cifar10" in err and "\n" not in err


def test_data_grid_shows_per_class_rows(cifar10_data_dir, tmp_path, capsys):
    out = tmp_path / "grid.png"
    args = ["data", "grid", "cifar10", "--split", "test", "--per-class", "3", "--scale", "1",
            "--out", str(out), "--data-dir", str(cifar10_data_dir)]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 30
    grid = np.asarray(Image.open(out))
    images, labels = load_arrays("cifar10", "test", data_dir=cifar10_data_dir)
    # Row r shows class r: the first tile of row 3 (cat) must be one of the cat test images.
    tile = grid[2 + 3 * 34: 2 + 3 * 34 + 32, 2:34]
    cats = images[labels == 3]
    assert (np.abs(cats.astype(int) - tile.astype(int)).reshape(len(cats), -1).max(1) == 0).any()
