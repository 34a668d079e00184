"""``ddjax eval lgm``: linear probes on LGM's distilled sets and on real-image baselines, for every
distillation backbone A (``lgm.backbones``) and evaluation backbone B (``lgm_eval.backbones``,
default: the same list), plus the mutual-k-NN alignment of the backbones.

Sets: ``lgm_<A>`` (the ``LGM_SET`` of A), ``centroids_<A>``, ``neighbors_<A>`` and ``random_<s>``
(``BASELINE_SET`` artifacts, written first) and ``full`` (a probe on the whole train split). Each
(set, B) result is an ``LGM_RESULT`` artifact as soon as it is known, so a rerun skips what is
done; ``results.json`` and ``tables.md`` are rebuilt from them on every run. The probe protocol and
the baselines' definitions: docs/lgm.md#evaluation.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ddjax.artifacts.image_set import BASELINE_SET, LGM_SET, read_image_set, write_image_set
from ddjax.artifacts.results import LGM_ALIGNMENT, LGM_RESULT, read_result, write_result
from ddjax.data.pipeline import dataset_spec, open_rows
from ddjax.data.subsets import random_subset, test_rows
from ddjax.errors import DdjaxError
from ddjax.lgm import tables as lgm_tables
from ddjax.lgm.alignment import mutual_knn_alignment
from ddjax.lgm.augment import check_mode
from ddjax.lgm.backbones import backbone_entries, backbone_identity, load_checked
from ddjax.lgm.baselines import centroid_indices, neighbor_indices, random_real_indices
from ddjax.lgm.probe import (embed_images, embed_rows, make_embedder, probe_lr, topk_accuracy,
                             train_probes)
from ddjax.smoke import scale_note
from ddjax.runlog import print_summary, write_json_atomic
from ddjax.workdir import Stage

READS = ("data", "lgm.backbones", "lgm.ipc", "lgm_eval")
BASELINES = ("random", "centroids", "neighbors", "full")
TABLES, RESULTS = "tables.md", "results.json"


def check_config(config) -> None:
    """The CLI's hook: refuse bad ``lgm_eval`` settings (and ipc) before they are recorded."""
    ev = config.lgm_eval
    unknown = sorted(set(ev.baselines) - set(BASELINES))
    if unknown:
        raise DdjaxError(f"unknown lgm_eval.baselines {unknown}; "
                         f"choose from {', '.join(BASELINES)}")
    for field in ("seeds", "epochs", "batch_size", "full_epochs", "full_batch_size", "full_seeds",
                  "embed_batch", "alignment_k"):
        if ev[field] < 1:
            raise DdjaxError(f"lgm_eval.{field} must be >= 1, got {ev[field]}")
    check_mode(ev.aug_mode)
    if config.lgm.ipc < 1:
        raise DdjaxError(f"lgm.ipc must be >= 1, got {config.lgm.ipc}")


class EvalInputs:
    """Data, lazily loaded backbones and cached train embeddings of one evaluation run. The splits
    are :func:`open_rows`'s: with ``data.stream`` only their labels are held, and images are
    read (each process its rows of a batch) when they are embedded."""

    def __init__(self, stage: Stage):
        self.stage, self.ev = stage, stage.config.lgm_eval
        self.spec = dataset_spec(stage.config.data)
        self.train, self.test = (open_rows(stage.config.data, split) for split in ("train", "test"))
        self.train_labels = self.train.read_labels(np.arange(len(self.train)))
        self.test_rows = test_rows(len(self.test), self.ev.test_subset)
        self.test_labels = self.test.read_labels(self.test_rows)
        self.specs = dict(backbone_entries(stage.config.lgm.backbones, stage.workdir))
        self.distill_tags = list(self.specs)
        eval_entries = (backbone_entries(self.ev.backbones, stage.workdir)
                        if self.ev.backbones else [])
        for tag, spec in eval_entries:
            if self.specs.get(tag, spec) != spec:
                raise DdjaxError(f"backbone tag {tag!r} names {self.specs[tag]!r} in lgm.backbones "
                                 f"and {spec!r} in lgm_eval.backbones; use distinct tags")
            self.specs[tag] = spec
        self.eval_tags = [tag for tag, _ in eval_entries] or list(self.distill_tags)
        self._backbones, self._train_features, self._test_features = {}, {}, {}

    def backbone(self, tag: str):
        if tag not in self._backbones:
            self._backbones[tag] = load_checked(self.specs[tag])
        return self._backbones[tag]

    def train_features(self, tag: str) -> np.ndarray:
        if tag not in self._train_features:
            self._train_features[tag] = embed_rows(self.backbone(tag), self.train,
                                                   np.arange(len(self.train)), self.ev.embed_batch,
                                                   desc=f"embed train {tag}")
        return self._train_features[tag]

    def test_features(self, tag: str) -> np.ndarray:
        if tag not in self._test_features:
            self._test_features[tag] = embed_rows(self.backbone(tag), self.test, self.test_rows,
                                                  self.ev.embed_batch, desc=f"embed test {tag}")
        return self._test_features[tag]


