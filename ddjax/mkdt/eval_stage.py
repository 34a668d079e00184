"""``ddjax eval mkdt``: pre-train fresh encoders on MKDT's distilled set and the baselines, probe
their frozen features with few labels on every readable downstream dataset (mkdt.md §5-§6).

Rows (``mkdt_eval.rows`` and ``extra_synsets``):
  ``mkdt``         this workdir's distilled set: MSE to its learned targets at its learned lr;
  ``random``,      ``select``'s random / high-loss subsets of ``distill.percent``% and
  ``high_loss``    the whole train split (``full``), regressing the teacher's representations at
  ``full``         ``subset_lr`` (0.1): the reference pre-trains every baseline by KD;
  ``no_pretrain``  one fixed random encoder (seed ``no_pretrain_seed``) for every probe seed;
  ``<name>``       each ``name=path`` of ``extra_synsets`` (e.g. the random-init ablation, or
                   an MTT-SSL set, pre-trained with its experts' Barlow Twins objective).
Every seed pre-trains its own encoder (all seeds in one vmapped program, once per row and shared
by the downstream datasets: the reference re-draws its clock-seeded encoder per dataset, which
changes no expectation), then, per downstream dataset and label fraction, draws its labelled
subset with ``random.sample`` seeded by the seed, extracts features and fits the L-BFGS probe.

Downstream datasets without a local copy are skipped with the reason printed (downloads only
with ``allow_download``). Pre-trained encoders go to ``<workdir>/mkdt_eval/encoders/<row>`` and
each (row, dataset) result to ``results/`` as soon as it is known, so a rerun continues where a
stopped one ended. ``results.json`` and ``tables.md`` hold the tables this stage prints.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np

from ddjax.checkpoint import load_pytree, save_pytree
from ddjax.data.pipeline import dataset_spec, load_split
from ddjax.data.sources import local_unavailable_reason
from ddjax.data.subsets import label_fraction_indices, random_subset
from ddjax.data.transforms import normalize
from ddjax.artifacts.synset import META, read_synset
from ddjax.errors import DdjaxError
from ddjax.mkdt import tables as mkdt_tables
from ddjax.mkdt.lbfgs_probe import fit_probes, probe_accuracy
from ddjax.mkdt.pretrain import features, init_encoders, pretrain, seed_keys
from ddjax.mkdt.student import load_targets, student_inputs, student_model
from ddjax.mkdt.experts_stage import ssl_objective
from ddjax.models import build_model
from ddjax.models.registry import REPRESENTATION_DIM
from ddjax.runlog import print_summary, write_json_atomic
from ddjax.workdir import Stage

READS = ("seed", "data", "model", "experts", "select", "distill", "mkdt_eval")
ROWS = ("no_pretrain", "random", "high_loss", "full", "mkdt")


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
    """What one row pre-trains on: normalised images, regression targets, the SGD lr; MTT-SSL
    sets have zero-width targets and the Barlow Twins settings of their experts (``ssl``)."""

    images: np.ndarray
    targets: np.ndarray
    lr: float
    source: str
    ssl: dict | None = None
    ssl_outputs: int = 0  # MTT-SSL sets: the head size their experts had

    @property
    def num_outputs(self) -> int:
        return self.ssl_outputs or self.targets.shape[1]


def synset_dir(path: Path, iteration: int) -> Path:
    """The distilled set under ``path`` (a ``synsets/iter_*`` dir, a distill dir or a workdir):
    ``iter_<iteration>``, or the latest when ``iteration`` is -1."""
    if (path / META).exists():
        return path
    for root in (path / "synsets", path / "distill" / "synsets"):
        if root.is_dir():
            break
    else:
        raise DdjaxError(f"no distilled sets under {path}; run `ddjax distill mkdt` there first")
    if iteration >= 0:
        chosen = root / f"iter_{iteration:06d}"
        if not (chosen / META).exists():
            raise DdjaxError(f"no distilled set {chosen}; saved: "
                             f"{', '.join(p.name for p in sorted(root.glob('iter_*'))) or 'none'}")
        return chosen
    done = sorted(p for p in root.glob("iter_*") if (p / META).exists())
    if not done:
        raise DdjaxError(f"no complete distilled set in {root}; run `ddjax distill mkdt` first")
    return done[-1]


class Workspace:
    """The stage's inputs, loaded on first use: train data and teacher targets, downstream sets."""

    def __init__(self, stage: Stage):
        self.stage, self.ev = stage, stage.config.mkdt_eval
        self.extra = parse_extra_synsets(self.ev.extra_synsets)
        self.rows = list(self.ev.rows) + list(self.extra)
        self._train = None
        self._downstream: dict[str, tuple] = {}

    def train_data(self) -> tuple[np.ndarray, np.ndarray]:
        if self._train is None:
            images, labels, _, zca = student_inputs(self.stage)
            if zca is not None:
                raise DdjaxError("MKDT evaluation pre-trains on unwhitened images; "
                                 "this config sets experts.zca")
            if self.stage.config.experts.loss != "mse":
                raise DdjaxError("the random, high_loss and full rows pre-train by KD to teacher "
                                 f"representations, but experts.loss is {self.stage.config.experts.loss!r} "
                                 "here; evaluate those rows with an MKDT (mse) config")
            self._train = images, load_targets(self.stage, labels)[0]
        return self._train

    def pretrain_set(self, row: str) -> PretrainSet:
        cfg, ev = self.stage.config, self.ev
        if row in ("random", "high_loss"):
            images, targets = self.train_data()
            path = self.stage.sibling("select") / f"{row}_{cfg.distill.percent:g}pct.npy"
            if not path.exists():
                raise DdjaxError(f"no {row} subset at {path}; run `ddjax select "
                                 f"{row.replace('_', '-')}` with this --config and --workdir first")
            idx = np.load(path)
            return PretrainSet(images[idx], targets[idx], ev.subset_lr, str(path))
        if row == "full":
            images, targets = self.train_data()
            return PretrainSet(images, targets, ev.subset_lr, "train split")
        base = self.extra.get(row, self.stage.sibling("distill"))
        directory = synset_dir(base, ev.synset_iteration if row == "mkdt" else -1)
        arrays, meta = read_synset(directory)
        mode = meta.get("mode", "mkdt")
        if meta.get("zca") or mode not in ("mkdt", "mtt_ssl"):
            raise DdjaxError(f"{directory} was distilled in mode {mode!r}"
                             f"{' with ZCA' if meta.get('zca') else ''}; MKDT evaluation pre-trains "
                             "on unwhitened 'mkdt' (targets) or 'mtt_ssl' (Barlow Twins) sets")
        if meta.get("dataset") != cfg.data.name:
            raise DdjaxError(f"{directory} distils {meta.get('dataset')!r} but data.name is "
                             f"{cfg.data.name!r}; evaluate it with its own config")
        images = np.asarray(arrays["images"])
        if mode == "mtt_ssl":
            return PretrainSet(images, np.zeros((len(images), 0), np.float32), float(arrays["lr"]),
                               str(directory), ssl=meta["ssl"], ssl_outputs=meta["num_outputs"])
        return PretrainSet(images, np.asarray(arrays["targets"]), float(arrays["lr"]), str(directory))

    def downstream(self, name: str):
        """``(train uint8, train labels, test uint8, test labels, spec)`` of a downstream set."""
        if name not in self._downstream:
            data = self.stage.config.data
            section = ml_collections.ConfigDict({"name": name, "archive": data.archive,
                                                 "data_dir": data.data_dir, "train_subset": 0})
            train_x, train_y = load_split(section, "train")
            test_x, test_y = load_split(section, "test")
            if self.ev.test_subset and self.ev.test_subset < len(test_y):
                keep = random_subset(len(test_y), self.ev.test_subset, seed=0)
                test_x, test_y = test_x[keep], test_y[keep]
            self._downstream[name] = train_x, train_y, test_x, test_y, dataset_spec(section)
        return self._downstream[name]

    def readable_downstream(self) -> tuple[list[str], dict[str, str]]:
        """The downstream sets to evaluate, and {name: reason} for those skipped."""
        data, ready, skipped = self.stage.config.data, [], {}
        for name in self.ev.downstream:
            reason = None if self.ev.allow_download else local_unavailable_reason(
                name, archive=data.archive or None, data_dir=data.data_dir or None)
            if reason is None:
                ready.append(name)
            else:
                skipped[name] = reason
                print(f"eval mkdt: skipping downstream dataset {name}: {reason}", flush=True)
        return ready, skipped


