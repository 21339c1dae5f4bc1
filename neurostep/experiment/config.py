"""Experiment definitions: TOML files parsed into validated, hashable configs.

An experiment file has these tables (every key optional unless marked)::

    [experiment]            name, kind ("mixers" | "concept_shift"), seeds, blocks, tasks, imports, out_dir,
                            workers, description
    [backbone]              dim, depth, num_heads, mlp_ratio, norm, positions (kind = "mixers")
    [train]                 steps, batch_size, lr, weight_decay, grad_clip, warmup, eval_every,
                            eval_batch_size, target, patience, min_delta, progress, threads, device
    [measure]               energy, energy_profile, latency_reps, throughput_batch
    [tasks.<label>]         options of one task; ``task = "<base>"`` picks the builder when the
                            label is not itself a task name (``[tasks.digits_rate] task = "digits"``);
                            ``blocks = [...]`` runs other blocks than [experiment] blocks on it,
                            ``seeds = [...]`` other seeds (or ``seeds = {<block> = [...]}``, other
                            seeds for some of its blocks), ``train = {...}`` / ``backbone = {...}``
                            override those tables for it, and ``block_options = {<block> = {...}}``
                            overrides [blocks.<block>] for it (a state-size or width sweep of one block)
    [blocks.<name>]         keyword options passed to ``create_mixer(name, ...)``
    [concept_shift]         options of the homeostatic-learner experiment (kind = "concept_shift")

Unknown tables or keys raise ``ValueError`` naming the key and the allowed ones, so a typo
never silently falls back to a default. Every run's fully resolved configuration
(:meth:`ExperimentConfig.run_config`) is hashed; results are grouped by that hash.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 has no tomllib; tomli is its backport
    import tomli as tomllib

KINDS = ("mixers", "concept_shift")

EXPERIMENT_DEFAULTS: dict[str, Any] = {
    "name": None,          # defaults to the file's stem
    "kind": "mixers",
    "seeds": [0, 1, 2],    # three seeds unless a file says otherwise: every metric gets an interval
    "blocks": [],
    "tasks": [],
    "learners": ["homeostatic", "random", "constant"],
    "imports": [],         # modules imported first, e.g. to register custom mixers
    "out_dir": "runs",
    "workers": 1,          # runs trained at a time (separate processes); 2 uses both cores of a laptop
    "description": "",
}

BACKBONE_DEFAULTS: dict[str, Any] = {
    "dim": 32,
    "depth": 2,
    "num_heads": 4,
    "mlp_ratio": 2.0,
    "norm": "layernorm",
    "positions": True,     # learned position embedding
}

TRAIN_DEFAULTS: dict[str, Any] = {
    "steps": 1000,         # optimizer steps at most (the budget)
    "batch_size": 32,
    "lr": 2e-3,
    "weight_decay": 0.05,
    "grad_clip": 1.0,
    "warmup": 0.05,        # fraction of the steps with a linear learning-rate warm-up, then cosine decay
    "eval_every": 100,     # steps between evaluations on the validation set (the learning curve)
    "eval_batch_size": 256,
    "target": 0.0,         # stop once the validation metric reaches this (accuracy >=, bpc <=); 0: never
    "target_evals": 1,     # ... in this many evaluations in a row (one lucky score on a small set does not stop)
    "patience": 0,         # stop after this many evaluations without improvement; 0: never
    "min_delta": 0.002,    # smallest change of the metric that counts as an improvement
    "progress": True,      # progress bars, only when stderr is a terminal
    "threads": 0,          # torch and numba threads per run; 0 keeps the process's counts
    "device": "cpu",       # where a run trains: "cpu", "cuda" (under torchrun: cuda:<LOCAL_RANK>) or "cuda:<n>"
}

MEASURE_DEFAULTS: dict[str, Any] = {
    "energy": True,
    "energy_profile": "45nm_fp32",
    "latency_reps": 5,
    "throughput_batch": 64,
}

CONCEPT_SHIFT_DEFAULTS: dict[str, Any] = {
    "hidden": [80, 60],
    "activation": "elu",
    "eta0": 0.01,
    "minibatch": 10,
    "epochs": 10,
    "swaps_per_epoch": [0, 1, 2, 4, 8],
    "interval": 10,
    "memory": 20,
    "excitatory_from": 5,   # classes >= this are excitatory (eta up), the rest inhibitory
    "p_change": 0.5,        # random baseline's change probability
    "test_fraction": 0.25,
    "curve_points": 50,     # learning-rate trajectory points kept per run
}

SECTIONS: dict[str, dict[str, Any]] = {
    "experiment": EXPERIMENT_DEFAULTS,
    "backbone": BACKBONE_DEFAULTS,
    "train": TRAIN_DEFAULTS,
    "measure": MEASURE_DEFAULTS,
    "concept_shift": CONCEPT_SHIFT_DEFAULTS,
}
TABLE_SECTIONS = ("tasks", "blocks")
# Keys of a [tasks.<label>] table that are not options of the task builder.
TASK_TABLE_KEYS = ("task", "blocks", "seeds", "train", "backbone", "block_options")
# Keys left out of a run's hash: they change how a run is watched or where it computes, not what it
# computes (the rounding differs between devices, as it does between two CPU models; each record names its
# device and machine).
UNHASHED_TRAIN_KEYS = ("progress", "threads", "device")
DEVICE_PATTERN = re.compile(r"cpu|cuda(:[0-9]+)?")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass
class ExperimentConfig:
    """A validated experiment: sections with defaults filled in, plus per-task and per-block options."""

    name: str
    kind: str
    seeds: list[int]
    blocks: list[str]
    tasks: list[str]
    learners: list[str]
    imports: list[str]
    out_dir: str
    workers: int = 1
    description: str = ""
    backbone: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    measure: dict[str, Any] = field(default_factory=dict)
    concept_shift: dict[str, Any] = field(default_factory=dict)
    task_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    task_blocks: dict[str, list[str]] = field(default_factory=dict)
    task_seeds: dict[str, dict[str | None, list[int]]] = field(default_factory=dict)
    task_train: dict[str, dict[str, Any]] = field(default_factory=dict)
    task_backbone: dict[str, dict[str, Any]] = field(default_factory=dict)
    block_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    task_block_options: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    source: str | None = None

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name

    def blocks_for(self, task: str) -> list[str]:
        """Blocks run on ``task``: its own ``blocks`` list, else [experiment] blocks."""
        return self.task_blocks.get(task, self.blocks)

    def seeds_for(self, task: str, block: str | None = None) -> list[int]:
        """Seeds run on ``task`` (by ``block``): the task's seeds for that block, else the task's seeds
        for all its blocks, else [experiment] seeds."""
        own = self.task_seeds.get(task, {})
        return own.get(block, own.get(None, self.seeds))

    def train_for(self, task: str) -> dict[str, Any]:
        """[train] with the task's ``train`` overrides applied."""
        return self.task_train.get(task, self.train)

    def backbone_for(self, task: str) -> dict[str, Any]:
        """[backbone] with the task's ``backbone`` overrides applied."""
        return self.task_backbone.get(task, self.backbone)

    def block_options_for(self, block: str, task: str) -> dict[str, Any]:
        """[blocks.<block>] with the task's ``block_options.<block>`` overrides applied."""
        options = self.block_options.get(block, {})
        overrides = self.task_block_options.get(task, {}).get(block)
        return options if overrides is None else {**options, **overrides}

    def set_train(self, key: str, value: Any) -> None:
        """Set [train] ``key`` for every task, those whose ``train = {...}`` overrides hold their own copy too."""
        for train in (self.train, *self.task_train.values()):
            train[key] = value

    def all_blocks(self) -> list[str]:
        """Every block some task runs, in first-use order."""
        return list(dict.fromkeys(b for t in self.tasks for b in self.blocks_for(t)))

    def run_config(self, block: str, task: str) -> dict[str, Any]:
        """Everything that determines one (block, task) run's result, except the seed, with
        every default filled in (the fully resolved configuration that :meth:`config_hash` hashes).

        Lists of blocks, tasks and seeds are left out so that adding a block to a file does
        not invalidate the results already stored for the others.
        """
        from neurostep import __version__

        if self.kind == "concept_shift":
            return {"kind": self.kind, "learner": block, "task": task, "concept_shift": self.concept_shift,
                    "neurostep": __version__}
        train = {k: v for k, v in self.train_for(task).items() if k not in UNHASHED_TRAIN_KEYS}
        return {
            "kind": self.kind,
            "block": block,
            "block_options": self.block_options_for(block, task),
            "task": task,
            "task_options": self.task_options.get(task, {}),
            "backbone": self.backbone_for(task),
            "train": train,
            "measure": {k: v for k, v in self.measure.items() if k in ("energy", "energy_profile")},
            "neurostep": __version__,
        }

    def config_hash(self, block: str, task: str) -> str:
        return config_hash(self.run_config(block, task))