def _baseline_set(inputs: EvalInputs, name: str, identity: dict, pick) -> Path:
    """The ``BASELINE_SET`` ``name``: checked when complete, else written from ``pick()``."""
    directory = BASELINE_SET.locate(inputs.stage.workdir, name=name)
    identity = dict(identity, dataset=inputs.spec.name)
    if BASELINE_SET.is_complete(directory):
        BASELINE_SET.check(BASELINE_SET.read_meta(directory), identity, directory)
        return directory
    indices = pick()
    images = inputs.train.read(indices)[0].astype(np.float32) / 255.0
    write_image_set(BASELINE_SET, directory, images, inputs.train_labels[indices],
                    dict(identity, train_indices=indices.tolist()),
                    class_names=inputs.spec.class_names)
    return directory


def _distilled_sets(inputs: EvalInputs, seeds: list[int]) -> dict[str, dict]:
    """The ``LGM_SET`` of every distillation backbone, refused unless made for this evaluation."""
    sets = {}
    for tag in inputs.distill_tags:
        directory = LGM_SET.locate(inputs.stage.workdir, tag=tag)
        LGM_SET.check(LGM_SET.read_meta(directory),
                      {"dataset": inputs.spec.name, "backbone": backbone_identity(inputs.specs[tag]),
                       "ipc": inputs.stage.config.lgm.ipc}, directory)
        sets[f"lgm_{tag}"] = {"directory": directory, "seeds": seeds, "group": "lgm", "source": tag,
                              "artifact": LGM_SET}
    return sets


def _check_feature_dim(inputs: EvalInputs, tag: str, meta: dict, directory: Path) -> None:
    LGM_SET.check(meta, {"feature_dim": inputs.backbone(tag).feature_dim}, directory)


def _neighbor_picks(inputs: EvalInputs, tag: str, distilled_dir: Path) -> np.ndarray:
    images, labels, meta = read_image_set(LGM_SET, distilled_dir)
    _check_feature_dim(inputs, tag, meta, distilled_dir)
    queries = embed_images(inputs.backbone(tag), images, inputs.ev.embed_batch)
    return neighbor_indices(queries, labels, inputs.train_features(tag), inputs.train_labels)


def build_sets(inputs: EvalInputs) -> dict[str, dict]:
    """name -> {directory, seeds, group, source, artifact}: every set to evaluate, the baselines
    written first."""
    ev, ipc = inputs.ev, inputs.stage.config.lgm.ipc
    probe_seeds = [ev.seed_base + i for i in range(ev.seeds)]
    sets = _distilled_sets(inputs, probe_seeds)
    if "random" in ev.baselines:
        for seed in ev.random_seeds:
            name = f"random_{seed}"
            directory = _baseline_set(
                inputs, name, {"method": "random", "seed": int(seed), "ipc": ipc},
                lambda seed=seed: random_real_indices(inputs.train_labels, ipc, seed))
            sets[name] = {"directory": directory, "seeds": [int(seed)], "group": "random",
                          "source": None, "artifact": BASELINE_SET}
    pickers = {
        "centroids": ({}, lambda tag: centroid_indices(inputs.train_features(tag),
                                                       inputs.train_labels,
                                                       inputs.spec.num_classes)),
        "neighbors": ({"ipc": ipc},
                      lambda tag: _neighbor_picks(inputs, tag, sets[f"lgm_{tag}"]["directory"])),
    }
    for tag in inputs.distill_tags:
        for method, (identity, pick) in pickers.items():
            if method not in ev.baselines:
                continue
            name = f"{method}_{tag}"
            identity = dict(identity, method=method, backbone=backbone_identity(inputs.specs[tag]),
                            tag=tag)
            directory = _baseline_set(inputs, name, identity, lambda pick=pick, tag=tag: pick(tag))
            sets[name] = {"directory": directory, "seeds": probe_seeds, "group": method,
                          "source": tag, "artifact": BASELINE_SET}
    return sets


