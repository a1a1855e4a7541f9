"""Every registry a study file names, at the base of the package.

Each registry knows the package whose import registers its built-in entries; the first
lookup imports it (and then any installed plugins, ``Registry.load_plugins``). So the
study schema validates names and parameters against a registry without importing the
layers that implement them, and an implementation registers itself where it is defined:
``@PROCEDURES.register("self_tuning", SelfTuningParams)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .registry import Registry

if TYPE_CHECKING:  # the entries' types, for type checkers only
    from .data.base import DatasetEntry
    from .execution.executors import Executor
    from .hardware.base import DeviceModel
    from .hardware.mapping import Mapping
    from .models.zoo import ModelFactory
    from .objectives import Loss, Metric
    from .procedures.base import Procedure
    from .training.base import Trainer

DATASETS: Registry[DatasetEntry] = Registry("dataset", builtin="mcstudy.data")
MODELS: Registry[ModelFactory] = Registry("model", builtin="mcstudy.models")
DEVICES: Registry[type[DeviceModel]] = Registry("device", builtin="mcstudy.hardware")
MAPPINGS: Registry[type[Mapping]] = Registry("mapping", builtin="mcstudy.hardware")
TRAINERS: Registry[type[Trainer]] = Registry("trainer", builtin="mcstudy.training")
PROCEDURES: Registry[type[Procedure]] = Registry("procedure", builtin="mcstudy.procedures")
EXECUTORS: Registry[type[Executor]] = Registry("executor", builtin="mcstudy.execution")
LOSSES: Registry[type[Loss]] = Registry("loss", builtin="mcstudy.objectives")
SCORES: Registry[type[Metric]] = Registry("metric", builtin="mcstudy.objectives")