def encoder_model(config, image_size):
    """The evaluation encoder: ``mkdt_eval.model``, else the student network."""
    name = config.mkdt_eval.model
    if not name:
        return student_model(config, REPRESENTATION_DIM, image_size)
    return build_model(name, num_outputs=REPRESENTATION_DIM, image_size=image_size,
                       conv_impl=config.model.conv_impl)


def _encoders(ws: Workspace, row: str, model, image_size):
    """``(params_S, state_S, record)`` of a row, pre-trained now or loaded from an earlier run."""
    ev, seeds = ws.ev, list(ws.ev.seeds)
    path = ws.stage.directory / "encoders" / row
    if row == "no_pretrain":
        params, state = init_encoders(model, seed_keys([ev.no_pretrain_seed], 0), image_size)
        params, state = jax.tree.map(lambda x: np.repeat(x, len(seeds), axis=0), (params, state))
        return params, state, {"source": f"random init, seed {ev.no_pretrain_seed}"}
    record_path = path.with_suffix(".json")
    if record_path.exists():
        saved = load_pytree(path)
        return saved["params"], saved.get("model_state", {}), json.loads(record_path.read_text())
    if path.exists():  # a run stopped between saving the encoders and their record: redo them
        shutil.rmtree(path)
    data = ws.pretrain_set(row)
    if data.num_outputs != REPRESENTATION_DIM:
        model = model.clone(num_outputs=data.num_outputs)
    # An MTT-SSL set pre-trains with its experts' Barlow Twins on two DSA views.
    objective = ssl_objective(model.apply, data.ssl) if data.ssl else None
    params, state = init_encoders(model, seed_keys(seeds, 0), image_size)
    started = time.perf_counter()
    params, state, loss = pretrain(model, params, state, data.images, data.targets,
                                   seed_keys(seeds, 1), lr=data.lr, epochs=ev.epochs,
                                   batch_size=ev.batch_size, momentum=ev.momentum,
                                   weight_decay=ev.weight_decay, objective=objective,
                                   aug_keys=seed_keys(seeds, 3), desc=f"pre-train {row}")
    if not np.isfinite(loss).all():
        raise DdjaxError(f"pre-training {row} diverged (final loss {loss.tolist()}) at lr {data.lr}")
    record = {"source": data.source, "lr": data.lr, "num_images": int(len(data.images)),
              "objective": "barlow_twins" if data.ssl else "mse",
              "final_loss": loss.tolist(), "seconds": round(time.perf_counter() - started, 1)}
    save_pytree(path, {"params": params, **({"model_state": state} if state else {})})
    write_json_atomic(record_path, record)
    return params, state, record


