"""``mcstudy list``: what a study can name — every registry's entries (a plugin's
included) and, for one entry, every parameter with its type, default and description."""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined
from rich.console import Console
from rich.table import Table

from . import registries
from .errors import McStudyError
from .registry import Registry

KINDS: dict[str, Registry[Any]] = {
    "datasets": registries.DATASETS,
    "models": registries.MODELS,
    "devices": registries.DEVICES,
    "mappings": registries.MAPPINGS,
    "trainers": registries.TRAINERS,
    "procedures": registries.PROCEDURES,
    "executors": registries.EXECUTORS,
    "losses": registries.LOSSES,
    "metrics": registries.SCORES,
}


def _type(annotation: Any) -> str:
    """A field's type as a reader writes it: ``int | None``, ``'global' | 'per_column'``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type(args[0])
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join("None" if a is type(None) else _type(a) for a in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(_type(a) for a in args if a is not Ellipsis)}]"
    return getattr(annotation, "__name__", str(annotation))


def parameters(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(name, type, default, description) of every field of ``model``, nested models
    flattened as ``section.field``."""
    rows: list[tuple[str, str, str, str]] = []
    for name, f in model.model_fields.items():
        ann = f.annotation
        nested = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        if nested is not None:
            rows.append((prefix + name, nested.__name__, "", f.description or ""))
            rows += parameters(nested, prefix + name + ".")
            continue
        default = "required" if f.default is PydanticUndefined and f.default_factory is None else repr(f.get_default(call_default_factory=True))
        rows.append((prefix + name, _type(ann), default, f.description or ""))
    return rows


def show(out: Console, kind: str | None = None, name: str | None = None) -> None:
    """Print the registries, one registry's entries, or one entry's parameters."""
    if kind is None:
        for k, reg in KINDS.items():
            out.print(f"{k}: {', '.join(reg.names())}", highlight=False)
        return
    if kind not in KINDS:
        raise McStudyError(f"unknown kind {kind!r}; allowed: {', '.join(KINDS)}")
    reg = KINDS[kind]
    if name is None:
        table = Table(title=kind, show_lines=False)
        table.add_column("name")
        table.add_column("what it is")
        for n in reg.names():
            table.add_row(n, reg.get(n).doc)
        out.print(table)
        return
    if name not in reg:
        raise McStudyError(reg.unknown_message(name))
    entry = reg.get(name)
    table = Table(title=f"{kind[:-1]} {name}: {entry.doc}")
    for col in ("parameter", "type", "default", "description"):
        table.add_column(col, overflow="fold")
    for row in parameters(entry.params):
        table.add_row(*row)
    out.print(table)
