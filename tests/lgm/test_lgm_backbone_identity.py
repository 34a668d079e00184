"""What an LGM set records as its backbone: a ddjax teacher by the digest of its weights, so the
set stays valid when the workdir moves and another teacher at the same path is told apart."""

import shutil

import numpy as np

from ddjax.artifacts.teacher import encoder_digest, write_artifact
from ddjax.lgm.backbones import backbone_entries, backbone_identity


def _teacher(directory, scale):
    variables = {"params": {"w": np.arange(6, dtype=np.float32).reshape(2, 3) * scale}}
    write_artifact(directory, variables, {"model": "convnet", "image_size": [8, 8]})
    return encoder_digest(variables)


def test_a_ddjax_teacher_is_identified_by_its_weights(tmp_path):
    digest = _teacher(tmp_path / "run" / "teacher", 1.0)
    (tag, spec), = backbone_entries((), tmp_path / "run")
    assert tag == "teacher" and backbone_identity(spec) == f"ddjax teacher {digest}"
    assert backbone_identity(f"ddjax:{tmp_path / 'run' / 'teacher'}") == f"ddjax teacher {digest}"
    shutil.copytree(tmp_path / "run", tmp_path / "moved")  # another path, the same teacher
    assert backbone_identity(backbone_entries((), tmp_path / "moved")[0][1]) == f"ddjax teacher {digest}"
    shutil.rmtree(tmp_path / "moved" / "teacher")  # the same path, another teacher
    other = _teacher(tmp_path / "moved" / "teacher", 2.0)
    assert other != digest
    assert backbone_identity(backbone_entries((), tmp_path / "moved")[0][1]) == f"ddjax teacher {other}"
    assert backbone_identity("dinov2_vitb14") == "dinov2_vitb14"  # named backbones by their spec