def evaluate(ws: Workspace, row: str, dataset: str, model, encoders) -> dict:
    """Probe accuracies of one row on one downstream dataset, for every fraction and seed."""
    ev, seeds = ws.ev, list(ws.ev.seeds)
    params, state, record = encoders
    train_x, train_y, test_x, test_y, spec = ws.downstream(dataset)
    prepare = lambda u8: normalize(u8, spec.mean, spec.std)  # noqa: E731
    train_mode = bool(ev.bn_train_mode_features and state)
    started, accuracy, probe_loss, test = time.perf_counter(), {}, {}, None
    for fraction in ev.label_fractions:
        idx = np.stack([label_fraction_indices(len(train_y), fraction, s) for s in seeds])
        z_train, fed_state = features(model, params, state, train_x, idx, prepare,
                                      batch_size=ev.feature_batch, train_mode=train_mode)
        if test is None or train_mode:
            test, _ = features(model, params, fed_state, test_x, np.arange(len(test_y)), prepare,
                               batch_size=ev.feature_batch)
        W, b, loss = fit_probes(z_train, train_y[idx], seed_keys(seeds, 2),
                                num_classes=spec.num_classes, steps=ev.probe_steps,
                                max_iter=ev.probe_max_iter, history=ev.probe_history, l2=ev.probe_l2)
        key = mkdt_tables.fraction_key(fraction)
        accuracy[key] = np.asarray(probe_accuracy(W, b, test, test_y)).tolist()
        probe_loss[key] = np.asarray(loss).tolist()
    return {"row": row, "dataset": dataset, "seeds": seeds, "accuracy": accuracy,
            "probe_loss": probe_loss, "feature_dim": int(test.shape[-1]),
            "num_test": int(len(test_y)), "pretraining": record,
            "seconds": round(time.perf_counter() - started, 1)}


def run(stage: Stage) -> dict:
    check_config(stage.config)
    started = time.perf_counter()
    ws = Workspace(stage)
    datasets, skipped = ws.readable_downstream()
    if not datasets:
        raise DdjaxError("no downstream dataset is readable here: "
                         + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    image_size = tuple(dataset_spec(stage.config.data).image_size or (32, 32))
    model = encoder_model(stage.config, image_size)
    results = []
    for row in ws.rows:
        paths = {d: stage.directory / "results" / f"{row}__{d}.json" for d in datasets}
        todo = [d for d in datasets if not paths[d].exists()]
        encoders = _encoders(ws, row, model, image_size) if todo else None
        for dataset in datasets:
            if dataset in todo:
                result = evaluate(ws, row, dataset, model, encoders)
                write_json_atomic(paths[dataset], result)
                stage.metrics.write(len(results), row=row, dataset=dataset,
                                    accuracy=result["accuracy"])
            results.append(json.loads(paths[dataset].read_text()))
    report = mkdt_tables.build_report(results, ws.rows, datasets, list(stage.config.mkdt_eval.label_fractions),
                                      skipped)
    text = mkdt_tables.render(report)
    print(text, flush=True)
    (stage.directory / "tables.md").write_text(text + "\n")
    write_json_atomic(stage.directory / "results.json", report)
    own = stage.config.data.name
    headline = {row: {k: t.get(row, {}).get(own, {}).get("mean") for k, t in report["tables"].items()}
                for row in ws.rows}
    return print_summary("eval mkdt", stage.workdir,
                         {"results": stage.directory / "results.json",
                          "tables": stage.directory / "tables.md"},
                         top1_on_own_dataset=headline, skipped=sorted(skipped),
                         seconds=round(time.perf_counter() - started, 1))
