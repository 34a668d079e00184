"""``ddjax eval lgm``: linear probes on LGM's distilled sets and the baselines, for every pair of
distillation backbone A (``lgm.backbones``) and evaluation backbone B (``lgm_eval.backbones``,
default: the same list), plus the mutual-k-NN alignment of the backbones.

Sets evaluated on every B (lgm.md §6-7):
  ``lgm_<A>``        the distilled set of A (``<workdir>/lgm/<A>/set``), ``seeds`` probes;
  ``centroids_<A>``  the train image nearest (L2) to each class-mean embedding under A, ``seeds``
                     probes;
  ``neighbors_<A>``  the same-class train image most cosine-similar to each of A's distilled images;
  ``random_<s>``     ``lgm.ipc`` random train images per class for each s in ``random_seeds``, one
                     probe seeded with s (the reference's protocol), summarised over the seeds;
and ``full`` (a probe on the whole train split) on every B. Probes: Adam, lr = lr_per_256 *
min(batch_size, N) / 256, cosine to 0 over ``epochs``, "basic" augmentation every epoch,
final-epoch test top-1/top-5; mean +- population std over seeds. Baseline sets are written as
image sets under ``<workdir>/lgm_eval/sets``; every (set, B) result under ``results/`` as soon as
it is known, so a rerun skips what is done. ``results.json`` and ``tables.md`` hold the tables
this stage prints.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ddjax.data.pipeline import dataset_spec, load_split
from ddjax.data.subsets import random_subset
from ddjax.artifacts.image_set import is_complete, read_image_set, write_image_set
from ddjax.lgm.augment import check_mode
from ddjax.lgm.backbones import backbone_entries, load_checked
from ddjax.errors import DdjaxError
from ddjax.lgm import tables as lgm_tables
from ddjax.lgm.alignment import mutual_knn_alignment
from ddjax.lgm.baselines import centroid_indices, neighbor_indices, random_real_indices
from ddjax.lgm.probe import (embed_images, make_embedder, probe_lr, topk_accuracy,
                                  train_probes)
from ddjax.runlog import print_summary, write_json_atomic
from ddjax.workdir import Stage

READS = ("seed", "data", "lgm", "lgm_eval")
BASELINES = ("random", "centroids", "neighbors", "full")


def check_section(ev) -> None:
    unknown = sorted(set(ev.baselines) - set(BASELINES))
    if unknown:
        raise DdjaxError(f"unknown lgm_eval.baselines {unknown}; "
                         f"choose from {', '.join(BASELINES)}")
    for field in ("seeds", "epochs", "batch_size", "full_epochs", "full_batch_size", "full_seeds",
                  "embed_batch", "alignment_k"):
        if ev[field] < 1:
            raise DdjaxError(f"lgm_eval.{field} must be >= 1, got {ev[field]}")
    check_mode(ev.aug_mode)


def check_config(config) -> None:
    """The CLI's hook: refuse bad ``lgm_eval`` settings (and ipc) before they are recorded."""
    check_section(config.lgm_eval)
    if config.lgm.ipc < 1:
        raise DdjaxError(f"lgm.ipc must be >= 1, got {config.lgm.ipc}")


class Workspace:
    """Data, lazily loaded backbones and cached train embeddings of one evaluation run."""

    def __init__(self, stage: Stage):
        self.stage, self.ev = stage, stage.config.lgm_eval
        self.spec = dataset_spec(stage.config.data)
        self.train_images, self.train_labels = load_split(stage.config.data, "train")
        test_images, test_labels = load_split(stage.config.data, "test")
        if self.ev.test_subset:
            count = min(self.ev.test_subset, len(test_labels))
            keep = random_subset(len(test_labels), count, seed=0)
            test_images, test_labels = test_images[keep], test_labels[keep]
        self.test_images, self.test_labels = test_images, test_labels
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
            self._train_features[tag] = embed_images(self.backbone(tag), self.train_images,
                                                     self.ev.embed_batch, desc=f"embed train {tag}")
        return self._train_features[tag]

    def test_features(self, tag: str) -> np.ndarray:
        if tag not in self._test_features:
            self._test_features[tag] = embed_images(self.backbone(tag), self.test_images,
                                                    self.ev.embed_batch, desc=f"embed test {tag}")
        return self._test_features[tag]