def config_hash(obj: Any) -> str:
    """Stable 12-hex-digit hash of a JSON-serialisable object (key order does not matter)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _check_keys(where: str, table: dict[str, Any], allowed: dict[str, Any] | tuple[str, ...]) -> None:
    for key in table:
        if key not in allowed:
            raise ValueError(f"unknown key {key!r} in [{where}]; allowed keys: {sorted(allowed)}")


def _check_type(where: str, key: str, value: Any, default: Any) -> None:
    if default is None:
        if value is not None and not isinstance(value, str):
            raise TypeError(f"[{where}] {key} must be a string, got {type(value).__name__} {value!r}")
        return
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, list):
        ok = isinstance(value, list)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise TypeError(f"[{where}] {key} must be {type(default).__name__}, got {type(value).__name__} {value!r}")


def _fill(where: str, table: Any, defaults: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise TypeError(f"[{where}] must be a table, got {type(table).__name__}")
    _check_keys(where, table, defaults)
    out = copy.deepcopy(defaults)
    for key, value in table.items():
        _check_type(where, key, value, defaults[key])
        out[key] = float(value) if isinstance(defaults[key], float) else value
    return out


def parse_config(data: dict[str, Any], *, name: str | None = None, source: str | None = None) -> ExperimentConfig:
    """Validate a parsed TOML document and fill in defaults.

    Raises ``ValueError`` for unknown tables/keys (naming the allowed ones), unknown kinds,
    tasks and empty lists; ``TypeError`` for values of the wrong type.
    """
    from neurostep.experiment.tasks import TASKS, task_defaults

    _check_keys("top level", data, (*SECTIONS, *TABLE_SECTIONS))
    exp = _fill("experiment", data.get("experiment", {}), EXPERIMENT_DEFAULTS)
    if exp["kind"] not in KINDS:
        raise ValueError(f"[experiment] kind must be one of {KINDS}, got {exp['kind']!r}")
    exp_name = exp["name"] or name
    if not exp_name:
        raise ValueError("[experiment] name is missing and could not be taken from a file name")
    if not NAME_PATTERN.fullmatch(exp_name) or ".." in exp_name:
        raise ValueError(f"[experiment] name {exp_name!r} must be a plain directory name (letters, digits, '_', "
                         "'-', '.'; no '/' or '..'): results go to <out_dir>/<name>")
    if exp["workers"] < 1:
        raise ValueError(f"[experiment] workers must be >= 1, got {exp['workers']}")
    seeds = check_seeds("[experiment] seeds", exp["seeds"])
    for key in ("blocks", "tasks", "learners", "imports"):
        if not all(isinstance(v, str) for v in exp[key]):
            raise TypeError(f"[experiment] {key} must be a list of strings, got {exp[key]!r}")

    cfg = ExperimentConfig(
        name=exp_name, kind=exp["kind"], seeds=list(seeds), blocks=list(exp["blocks"]), tasks=list(exp["tasks"]),
        learners=list(exp["learners"]), imports=list(exp["imports"]), out_dir=exp["out_dir"],
        workers=exp["workers"], description=exp["description"], source=source,
    )
    if cfg.kind == "concept_shift":
        for section in ("backbone", "train", "measure", "tasks", "blocks"):
            if section in data:
                raise ValueError(f"[{section}] is not used by kind = 'concept_shift'; allowed tables: "
                                 "['concept_shift', 'experiment']")
        cfg.concept_shift = _fill("concept_shift", data.get("concept_shift", {}), CONCEPT_SHIFT_DEFAULTS)
        _validate_concept_shift(cfg)
        return cfg

    if "concept_shift" in data:
        raise ValueError("[concept_shift] is only used with [experiment] kind = 'concept_shift'")
    cfg.backbone = _fill("backbone", data.get("backbone", {}), BACKBONE_DEFAULTS)
    cfg.train = _fill("train", data.get("train", {}), TRAIN_DEFAULTS)
    cfg.measure = _fill("measure", data.get("measure", {}), MEASURE_DEFAULTS)
    _validate_backbone("backbone", cfg.backbone)
    _validate_train("train", cfg.train)
    if not cfg.blocks and not all(isinstance(data.get("tasks", {}).get(t), dict) and "blocks" in data["tasks"][t]
                                  for t in cfg.tasks):
        raise ValueError("[experiment] blocks is empty: list the mixers to compare (see `neurostep list`)")
    if not cfg.tasks:
        raise ValueError(f"[experiment] tasks is empty: list tasks from {sorted(TASKS)}")

    task_tables = data.get("tasks", {})
    block_tables = data.get("blocks", {})
    for where, tables in (("tasks", task_tables), ("blocks", block_tables)):
        if not isinstance(tables, dict) or not all(isinstance(v, dict) for v in tables.values()):
            raise TypeError(f"[{where}] must hold sub-tables like [{where}.<name>]")
    for label in task_tables:
        if label not in cfg.tasks:
            raise ValueError(f"[tasks.{label}] is not listed in [experiment] tasks {cfg.tasks}")
    for label in cfg.tasks:
        if not NAME_PATTERN.fullmatch(label) or ".." in label:
            raise ValueError(f"task label {label!r} must be a plain name (letters, digits, '_', '-', '.')")
        options = dict(task_tables.get(label, {}))
        base = options.pop("task", label)
        if base not in TASKS:
            raise ValueError(f"unknown task {base!r} (from tasks entry {label!r}); available tasks: {sorted(TASKS)}")
        blocks = options.pop("blocks", None)
        if blocks is not None:
            if not isinstance(blocks, list) or not blocks or not all(isinstance(b, str) for b in blocks):
                raise TypeError(f"[tasks.{label}] blocks must be a non-empty list of block names, got {blocks!r}")
            cfg.task_blocks[label] = list(blocks)
        seeds = options.pop("seeds", None)
        if isinstance(seeds, dict):
            task_blocks = cfg.blocks_for(label)
            for block in seeds:
                if block not in task_blocks:
                    raise ValueError(f"[tasks.{label}] seeds names block {block!r}, which the task does not run "
                                     f"(its blocks: {task_blocks})")
            cfg.task_seeds[label] = {block: check_seeds(f"[tasks.{label}] seeds.{block}", block_seeds)
                                     for block, block_seeds in seeds.items()}
        elif seeds is not None:
            cfg.task_seeds[label] = {None: check_seeds(f"[tasks.{label}] seeds", seeds)}
        block_options = options.pop("block_options", None)
        if block_options is not None:
            if not isinstance(block_options, dict) or not all(isinstance(v, dict) for v in block_options.values()):
                raise TypeError(f"[tasks.{label}] block_options must map block names to tables of options, "
                                f"like {{ mamba = {{ d_state = 16 }} }}; got {block_options!r}")
            task_blocks = cfg.blocks_for(label)
            for block in block_options:
                if block not in task_blocks:
                    raise ValueError(f"[tasks.{label}] block_options names block {block!r}, which the task does "
                                     f"not run (its blocks: {task_blocks})")
            cfg.task_block_options[label] = {block: dict(opts) for block, opts in block_options.items()}
        for key, section, defaults, validate in (("train", cfg.train, TRAIN_DEFAULTS, _validate_train),
                                                 ("backbone", cfg.backbone, BACKBONE_DEFAULTS, _validate_backbone)):
            overrides = options.pop(key, None)
            if overrides is not None:
                merged = _fill(f"tasks.{label}.{key}", {**section, **overrides}, defaults)
                validate(f"tasks.{label}.{key}", merged)
                getattr(cfg, f"task_{key}")[label] = merged
        resolved = _fill(f"tasks.{label}", options, task_defaults(base))
        resolved["task"] = base
        cfg.task_options[label] = resolved
    for block in block_tables:
        if block not in cfg.all_blocks():
            raise ValueError(f"[blocks.{block}] is not run by any task (blocks: {cfg.all_blocks()})")
    cfg.block_options = {block: dict(block_tables.get(block, {})) for block in cfg.all_blocks()}
    return cfg


def check_seeds(where: str, seeds: Any) -> list[int]:
    """``seeds`` as a list, after checking that it is a non-empty list of distinct ints (``where`` names it
    in the error)."""
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                           for s in seeds):
        raise ValueError(f"{where} must be a non-empty list of ints, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"{where} must be distinct (a repeated seed is the same run), got {seeds!r}")
    return list(seeds)


def check_device(where: str, device: Any) -> str:
    """``device`` after checking that it names a device a run can train on (``where`` names it in the error).

    Only the string: whether this machine has the device is checked when a run starts
    (:func:`neurostep.experiment.train.run_device`), not when a file is read.
    """
    if not isinstance(device, str) or not DEVICE_PATTERN.fullmatch(device):
        raise ValueError(f'{where} must be "cpu", "cuda" or "cuda:<n>", got {device!r}')
    return device


def _validate_backbone(where: str, backbone: dict[str, Any]) -> None:
    for key in ("dim", "depth", "num_heads"):
        if backbone[key] < 1:
            raise ValueError(f"[{where}] {key} must be >= 1, got {backbone[key]}")
    if backbone["dim"] % backbone["num_heads"]:
        raise ValueError(f"[{where}] dim ({backbone['dim']}) must be divisible by num_heads ({backbone['num_heads']})")


def _validate_train(where: str, train: dict[str, Any]) -> None:
    for key in ("steps", "batch_size", "eval_batch_size", "eval_every", "target_evals"):
        if train[key] < 1:
            raise ValueError(f"[{where}] {key} must be >= 1, got {train[key]}")
    for key in ("patience", "target", "min_delta", "lr", "weight_decay", "grad_clip"):
        if train[key] < 0:
            raise ValueError(f"[{where}] {key} must be >= 0, got {train[key]}")
    if not 0.0 <= train["warmup"] < 1.0:
        raise ValueError(f"[{where}] warmup must be a fraction in [0, 1), got {train['warmup']}")
    check_device(f"[{where}] device", train["device"])


def _validate_concept_shift(cfg: ExperimentConfig) -> None:
    from neurostep.neuro.homeostasis import RULES

    for learner in cfg.learners:
        if learner not in RULES:
            raise ValueError(f"unknown learner {learner!r} in [experiment] learners; available: {list(RULES)}")
    cs = cfg.concept_shift
    rates = cs["swaps_per_epoch"]
    if not rates or not all(isinstance(r, int) and r >= 0 for r in rates):
        raise ValueError(f"[concept_shift] swaps_per_epoch must be a non-empty list of ints >= 0, got {rates!r}")
    if not all(isinstance(h, int) and h > 0 for h in cs["hidden"]):
        raise ValueError(f"[concept_shift] hidden must be a list of positive ints, got {cs['hidden']!r}")
    for key in ("minibatch", "epochs", "interval", "memory"):
        if cs[key] < 1:
            raise ValueError(f"[concept_shift] {key} must be >= 1, got {cs[key]}")
    if cs["eta0"] <= 0:
        raise ValueError(f"[concept_shift] eta0 must be > 0, got {cs['eta0']}")


def load_config(path: str | Path) -> ExperimentConfig:
    """Read and validate an experiment TOML file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"experiment file {str(path)!r} does not exist")
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: invalid TOML: {exc}") from exc
    return parse_config(data, name=path.stem, source=str(path))
