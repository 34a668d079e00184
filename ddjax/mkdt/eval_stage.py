"""``ddjax eval mkdt``: pre-train fresh encoders on MKDT's distilled set and the baselines, then
probe their frozen features with few labels on every readable downstream dataset.

Rows (``mkdt_eval.rows``, ``extra_synsets``): ``mkdt`` (this workdir's set at its learned lr),
``random`` / ``high_loss`` (the selections of ``distill.percent``) and ``full`` (the train split)
regressing the teacher's representations, ``no_pretrain`` (a fixed random encoder), and other
distilled sets. Encoders and each (row, dataset) result are artifacts written as soon as they are
known, so a rerun continues where a stopped one ended. See docs/mkdt.md#evaluation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from pathlib import Path
from typing import Callable

import jax
import ml_collections
import numpy as np

from ddjax import mesh
from ddjax.artifacts.representations import REPRESENTATIONS
from ddjax.artifacts.results import MKDT_ENCODERS, MKDT_RESULT, read_result, write_result
from ddjax.artifacts.selection import SELECTION, selection_indices
from ddjax.artifacts.synset import SYNSET, find_synset, read_synset
from ddjax.checkpoint import RunCheckpointer
from ddjax.data.pipeline import dataset_spec, open_rows
from ddjax.data.registry import DatasetSpec
from ddjax.data.sources import local_unavailable_reason
from ddjax.data.stream import LoadedSplit, SplitReader
from ddjax.data.subsets import label_fraction_indices, test_rows
from ddjax.data.transforms import normalize
from ddjax.errors import DdjaxError
from ddjax.mkdt import objectives
from ddjax.mkdt import tables as mkdt_tables
from ddjax.mkdt.lbfgs_probe import fit_probes, on_probe_step, probe_accuracy
from ddjax.mkdt.epochs import num_rows
from ddjax.mkdt.pretrain import features, init_encoders, pretrain, seed_keys
from ddjax.mkdt.student import (StudentRows, data_identity, load_representations,
                                representations_dir, student_model)
from ddjax.models import build_model
from ddjax.models.registry import REPRESENTATION_DIM
from ddjax.smoke import scale_note
from ddjax.runlog import print_summary, progress, warn, write_json_atomic
from ddjax.workdir import Stage

READS = ("data", "model", "experts.representations", "experts.standardize_targets", "distill.percent",
         "mkdt_eval")
ROWS = ("no_pretrain", "random", "high_loss", "full", "mkdt")
TABLES, RESULTS = "tables.md", "results.json"
KD_ROWS = ("random", "high_loss", "full")


def parse_extra_synsets(entries) -> dict[str, Path]:
    """``('name=path', ...)`` -> {name: path}; names must not shadow the built-in rows."""
    out = {}
    for entry in entries:
        name, sep, path = str(entry).partition("=")
        if not sep or not name or not path:
            raise DdjaxError(f"mkdt_eval.extra_synsets entry {entry!r} is not 'name=path'")
        if name in ROWS or name in out:
            raise DdjaxError(f"mkdt_eval.extra_synsets name {name!r} is used twice or is a built-in row")
        out[name] = Path(path)
    return out


def check_config(config) -> None:
    """The CLI's hook: refuse bad ``mkdt_eval`` settings before they are recorded."""
    ev = config.mkdt_eval
    unknown = sorted(set(ev.rows) - set(ROWS))
    if unknown:
        raise DdjaxError(f"unknown mkdt_eval.rows {unknown}; choose from {', '.join(ROWS)}")
    parse_extra_synsets(ev.extra_synsets)
    if not ev.rows and not ev.extra_synsets:
        raise DdjaxError("mkdt_eval.rows and extra_synsets are both empty; nothing to evaluate")
    if not ev.seeds or not ev.label_fractions or not ev.downstream:
        raise DdjaxError("mkdt_eval.seeds, label_fractions and downstream must not be empty")
    if any(not 0.0 < f <= 1.0 for f in ev.label_fractions):
        raise DdjaxError(f"mkdt_eval.label_fractions must lie in (0, 1], got {tuple(ev.label_fractions)}")
    for field in ("epochs", "batch_size", "probe_steps", "probe_max_iter", "probe_history",
                  "feature_batch"):
        if ev[field] < 1:
            raise DdjaxError(f"mkdt_eval.{field} must be >= 1, got {ev[field]}")