def _store_set(ws: Workspace, name: str, indices: np.ndarray, meta: dict) -> Path:
    directory = ws.stage.directory / "sets" / name
    if not is_complete(directory):
        images = ws.train_images[indices].astype(np.float32) / 255.0
        meta = dict(meta, train_indices=indices.tolist(), dataset=ws.spec.name)
        write_image_set(directory, images, ws.train_labels[indices], meta,
                        class_names=ws.spec.class_names)
    return directory


def _distilled_sets(ws: Workspace, seeds: list[int]) -> dict[str, dict]:
    sets = {}
    for tag in ws.distill_tags:
        directory = ws.stage.sibling("lgm") / tag / "set"
        if not is_complete(directory):
            raise DdjaxError(f"no distilled set for backbone {tag!r} at {directory}; run "
                             "`ddjax distill lgm` with the same --config and --workdir first")
        sets[f"lgm_{tag}"] = {"directory": directory, "seeds": seeds, "group": "lgm", "source": tag}
    return sets


def _neighbor_picks(ws: Workspace, tag: str, distilled_dir: Path) -> np.ndarray:
    images, labels, meta = read_image_set(distilled_dir)
    backbone = ws.backbone(tag)
    if meta.get("feature_dim") not in (None, backbone.feature_dim):
        raise DdjaxError(f"set lgm_{tag} was distilled with {meta['feature_dim']}-d features but "
                         f"backbone {ws.specs[tag]!r} now gives {backbone.feature_dim}")
    queries = embed_images(backbone, images, ws.ev.embed_batch)
    return neighbor_indices(queries, labels, ws.train_features(tag), ws.train_labels)


def build_sets(ws: Workspace) -> dict[str, dict]:
    """name -> {directory, seeds, group, source}: every set to evaluate, baselines written first."""
    ev, ipc = ws.ev, ws.stage.config.lgm.ipc
    probe_seeds = [ev.seed_base + i for i in range(ev.seeds)]
    sets = _distilled_sets(ws, probe_seeds)
    if "random" in ev.baselines:
        for seed in ev.random_seeds:
            picks = random_real_indices(ws.train_labels, ipc, seed)
            directory = _store_set(ws, f"random_{seed}", picks,
                                   {"method": "random", "seed": int(seed), "ipc": ipc})
            sets[f"random_{seed}"] = {"directory": directory, "seeds": [int(seed)],
                                      "group": "random", "source": None}
    pickers = {
        "centroids": lambda tag: centroid_indices(ws.train_features(tag), ws.train_labels,
                                                  ws.spec.num_classes),
        "neighbors": lambda tag: _neighbor_picks(ws, tag, sets[f"lgm_{tag}"]["directory"]),
    }
    for tag in ws.distill_tags:
        for method, pick in pickers.items():
            if method not in ev.baselines:
                continue
            name = f"{method}_{tag}"
            directory = ws.stage.directory / "sets" / name
            if not is_complete(directory):
                _store_set(ws, name, pick(tag), {"method": method, "backbone": ws.specs[tag],
                                                 "tag": tag})
            sets[name] = {"directory": directory, "seeds": probe_seeds, "group": method,
                          "source": tag}
    return sets


def _result_path(ws: Workspace, name: str, tag: str) -> Path:
    return ws.stage.directory / "results" / f"{name}__{tag}.json"


def _finish(ws: Workspace, probes, losses, tag: str, seeds, extra: dict) -> dict:
    features, labels = ws.test_features(tag), ws.test_labels
    top1 = topk_accuracy(probes, features, labels, 1)
    top5 = topk_accuracy(probes, features, labels, 5) if ws.spec.num_classes >= 5 else None
    return dict(extra, seeds=list(map(int, seeds)), top1=top1.tolist(),
                top5=None if top5 is None else top5.tolist(),
                train_loss=np.asarray(losses).tolist())


