"""One registry pattern for everything a study file names: datasets, models, trainers,
devices, mappings and procedures.

A registry maps a name to an implementation and the pydantic model of its parameters,
so the spec can validate ``{name: ..., **params}`` before anything runs, and an unknown
name fails with the list of known ones (sklearn-style errors that teach).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

T = TypeVar("T")


class Params(BaseModel):
    """Base of every parameter model: frozen, strict (no ``"3"`` -> 3 coercion; sequences
    are tuples), unknown keys are errors, and every number is finite (``.inf`` or ``.nan``
    in a study file, or a number too large for a float, is refused)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class NoParams(Params):
    """For entries that take no parameters."""


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    params: type[Params]
    doc: str


class Registry(Generic[T]):
    """Name -> (implementation, parameter model)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, params: type[Params] = NoParams) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            doc = (getattr(obj, "__doc__", None) or "").strip().split("\n")[0]
            self._entries[name] = Entry(name, obj, params, doc)
            return obj

        return deco

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._entries

    def get(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(self.unknown_message(name)) from None

    def unknown_message(self, name: Any) -> str:
        return f"unknown {self.kind} {name!r}; allowed: {', '.join(self.names())}"