def _finish(inputs: EvalInputs, probes, losses, tag: str, seeds, extra: dict) -> dict:
    features, labels = inputs.test_features(tag), inputs.test_labels
    top1 = topk_accuracy(probes, features, labels, 1)
    top5 = topk_accuracy(probes, features, labels, 5) if inputs.spec.num_classes >= 5 else None
    return dict(extra, seeds=list(map(int, seeds)), top1=top1.tolist(),
                top5=None if top5 is None else top5.tolist(),
                train_loss=np.asarray(losses).tolist())


def evaluate_set(inputs: EvalInputs, name: str, entry: dict, tag: str) -> dict:
    """Probes on one set with backbone ``tag`` (an ``LGM_RESULT``, reused when complete)."""
    directory = LGM_RESULT.locate(inputs.stage.workdir, name=name, backbone=tag)
    done = read_result(LGM_RESULT, directory)
    if done is not None:
        return done
    images, labels, meta = read_image_set(entry["artifact"], entry["directory"])
    if entry["group"] == "lgm" and entry["source"] == tag:
        _check_feature_dim(inputs, tag, meta, entry["directory"])
    backbone, ev = inputs.backbone(tag), inputs.ev
    batch = min(ev.batch_size, len(labels))
    started = time.perf_counter()
    probes, losses = train_probes(images, labels, entry["seeds"],
                                  num_classes=inputs.spec.num_classes, dim=backbone.feature_dim,
                                  epochs=ev.epochs, batch_size=batch,
                                  lr=probe_lr(ev.lr_per_256, batch),
                                  embed=make_embedder(backbone, ev.aug_mode),
                                  variables=backbone.variables, desc=f"probe {name} on {tag}")
    result = _finish(inputs, probes, losses, tag, entry["seeds"],
                     {"set": name, "eval_backbone": tag, "group": entry["group"],
                      "source": entry["source"], "num_images": int(len(labels)),
                      "seconds": round(time.perf_counter() - started, 2)})
    return write_result(LGM_RESULT, directory, result)


def evaluate_full(inputs: EvalInputs, tag: str) -> dict:
    """A probe on the whole train split (or ``full_train_subset`` of it) with backbone ``tag``."""
    directory = LGM_RESULT.locate(inputs.stage.workdir, name="full", backbone=tag)
    done = read_result(LGM_RESULT, directory)
    if done is not None:
        return done
    ev, backbone = inputs.ev, inputs.backbone(tag)
    seeds = [ev.seed_base + i for i in range(ev.full_seeds)]
    n = len(inputs.train_labels)
    keep = (random_subset(n, min(ev.full_train_subset, n), seed=0) if ev.full_train_subset
            else np.arange(n))
    started = time.perf_counter()
    common = dict(num_classes=inputs.spec.num_classes, dim=backbone.feature_dim,
                  epochs=ev.full_epochs, batch_size=ev.full_batch_size,
                  lr=probe_lr(ev.full_lr_per_256, ev.full_batch_size),
                  desc=f"probe full on {tag}")
    if ev.full_augment:
        # Augmented views are drawn every epoch: the kept rows are held in memory.
        probes, losses = train_probes(inputs.train.read(keep)[0], inputs.train_labels[keep], seeds,
                                      embed=make_embedder(backbone, ev.aug_mode),
                                      variables=backbone.variables, **common)
    else:
        features = inputs.train_features(tag)[keep]
        probes, losses = train_probes(features, inputs.train_labels[keep], seeds, **common)
    result = _finish(inputs, probes, losses, tag, seeds,
                     {"set": "full", "eval_backbone": tag, "group": "full", "source": None,
                      "num_images": int(len(keep)), "augment": bool(ev.full_augment),
                      "seconds": round(time.perf_counter() - started, 2)})
    return write_result(LGM_RESULT, directory, result)


