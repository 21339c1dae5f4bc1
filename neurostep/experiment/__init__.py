"""Experiments: TOML configs, embedded tasks, a shared backbone, training (DDP-ready),
an atomic results store with resume, and Markdown/PNG reports.

    from neurostep.experiment import load_config, run_experiment
    run_experiment(load_config("experiments/attention_alternatives.toml"))
"""

from neurostep.experiment.backbone import Backbone, build_backbone
from neurostep.experiment.config import ExperimentConfig, config_hash, load_config, parse_config
from neurostep.experiment.lock import RunDirLocked, RunLock
from neurostep.experiment.report import mean_ci, pareto_front, write_report
from neurostep.experiment.results import ResultStore
from neurostep.experiment.runner import plan_runs, run_experiment
from neurostep.experiment.tasks import IGNORE, TASKS, TaskData, build_task
from neurostep.experiment.train import evaluate, train_model, train_run

__all__ = [
    "IGNORE",
    "TASKS",
    "Backbone",
    "ExperimentConfig",
    "ResultStore",
    "RunDirLocked",
    "RunLock",
    "TaskData",
    "build_backbone",
    "build_task",
    "config_hash",
    "evaluate",
    "load_config",
    "mean_ci",
    "pareto_front",
    "parse_config",
    "plan_runs",
    "run_experiment",
    "train_model",
    "train_run",
    "write_report",
]
