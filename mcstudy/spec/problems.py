"""Turning pydantic's validation errors into problems that name the field, the bad value and what is allowed."""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any

from pydantic import BaseModel, ValidationError

from .limits import _NAME_RE


def _pydantic_problems(e: ValidationError, cls: type[BaseModel] | None, prefix: str = "") -> list[tuple[str, str]]:
    out = []
    for err in e.errors():
        loc = [str(x) for x in err["loc"]]
        path = ".".join([prefix] + loc if prefix else loc)
        kind = err["type"]
        if kind == "extra_forbidden":
            allowed = _allowed_keys(cls, err["loc"][:-1])
            msg = "unknown key" + (f"; allowed keys: {', '.join(allowed)}" if allowed else "")
        elif kind == "missing":
            msg = "required, but missing"
        elif kind in _BOUNDS:
            op, key = _BOUNDS[kind]
            msg = f"must be {op} {err['ctx'][key]}; got {err['input']!r}"
        else:
            text = err["msg"]
            text = text[0].lower() + text[1:]
            if kind == "value_error":
                text = text.removeprefix("value error, ")
            msg = f"{text}; got {err['input']!r}"
        out.append((path, msg))
    return out


_BOUNDS = {
    "greater_than": (">", "gt"),
    "greater_than_equal": (">=", "ge"),
    "less_than": ("<", "lt"),
    "less_than_equal": ("<=", "le"),
}
def _unwrap(ann: Any) -> list[Any]:
    """The concrete types inside Optional/Union/Annotated."""
    origin = typing.get_origin(ann)
    if origin is Annotated:
        return _unwrap(typing.get_args(ann)[0])
    if origin in (typing.Union, types.UnionType):
        return [t for a in typing.get_args(ann) for t in _unwrap(a)]
    return [ann]


def _model_class(ann: Any) -> type[BaseModel] | None:
    for t in _unwrap(ann):
        if isinstance(t, type) and issubclass(t, BaseModel):
            return t
    return None


def _allowed_keys(cls: type[BaseModel] | None, loc: tuple[Any, ...]) -> list[str]:
    for key in loc:
        if cls is None or not isinstance(key, str) or key not in cls.model_fields:
            return []
        cls = _model_class(cls.model_fields[key].annotation)
    return list(cls.model_fields) if cls is not None else []


# -- components ---------------------------------------------------------------------


def _check_name(name: str, path: str, problems: list[tuple[str, str]]) -> bool:
    if not _NAME_RE.match(name):
        problems.append((path, f"names may use letters, digits and _ . + - (starting with a letter or digit); got {name!r}"))
        return False
    return True