@dataclasses.dataclass
class PretrainSet:
    """What one row pre-trains on: normalised images with their regression targets (arrays in
    memory, or the train split's rows read step by step with ``data.stream``), the SGD lr; sets
    without targets (MTT-SSL) carry their experts' SSL settings and head size instead."""

    data: tuple[np.ndarray, np.ndarray] | StudentRows
    lr: float
    source: str
    objective: objectives.Objective | None = None  # sets without targets: their experts' objective
    ssl: dict | None = None
    ssl_outputs: int = 0

    @property
    def num_images(self) -> int:
        return num_rows(self.data)

    @property
    def num_outputs(self) -> int:
        targets = self.data.targets if isinstance(self.data, StudentRows) else self.data[1]
        return self.ssl_outputs or targets.shape[1]


@dataclasses.dataclass
class Downstream:
    """A downstream dataset as the probes read it: its train and test splits' rows, the test
    rows probed (``mkdt_eval.test_subset``) and their labels."""

    train: LoadedSplit | SplitReader
    test: LoadedSplit | SplitReader
    test_rows: np.ndarray
    test_labels: np.ndarray
    spec: DatasetSpec


class EvalInputs:
    """The stage's inputs, loaded on first use: train data and teacher targets, downstream sets."""

    def __init__(self, stage: Stage):
        self.stage, self.ev = stage, stage.config.mkdt_eval
        self.extra = parse_extra_synsets(self.ev.extra_synsets)
        self.rows = list(self.ev.rows) + list(self.extra)
        self._train = None
        self._downstream: dict[str, Downstream] = {}

    def train_rows(self) -> StudentRows:
        """The normalised train split's rows, each with the teacher's representation (the KD
        rows' targets): loaded whole, or read from the source with ``data.stream``."""
        if self._train is None:
            cfg, workdir = self.stage.config, self.stage.workdir  # present: check_inputs
            spec, reader = dataset_spec(cfg.data), open_rows(cfg.data, "train")
            self._train = StudentRows(reader, spec).with_targets(
                load_representations(cfg, workdir, spec, len(reader)))
        return self._train

    def _synset_dir(self, row: str) -> Path:
        return find_synset(self.extra.get(row, self.stage.workdir),
                           self.ev.synset_iteration if row == "mkdt" else -1)

    def source(self, row: str) -> str:
        """What ``row`` pre-trains on, as its encoders and results record it; found (and a
        missing set reported) before anything is pre-trained."""
        if row == "no_pretrain":
            return f"random init, seed {self.ev.no_pretrain_seed}"
        if row == "full":
            return "train split"
        if row in ("random", "high_loss"):
            return str(SELECTION.locate(self.stage.workdir, method=row,
                                        percent=self.stage.config.distill.percent))
        return str(self._synset_dir(row))

    def pretrain_set(self, row: str) -> PretrainSet:
        cfg, ev = self.stage.config, self.ev
        if row in ("random", "high_loss"):
            idx, directory = selection_indices(self.stage.workdir, row, cfg.distill.percent,
                                               data_identity(cfg))
            return PretrainSet(self.train_rows().read(idx)[0], ev.subset_lr, str(directory))
        if row == "full":
            rows = self.train_rows()  # streamed step by step, or held on the devices
            data = rows if cfg.data.get("stream", False) else (rows.every_image(), rows.targets)
            return PretrainSet(data, ev.subset_lr, "train split")
        directory = self._synset_dir(row)
        arrays, meta = read_synset(directory)
        objective = objectives.by_mode(meta["mode"])
        if meta.get("zca") or objective.targets == "labels":
            raise DdjaxError(f"{directory} was distilled in mode {meta['mode']!r}"
                             f"{' with ZCA' if meta.get('zca') else ''}; MKDT evaluation pre-trains "
                             "on unwhitened sets with learned targets or an SSL objective")
        SYNSET.check(meta, {"dataset": data_identity(cfg)["dataset"]}, directory)
        images = np.asarray(arrays["images"])
        if objective.targets == "none":
            return PretrainSet((images, np.zeros((len(images), 0), np.float32)),
                               float(arrays["lr"]), str(directory), objective, meta["ssl"],
                               meta["num_outputs"])
        return PretrainSet((images, np.asarray(arrays["targets"])), float(arrays["lr"]),
                           str(directory))

    def downstream(self, name: str) -> Downstream:
        """A downstream set's splits (loaded whole, or read from the source with
        ``data.stream``) and the test rows probed, with their labels."""
        if name not in self._downstream:
            data = self.stage.config.data
            section = ml_collections.ConfigDict({"name": name, "archive": data.archive,
                                                 "data_dir": data.data_dir, "train_subset": 0,
                                                 "stream": data.get("stream", False)})
            train, test = open_rows(section, "train"), open_rows(section, "test")
            probed = test_rows(len(test), self.ev.test_subset)
            self._downstream[name] = Downstream(train, test, probed, test.read_labels(probed),
                                                dataset_spec(section))
        return self._downstream[name]

    def readable_downstream(self) -> tuple[list[str], dict[str, str]]:
        """The downstream sets to evaluate, and {name: reason} for those skipped."""
        return readable_downstream(self.stage.config)


