"""Bit-identity check of both smoke chains against a recorded fingerprint.

Runs the MKDT smoke chain (``experiments/smoke.py``: teacher, represent, experts, select
high-loss/random, distill mkdt, eval mkdt) and the LGM one (``experiments/smoke.py:lgm``: teacher,
distill lgm, eval lgm) in fresh workdirs, takes a sha256 of every array of every artifact (and of
the result tables), and compares them with ``experiments/fingerprints/smoke_c7ba9d2.json``,
recorded on commit c7ba9d2, before the architecture change, with the same keys:

    python experiments/smoke_fingerprint.py [--workdir DIR] [--baseline FILE] [--write FILE]

Prints one line per differing or missing key and a JSON summary; exits 1 unless all are equal.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from ddjax.artifacts.base import ARRAYS, Artifact
from ddjax.checkpoint import load_pytree

REPO = Path(__file__).resolve().parents[1]
MKDT = ([["teacher"], ["represent"], ["experts"], ["select", "high-loss"], ["select", "random"],
         ["distill", "mkdt"], ["eval", "mkdt"]], "experiments/smoke.py")
LGM = ([["teacher"], ["distill", "lgm"], ["eval", "lgm"]], "experiments/smoke.py:lgm")


def digest(tree, prefix: str) -> dict[str, str]:
    """sha256 of dtype, shape and bytes of every leaf, keyed ``prefix/path/to/leaf``."""
    if hasattr(tree, "items"):
        out = {}
        for key in sorted(tree):
            out.update(digest(tree[key], f"{prefix}/{key}"))
        return out
    a = np.ascontiguousarray(np.asarray(tree))
    return {prefix: hashlib.sha256(f"{a.dtype.str}|{a.shape}|".encode() + a.tobytes()).hexdigest()}


def text_digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def run_chain(chain, workdir: Path) -> None:
    commands, config = chain
    for command in commands:
        subprocess.run([sys.executable, "-m", "ddjax.cli", *command, "--config", str(REPO / config),
                        "--workdir", str(workdir)], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)


def arrays(directory: Path):
    assert Artifact.is_complete(directory), f"{directory} is not a complete artifact"
    return load_pytree(directory / ARRAYS)


def fingerprint(mkdt: Path, lgm: Path) -> dict[str, str]:
    fp = {}
    fp.update(digest(arrays(mkdt / "teacher/encoder"), "mkdt/teacher"))
    fp.update(digest(arrays(mkdt / "represent/representations"), "mkdt/representations"))
    for epoch in sorted((mkdt / "experts/trajectories").glob("expert_*/epoch_*")):
        fp.update(digest(load_pytree(epoch), f"mkdt/trajectories/{epoch.parent.name}/{epoch.name}"))
    for selection in sorted((mkdt / "select").glob("*pct")):
        found = arrays(selection)
        fp.update(digest(found["indices"], f"mkdt/select/{selection.name}"))
        if "scores" in found:
            fp.update(digest(found["scores"], "mkdt/select/high_loss_scores"))
    for synset in sorted((mkdt / "distill/synsets").glob("iter_*")):
        if not synset.name.endswith(".partial"):
            fp.update(digest(arrays(synset), f"mkdt/synsets/{synset.name}"))
    fp["mkdt/eval/tables"] = text_digest(json.loads((mkdt / "mkdt_eval/results.json").read_text())["tables"])
    fp.update(digest(arrays(lgm / "teacher/encoder"), "lgm/teacher"))
    for image_set in sorted(lgm.glob("lgm/*/set")):
        fp.update(digest(arrays(image_set), f"lgm/sets/{image_set.parent.name}"))
    for image_set in sorted(lgm.glob("lgm_eval/sets/*")):
        fp.update(digest(arrays(image_set), f"lgm/eval_sets/{image_set.name}"))
    fp["lgm/eval/results"] = text_digest(json.loads((lgm / "lgm_eval/results.json").read_text()))
    return fp


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=None, help="default: a temporary directory")
    parser.add_argument("--baseline", default=str(REPO / "experiments/fingerprints/smoke_c7ba9d2.json"))
    parser.add_argument("--write", default=None, help="also write this run's fingerprint here")
    args = parser.parse_args()
    root = Path(args.workdir or tempfile.mkdtemp(prefix="ddjax_fingerprint_"))
    run_chain(MKDT, root / "mkdt")
    run_chain(LGM, root / "lgm")
    found = fingerprint(root / "mkdt", root / "lgm")
    if args.write:
        Path(args.write).write_text(json.dumps(found, indent=1, sort_keys=True) + "\n")
    expected = json.loads(Path(args.baseline).read_text())
    differing = sorted(k for k in expected if k in found and found[k] != expected[k])
    missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    for key in differing:
        print(f"differs: {key}")
    for key in missing:
        print(f"missing: {key}")
    for key in extra:
        print(f"new:     {key}")
    equal = len(expected) - len(differing) - len(missing)
    print(json.dumps({"keys": len(expected), "equal": equal, "differing": len(differing),
                      "missing": len(missing), "new": len(extra), "workdir": str(root)}))
    return 0 if equal == len(expected) and not extra else 1


if __name__ == "__main__":
    sys.exit(main())