def alignment_matrix(inputs: EvalInputs) -> dict:
    """Mutual k-NN alignment of every pair of backbones on ``alignment_images`` test images (an
    ``LGM_ALIGNMENT``, reused when complete and made for the same backbones)."""
    tags = list(dict.fromkeys(inputs.distill_tags + inputs.eval_tags))
    directory = LGM_ALIGNMENT.locate(inputs.stage.workdir)
    if LGM_ALIGNMENT.is_complete(directory):
        meta = LGM_ALIGNMENT.read_meta(directory)
        LGM_ALIGNMENT.check(meta, {"tags": tags}, directory)
        return meta["result"]
    count = min(inputs.ev.alignment_images, len(inputs.test_labels))
    picks = random_subset(len(inputs.test_labels), count, seed=0)
    features = {tag: inputs.test_features(tag)[picks] for tag in tags}
    k = min(inputs.ev.alignment_k, count - 1)
    matrix = {a: {b: mutual_knn_alignment(features[a], features[b], k) for b in tags} for a in tags}
    saved = {"tags": tags, "k": k, "images": int(count), "matrix": matrix}
    LGM_ALIGNMENT.write(directory, {"tags": tags, "result": saved})
    return saved


def expected_results(config, workdir) -> list[Path]:
    """Every ``LGM_RESULT`` directory the stage writes for ``config`` (as ``build_sets`` and
    ``run`` name them) and the alignment's."""
    ev = config.lgm_eval
    distill = [tag for tag, _ in backbone_entries(config.lgm.backbones, workdir)]
    evals = [tag for tag, _ in backbone_entries(ev.backbones, workdir)] if ev.backbones else distill
    names = [f"lgm_{tag}" for tag in distill]
    if "random" in ev.baselines:
        names += [f"random_{seed}" for seed in ev.random_seeds]
    names += [f"{method}_{tag}" for tag in distill for method in ("centroids", "neighbors")
              if method in ev.baselines]
    if "full" in ev.baselines:
        names.append("full")
    return ([LGM_RESULT.locate(workdir, name=name, backbone=tag) for tag in evals for name in names]
            + [LGM_ALIGNMENT.locate(workdir)])


def is_complete(config, workdir) -> bool:
    """True when a rerun would compute nothing: every result and the tables are written
    (``ddjax run`` skips the stage then)."""
    tables = LGM_ALIGNMENT.locate(workdir).parent.parent / TABLES
    return tables.exists() and all(LGM_RESULT.is_complete(p) for p in expected_results(config, workdir))


def check_inputs(stage: Stage) -> None:
    """The distilled sets exist (one line naming `ddjax distill lgm` if not), checked before
    the data are loaded."""
    for tag, _ in backbone_entries(stage.config.lgm.backbones, stage.workdir):
        LGM_SET.read_meta(LGM_SET.locate(stage.workdir, tag=tag))


def run(stage: Stage) -> dict:
    ev = stage.config.lgm_eval
    started = time.perf_counter()
    check_inputs(stage)
    inputs = EvalInputs(stage)
    sets = build_sets(inputs)
    results = []
    for tag in inputs.eval_tags:
        for name, entry in sets.items():
            results.append(evaluate_set(inputs, name, entry, tag))
        if "full" in ev.baselines:
            results.append(evaluate_full(inputs, tag))
    alignment = alignment_matrix(inputs)
    report = lgm_tables.build_report(results, inputs.distill_tags, inputs.eval_tags, alignment)
    text = lgm_tables.render(report, scale=scale_note(stage.workdir, "lgm"))
    print(text, flush=True)
    (stage.directory / TABLES).write_text(text + "\n")
    write_json_atomic(stage.directory / RESULTS, report)
    same = {tag: report["main"].get("lgm", {}).get(tag) for tag in inputs.eval_tags}
    return print_summary("eval lgm", stage.workdir,
                         {"results": stage.directory / RESULTS,
                          "tables": stage.directory / TABLES},
                         lgm_top1={t: (v or {}).get("top1_mean") for t, v in same.items()},
                         rank_correlation=report["correlation"],
                         seconds=round(time.perf_counter() - started, 1))