def readable_downstream(config) -> tuple[list[str], dict[str, str]]:
    """``mkdt_eval.downstream`` split into the sets readable here (in order) and {name: reason}
    for the others (no local copy, and ``allow_download`` off)."""
    ev, data, ready, skipped = config.mkdt_eval, config.data, [], {}
    for name in ev.downstream:
        reason = None if ev.allow_download else local_unavailable_reason(
            name, archive=data.archive or None, data_dir=data.data_dir or None)
        if reason is None:
            ready.append(name)
        else:
            skipped[name] = reason
    return ready, skipped


def result_paths(config, workdir, datasets: list[str]) -> dict[tuple[str, str], Path]:
    """{(row, dataset): the ``MKDT_RESULT`` directory} of every row and the given datasets."""
    rows = list(config.mkdt_eval.rows) + list(parse_extra_synsets(config.mkdt_eval.extra_synsets))
    return {(row, d): MKDT_RESULT.locate(workdir, row=row, dataset=d) for row in rows for d in datasets}


def is_complete(config, workdir) -> bool:
    """True when a rerun would compute nothing: every (row, readable dataset) result and the
    tables are written (``ddjax run`` skips the stage then)."""
    datasets, _ = readable_downstream(config)
    paths = result_paths(config, workdir, datasets)
    tables = MKDT_RESULT.locate(workdir, row="x", dataset="x").parent.parent / TABLES
    return bool(datasets) and tables.exists() and all(MKDT_RESULT.is_complete(p)
                                                     for p in paths.values())


def encoder_model(config, image_size):
    """The evaluation encoder: ``mkdt_eval.model``, else the student network."""
    name = config.mkdt_eval.model
    if not name:
        return student_model(config, REPRESENTATION_DIM, image_size)
    return build_model(name, num_outputs=REPRESENTATION_DIM, image_size=image_size,
                       conv_impl=config.model.conv_impl)


def check_source(row: str, where: Path, recorded: str, current: str) -> None:
    """Encoders and results are reused only for the set they were made from (a newer distilled
    set, another selection): else one line saying what to remove."""
    if recorded != current:
        raise DdjaxError(f"{where} was made for row {row!r} from {recorded}, but the row now "
                         f"pre-trains on {current}; remove the row's encoders/{row} and "
                         f"results/{row}__* in {where.parent.parent}, or use another --workdir")