def evaluate_set(ws: Workspace, name: str, entry: dict, tag: str) -> dict:
    """Probes on one set with backbone ``tag`` (cached in results/)."""
    path = _result_path(ws, name, tag)
    if path.exists():
        return json.loads(path.read_text())
    images, labels, _ = read_image_set(entry["directory"])
    backbone, ev = ws.backbone(tag), ws.ev
    batch = min(ev.batch_size, len(labels))
    started = time.perf_counter()
    probes, losses = train_probes(images, labels, entry["seeds"], num_classes=ws.spec.num_classes,
                                  dim=backbone.feature_dim, epochs=ev.epochs, batch_size=batch,
                                  lr=probe_lr(ev.lr_per_256, batch),
                                  embed=make_embedder(backbone, ev.aug_mode),
                                  variables=backbone.variables, desc=f"probe {name} on {tag}")
    result = _finish(ws, probes, losses, tag, entry["seeds"],
                     {"set": name, "eval_backbone": tag, "group": entry["group"],
                      "source": entry["source"], "num_images": int(len(labels)),
                      "seconds": round(time.perf_counter() - started, 2)})
    write_json_atomic(path, result)
    return result


def evaluate_full(ws: Workspace, tag: str) -> dict:
    """A probe on the whole train split (or ``full_train_subset`` of it) with backbone ``tag``."""
    path = _result_path(ws, "full", tag)
    if path.exists():
        return json.loads(path.read_text())
    ev, backbone = ws.ev, ws.backbone(tag)
    seeds = [ev.seed_base + i for i in range(ev.full_seeds)]
    n = len(ws.train_labels)
    keep = (random_subset(n, min(ev.full_train_subset, n), seed=0) if ev.full_train_subset
            else np.arange(n))
    started = time.perf_counter()
    common = dict(num_classes=ws.spec.num_classes, dim=backbone.feature_dim, epochs=ev.full_epochs,
                  batch_size=ev.full_batch_size,
                  lr=probe_lr(ev.full_lr_per_256, ev.full_batch_size),
                  desc=f"probe full on {tag}")
    if ev.full_augment:
        probes, losses = train_probes(ws.train_images[keep], ws.train_labels[keep], seeds,
                                      embed=make_embedder(backbone, ev.aug_mode),
                                      variables=backbone.variables, **common)
    else:
        features = ws.train_features(tag)[keep]
        probes, losses = train_probes(features, ws.train_labels[keep], seeds, **common)
    result = _finish(ws, probes, losses, tag, seeds,
                     {"set": "full", "eval_backbone": tag, "group": "full", "source": None,
                      "num_images": int(len(keep)), "augment": bool(ev.full_augment),
                      "seconds": round(time.perf_counter() - started, 2)})
    write_json_atomic(path, result)
    return result


def alignment_matrix(ws: Workspace) -> dict:
    """Mutual k-NN alignment of every pair of backbones on ``alignment_images`` test images."""
    tags = list(dict.fromkeys(ws.distill_tags + ws.eval_tags))
    path = ws.stage.directory / "results" / "alignment.json"
    if path.exists():
        saved = json.loads(path.read_text())
        if saved["tags"] == tags:
            return saved
    count = min(ws.ev.alignment_images, len(ws.test_labels))
    picks = random_subset(len(ws.test_labels), count, seed=0)
    features = {tag: ws.test_features(tag)[picks] for tag in tags}
    k = min(ws.ev.alignment_k, count - 1)
    matrix = {a: {b: mutual_knn_alignment(features[a], features[b], k) for b in tags} for a in tags}
    saved = {"tags": tags, "k": k, "images": int(count), "matrix": matrix}
    write_json_atomic(path, saved)
    return saved


def run(stage: Stage) -> dict:
    ev = stage.config.lgm_eval
    check_config(stage.config)
    started = time.perf_counter()
    ws = Workspace(stage)
    sets = build_sets(ws)
    results = []
    for tag in ws.eval_tags:
        for name, entry in sets.items():
            results.append(evaluate_set(ws, name, entry, tag))
        if "full" in ev.baselines:
            results.append(evaluate_full(ws, tag))
    alignment = alignment_matrix(ws)
    report = lgm_tables.build_report(results, ws.distill_tags, ws.eval_tags, alignment)
    text = lgm_tables.render(report)
    print(text, flush=True)
    (stage.directory / "tables.md").write_text(text + "\n")
    write_json_atomic(stage.directory / "results.json", report)
    same = {tag: report["main"].get("lgm", {}).get(tag) for tag in ws.eval_tags}
    return print_summary("eval lgm", stage.workdir,
                         {"results": stage.directory / "results.json",
                          "tables": stage.directory / "tables.md"},
                         lgm_top1={t: (v or {}).get("top1_mean") for t, v in same.items()},
                         rank_correlation=report["correlation"],
                         seconds=round(time.perf_counter() - started, 1))
