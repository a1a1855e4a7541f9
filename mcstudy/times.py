"""Times after programming: seconds, or a number with a unit (shared vocabulary of the
study schema and of every plugin that takes a time)."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, Field

MAX_TIME_SECONDS = 1000 * 365 * 86400.0  # a thousand years

TIME_UNITS: dict[str, float] = {
    "s": 1.0, "sec": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0, "day": 86400.0,
    "w": 604800.0, "mo": 30 * 86400.0, "y": 365 * 86400.0, "yr": 365 * 86400.0,
}  # fmt: skip
_TIME_RE = re.compile(r"^\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-z]*)\s*$")  # a sign parses: the field's bounds name what is wrong


def parse_time(value: Any) -> float:
    """Seconds from a number (seconds) or a string with a unit: ``"20s"``, ``"1h"``,
    ``"1d"``, ``"1mo"`` (30 days), ``"1y"`` (365 days)."""
    if isinstance(value, bool):
        raise ValueError("a time must be a number of seconds or a string like '1h'")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        m = _TIME_RE.match(value)
        if m and (m.group(2) or "s") in TIME_UNITS:
            return float(m.group(1)) * TIME_UNITS[m.group(2) or "s"]
    raise ValueError(f"a time must be a number of seconds or a number with a unit ({', '.join(TIME_UNITS)})")


def format_time(seconds: float) -> str:
    """A short human label: 20 s, 1 h, 1 d, 30 d, 1 y."""
    for unit, size in (("y", TIME_UNITS["y"]), ("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} s"


TimeSeconds = Annotated[float, BeforeValidator(parse_time), Field(gt=0, le=MAX_TIME_SECONDS)]
"""A time after programming in seconds; a study file may write ``20s``, ``1h``, ``1y``."""

Duration = Annotated[float, BeforeValidator(parse_time), Field(ge=0, le=MAX_TIME_SECONDS)]
"""A length of time in seconds, 0 allowed; written like :data:`TimeSeconds`."""