def _encoders(inputs: EvalInputs, row: str, model, image_size):
    """``(params_S, state_S, record)`` of a row, pre-trained now or loaded from an earlier run."""
    ev, seeds = inputs.ev, list(inputs.ev.seeds)
    if row == "no_pretrain":
        params, state = init_encoders(model, seed_keys([ev.no_pretrain_seed], 0), image_size)
        params, state = jax.tree.map(lambda x: np.repeat(x, len(seeds), axis=0), (params, state))
        return params, state, {"source": inputs.source(row)}
    directory = MKDT_ENCODERS.locate(inputs.stage.workdir, row=row)
    if MKDT_ENCODERS.is_complete(directory):
        saved, meta = MKDT_ENCODERS.read(directory)
        check_source(row, directory, meta["pretraining"]["source"], inputs.source(row))
        return saved["params"], saved.get("model_state", {}), meta["pretraining"]
    data = inputs.pretrain_set(row)
    if data.num_outputs != REPRESENTATION_DIM:
        model = model.clone(num_outputs=data.num_outputs)
    # A set without targets pre-trains with its experts' objective (MTT-SSL: Barlow Twins).
    objective = data.objective.expert_objective(model.apply, None, data.ssl) if data.objective else None
    params, state = init_encoders(model, seed_keys(seeds, 0), image_size)
    started = time.perf_counter()
    # Epoch checkpoints of this row's pre-training, kept apart per set it pre-trains on.
    resume = inputs.stage.directory / "resume" / row / hashlib.sha256(data.source.encode()).hexdigest()[:12]
    with RunCheckpointer(resume) as checkpoints:
        params, state, loss = pretrain(model, params, state, data.data,
                                       seed_keys(seeds, 1), lr=data.lr, epochs=ev.epochs,
                                       batch_size=ev.batch_size, momentum=ev.momentum,
                                       weight_decay=ev.weight_decay, objective=objective,
                                       aug_keys=seed_keys(seeds, 3), desc=f"pre-train {row}",
                                       checkpoints=checkpoints)
    if not np.isfinite(loss).all():
        raise DdjaxError(f"pre-training {row} diverged (final loss {loss.tolist()}) at lr {data.lr}")
    record = {"source": data.source, "lr": data.lr, "num_images": data.num_images,
              "objective": data.objective.expert_loss if data.objective else "mse",
              "final_loss": loss.tolist(), "seconds": round(time.perf_counter() - started, 1)}
    MKDT_ENCODERS.write(directory, {"pretraining": record},
                        {"params": params, **({"model_state": state} if state else {})})
    return params, state, record


def _counting(prepare: Callable, bar, budget: int) -> Callable:
    """``prepare`` that advances ``bar`` by the images it prepares, at most ``budget`` (the last
    batch is padded)."""
    left = [budget]

    def counted(u8):
        done = min(len(u8), left[0])
        left[0] -= done
        bar.update(done)
        return prepare(u8)

    return counted


def evaluate(inputs: EvalInputs, row: str, dataset: str, model, encoders) -> dict:
    """Probe accuracies of one row on one downstream dataset, for every fraction and seed: the
    features of every fraction first (one progress bar, in images), then the probes (one bar,
    in L-BFGS steps)."""
    ev, seeds = inputs.ev, list(inputs.ev.seeds)
    params, state, record = encoders
    sets = inputs.downstream(dataset)
    spec, test_y = sets.spec, sets.test_labels
    prepare = lambda u8: normalize(u8, spec.mean, spec.std)  # noqa: E731
    train_mode = bool(ev.bn_train_mode_features and state)
    fractions = list(ev.label_fractions)
    picks = {f: np.stack([label_fraction_indices(len(sets.train), f, s) for s in seeds])
             for f in fractions}
    started, accuracy, probe_loss, test, inputs_of = time.perf_counter(), {}, {}, None, {}
    images = sum(p.size for p in picks.values()) + len(seeds) * len(test_y) * (
        len(fractions) if train_mode else 1)
    with progress(total=images, desc=f"features {row} on {dataset}") as bar:
        for fraction, idx in picks.items():
            z_train, fed_state = features(model, params, state, sets.train, idx,
                                          _counting(prepare, bar, idx.size),
                                          batch_size=ev.feature_batch, train_mode=train_mode)
            if test is None or train_mode:
                test, _ = features(model, params, fed_state, sets.test, sets.test_rows,
                                   _counting(prepare, bar, len(seeds) * len(test_y)),
                                   batch_size=ev.feature_batch)
            inputs_of[fraction] = z_train, test
    steps = ev.probe_steps
    with progress(total=len(fractions) * steps, desc=f"probes {row} on {dataset}") as bar:
        for k, fraction in enumerate(fractions):
            z_train, test = inputs_of.pop(fraction)

            def reached(step, base=k * steps):   # a step's callback may come more than once
                bar.update(max(0, base + step + 1 - bar.n))

            with on_probe_step(reached):
                W, b, loss = mesh.fetch(fit_probes(  # the seeds split over the data axis
                    *mesh.shard((z_train, sets.train.read_labels(picks[fraction].reshape(-1))
                                 .reshape(picks[fraction].shape), seed_keys(seeds, 2))),
                    num_classes=spec.num_classes, steps=steps, max_iter=ev.probe_max_iter,
                    history=ev.probe_history, l2=ev.probe_l2))
            bar.update(max(0, (k + 1) * steps - bar.n))   # a fit that converged early
            key = mkdt_tables.fraction_key(fraction)
            accuracy[key] = np.asarray(probe_accuracy(W, b, test, test_y)).tolist()
            probe_loss[key] = np.asarray(loss).tolist()
    return {"row": row, "dataset": dataset, "seeds": seeds, "accuracy": accuracy,
            "probe_loss": probe_loss, "feature_dim": int(test.shape[-1]),
            "num_test": int(len(test_y)), "pretraining": record,
            "seconds": round(time.perf_counter() - started, 1)}


