"""Autotuning per target: MetaSchedule over a model's tasks with a local, RPC or predicted runner.

Records land in a MetaSchedule JSON database under ``DB/<SOC>/<backend>/`` (one directory per
SoC and backend, keyed inside by task workload), only after each candidate's output was checked
against the untuned build of the same task. ``banana compile --tuning-db DB`` applies them
(:mod:`banana.tuning.apply`); tasks without records keep the default schedule rules.
"""

from banana.tuning.apply import TuningApplied, apply_tuning_database
from banana.tuning.database import TuningDatabase, database_dir
from banana.tuning.tasks import TuneTask, extract_tune_tasks
from banana.tuning.tune import TaskReport, TuneProgress, TuneReport, tune_model

__all__ = [
    "TaskReport",
    "TuneProgress",
    "TuneReport",
    "TuneTask",
    "TuningApplied",
    "TuningDatabase",
    "apply_tuning_database",
    "database_dir",
    "extract_tune_tasks",
    "tune_model",
]
