"""The artifact protocol: complete or absent, identity checked, a killed write redone."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from ddjax.artifacts.base import MARKER, META, Artifact
from ddjax.errors import DdjaxError

THING = Artifact("test thing", "stage/thing_{index:02d}", "ddjax make-thing", identity=("dataset", "size"))


def test_write_then_read_round_trip(tmp_path):
    where = THING.locate(tmp_path, index=3)
    assert where == tmp_path / "stage" / "thing_03"
    arrays = {"x": np.arange(6, dtype=np.float32).reshape(2, 3)}
    meta = THING.write(where, {"dataset": "toy", "size": 2}, arrays,
                       extra=lambda d: (d / "look.txt").write_text("for people"))
    assert THING.is_complete(where) and (where / "look.txt").read_text() == "for people"
    got, read_meta = THING.read(where)
    np.testing.assert_array_equal(got["x"], arrays["x"])
    assert read_meta == meta and meta["artifact"] == "test thing" and meta["size"] == 2
    assert json.loads((where / META).read_text()) == meta
    assert not where.with_name("thing_03.partial").exists()


def test_a_complete_artifact_is_never_replaced(tmp_path):
    where = THING.locate(tmp_path, index=0)
    THING.write(where, {"dataset": "toy", "size": 1}, {"x": np.zeros(1)})
    with pytest.raises(DdjaxError, match="not replaced"):
        THING.write(where, {"dataset": "toy", "size": 1}, {"x": np.ones(1)})
    np.testing.assert_array_equal(THING.read(where)[0]["x"], np.zeros(1))


def test_a_directory_without_the_marker_is_incomplete_and_redone(tmp_path):
    where = THING.locate(tmp_path, index=1)
    where.mkdir(parents=True)
    (where / META).write_text(json.dumps({"artifact": "test thing"}))  # arrays never came
    assert not THING.is_complete(where)
    with pytest.raises(DdjaxError, match="incomplete.*run `ddjax make-thing`"):
        THING.read_meta(where)
    THING.write(where, {"dataset": "toy", "size": 1}, {"x": np.ones(2)})
    np.testing.assert_array_equal(THING.read(where)[0]["x"], np.ones(2))


def test_missing_artifact_names_the_command_that_makes_it(tmp_path):
    with pytest.raises(DdjaxError) as err:
        THING.read(THING.locate(tmp_path, index=9))
    message = str(err.value)
    assert "\n" not in message and "does not exist" in message and "ddjax make-thing" in message


def test_identity_mismatch_is_one_line_naming_the_fields(tmp_path):
    where = THING.locate(tmp_path, index=2)
    meta = THING.write(where, {"dataset": "toy", "size": 4, "note": "free"}, None)
    THING.check(meta, {"dataset": "toy", "size": 4, "note": "other"}, where)  # not identity
    with pytest.raises(DdjaxError) as err:
        THING.check(meta, {"dataset": "cifar10", "size": 4}, where)
    message = str(err.value)
    assert "\n" not in message and "dataset" in message and "size" not in message


def test_reading_another_kind_of_artifact_is_refused(tmp_path):
    other = Artifact("other thing", "stage/other", "ddjax other")
    other.write(other.locate(tmp_path), {}, None)
    with pytest.raises(DdjaxError, match="not a test thing"):
        THING.read_meta(other.locate(tmp_path))


KILLED_WRITER = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    from ddjax.artifacts.base import Artifact
    thing = Artifact("test thing", "stage/thing_{index:02d}", "ddjax make-thing")

    def die(tmp):
        (tmp / "half.png").write_bytes(b"half")
        os.kill(os.getpid(), signal.SIGKILL)   # killed after the arrays, before meta and marker

    thing.write(thing.locate(sys.argv[1], index=0), {"n": 1}, {"x": np.ones(3)}, extra=die)
""")


def test_sigkill_during_a_write_leaves_no_complete_artifact_and_the_rerun_redoes_it(tmp_path):
    run = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(tmp_path)], capture_output=True)
    assert run.returncode == -signal.SIGKILL
    where = THING.locate(tmp_path, index=0)
    assert not THING.is_complete(where)
    assert not (where.with_name("thing_00.partial") / MARKER).exists()
    THING.write(where, {"n": 2}, {"x": np.zeros(3)})
    arrays, meta = THING.read(where)
    np.testing.assert_array_equal(arrays["x"], np.zeros(3))
    assert meta["n"] == 2 and not (where / "half.png").exists()
    assert not os.path.exists(where.with_name("thing_00.partial"))
