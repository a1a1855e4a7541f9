"""The study schema: a YAML file -> frozen, validated objects.

Nothing runs and nothing is written until the whole file validates. Every problem is
reported at once, each with its field path, the bad value and what is allowed
(``hardware.pcm.variation.within.sigma: input should be greater than or equal to 0;
got -0.1``). Study files are untrusted input: YAML is read with the safe loader, and a
duplicate key is an error rather than silently overwriting the first.

Sweeps: a list of numbers on a numeric field of a hardware population (or of a
variant's trainer) expands into one named entry per value (the cartesian product when
several fields are swept), e.g. ``pcm[variation.within.sigma=0.05]``; the swept values
become coordinates along ``hardware`` (``variation_within_sigma``) or ``variant``.
Swept populations share their chips: chip c of every sweep point is drawn from the same
stream (keyed by the population's name in the file), so curves along a sweep are paired.

The package: ``limits`` (what a study may ask for), ``schema`` (the validated, frozen
study and its hash), ``loading`` (reading and validating a file), ``sweeps`` (named
entries and sweep expansion), ``problems`` (validation errors that name the field). It
validates against the registries (``mcstudy.registries``) and imports nothing above the
hardware layer.
"""

from __future__ import annotations

from ..times import MAX_TIME_SECONDS, TIME_UNITS, TimeSeconds, format_time, parse_time
from ..vocabulary import PHYSICS_VERSION
from .limits import (
    MAX_CHIPS,
    MAX_FILE_BYTES,
    MAX_NAME_LENGTH,
    MAX_POPULATIONS,
    MAX_PROCEDURES,
    MAX_RESULTS,
    MAX_TIMES,
    MAX_VARIANTS,
    MAX_YAML_NODES,
    NAME_PATTERN,
)
from .loading import decode_text, load_study, parse_study
from .schema import (
    AnalysisSpec,
    Component,
    ExecutionSpec,
    PopulationSpec,
    ProcedureSpec,
    ProgrammingSpec,
    StudySpec,
    VariantSpec,
)

__all__ = [
    "MAX_CHIPS", "MAX_FILE_BYTES", "MAX_NAME_LENGTH", "MAX_POPULATIONS", "MAX_PROCEDURES", "MAX_RESULTS",
    "MAX_TIMES", "MAX_TIME_SECONDS", "MAX_VARIANTS", "MAX_YAML_NODES", "NAME_PATTERN", "PHYSICS_VERSION",
    "TIME_UNITS", "AnalysisSpec", "Component", "ExecutionSpec", "PopulationSpec", "ProcedureSpec",
    "ProgrammingSpec", "StudySpec", "TimeSeconds", "VariantSpec", "decode_text", "format_time", "load_study",
    "parse_study", "parse_time",
]  # fmt: skip