def check_inputs(inputs: EvalInputs, datasets: list[str]) -> dict[str, str]:
    """{row: source} of every row, after checking that the inputs of every row still to
    evaluate exist (the distilled sets, the selections, the teacher's representations), so a
    missing one is one line before anything is pre-trained or probed."""
    cfg, workdir = inputs.stage.config, inputs.stage.workdir
    sources = {row: inputs.source(row) for row in inputs.rows}  # a missing distilled set: here
    for row in inputs.rows:
        done = all(MKDT_RESULT.is_complete(MKDT_RESULT.locate(workdir, row=row, dataset=d))
                   for d in datasets)
        if done or MKDT_ENCODERS.is_complete(MKDT_ENCODERS.locate(workdir, row=row)):
            continue
        if row in ("random", "high_loss"):
            selection_indices(workdir, row, cfg.distill.percent, data_identity(cfg))
        if row in KD_ROWS and not REPRESENTATIONS.is_complete(representations_dir(cfg, workdir)):
            raise DdjaxError(f"the {row} row pre-trains by KD to the teacher's representations, "
                             f"and there are none at {representations_dir(cfg, workdir)}; run "
                             f"`ddjax represent` first, or leave {row} out of mkdt_eval.rows")
    return sources


def run(stage: Stage) -> dict:
    started = time.perf_counter()
    inputs = EvalInputs(stage)
    ev = inputs.ev
    datasets, skipped = inputs.readable_downstream()
    if not datasets:
        raise DdjaxError("no downstream dataset is readable here: "
                         + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    if skipped:
        warn(f"eval mkdt: skipping the downstream datasets not readable here: "
             f"{', '.join(skipped)} (the tables say why)")
    sources = check_inputs(inputs, datasets)
    image_size = tuple(dataset_spec(stage.config.data).image_size or (32, 32))
    model = encoder_model(stage.config, image_size)
    results = []
    for r, row in enumerate(inputs.rows):
        paths = {d: MKDT_RESULT.locate(stage.workdir, row=row, dataset=d) for d in datasets}
        todo = [d for d in datasets if not MKDT_RESULT.is_complete(paths[d])]
        for d in set(datasets) - set(todo):
            check_source(row, paths[d], read_result(MKDT_RESULT, paths[d])["pretraining"]["source"],
                         sources[row])
        encoders = _encoders(inputs, row, model, image_size) if todo else None
        for dataset in datasets:
            if dataset in todo:
                result = evaluate(inputs, row, dataset, model, encoders)
                # One step per (row, configured dataset): stable when more datasets become readable.
                step = r * len(ev.downstream) + list(ev.downstream).index(dataset)
                stage.metrics.rewind(step - 1, row=row, dataset=dataset)
                stage.metrics.write(step, row=row, dataset=dataset, accuracy=result["accuracy"])
                write_result(MKDT_RESULT, paths[dataset], result)
            results.append(read_result(MKDT_RESULT, paths[dataset]))
    report = mkdt_tables.build_report(results, inputs.rows, datasets, list(ev.label_fractions), skipped)
    text = mkdt_tables.render(report, scale=scale_note(stage.workdir, "mkdt"))
    print(text, flush=True)
    (stage.directory / TABLES).write_text(text + "\n")
    write_json_atomic(stage.directory / RESULTS, report)
    own = stage.config.data.name
    headline = {row: {k: t.get(row, {}).get(own, {}).get("mean") for k, t in report["tables"].items()}
                for row in inputs.rows}
    return print_summary("eval mkdt", stage.workdir,
                         {"results": stage.directory / RESULTS,
                          "tables": stage.directory / TABLES},
                         top1_on_own_dataset=headline, skipped=sorted(skipped),
                         seconds=round(time.perf_counter() - started, 1))
