"""One registry pattern for everything a study file names: datasets, models, trainers,
devices, mappings and procedures.

A registry maps a name to an implementation and the pydantic model of its parameters,
so the spec can validate ``{name: ..., **params}`` before anything runs, and an unknown
name fails with the list of known ones (sklearn-style errors that teach).

Entries register with a decorator where they are defined. Another installed package adds
its own through a Python entry point in the registry's group (``mcstudy.devices``,
``mcstudy.mappings``, ``mcstudy.trainers``, ``mcstudy.procedures``, ``mcstudy.models``,
``mcstudy.datasets``, ``mcstudy.executors``): the entry point's name is the name it
registers, its value the module (or an object in it) whose import registers it, e.g. in
the plugin's ``pyproject.toml``::

    [project.entry-points."mcstudy.devices"]
    toy = "toy_device"

Plugins load on the first lookup in the registry, in the coordinator and in every worker
alike, so a study that names ``device: toy`` validates and runs wherever the package is
installed.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any, Callable, Generic, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict

from .errors import PluginError

T = TypeVar("T")


class Params(BaseModel):
    """Base of every parameter model: frozen, strict (no ``"3"`` -> 3 coercion; sequences
    are tuples), unknown keys are errors, and every number is finite (``.inf`` or ``.nan``
    in a study file, or a number too large for a float, is refused)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    def resolve(self, base_dir: Path | None) -> Params:
        """These parameters with every file they name made absolute (relative to the study
        file's directory ``base_dir``) and read or checked, when the study is read. Default:
        nothing to resolve. Raise :class:`FileParamError` naming the field."""
        return self


class FileParamError(ValueError):
    """A parameter that names a file the study cannot use; ``field`` is its name."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


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

    def __init__(self, kind: str, builtin: str | None = None) -> None:
        self.kind = kind
        self.builtin = builtin  # the package whose import registers the built-in entries
        self.group = f"mcstudy.{kind}s"
        self._entries: dict[str, Entry[T]] = {}
        self._plugins_loaded = False

    def load_plugins(self) -> None:
        """Import the built-in entries' package, then every installed entry point of this
        registry's group (once)."""
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        if self.builtin is not None:
            importlib.import_module(self.builtin)
        for ep in metadata.entry_points(group=self.group):
            dist = ep.dist.name if ep.dist is not None else "an unknown package"
            if ep.name in self._entries:
                continue  # already registered (its module was imported before)
            try:
                ep.load()
            except Exception as e:  # a broken plugin is the user's environment, not mcstudy
                raise PluginError(
                    f"the {self.kind} plugin {ep.name!r} of package {dist} ({self.group}: {ep.value}) "
                    f"failed to load: {type(e).__name__}: {e}"
                ) from None
            if ep.name not in self._entries:
                raise PluginError(
                    f"the {self.kind} plugin {ep.name!r} of package {dist} ({self.group}: {ep.value}) "
                    f"loaded but registered no {self.kind} named {ep.name!r}; register it with "
                    f"@{self.kind.upper()}S.register({ep.name!r}, ...)"
                )

    def register(self, name: str, params: type[Params] = NoParams) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            doc = (getattr(obj, "__doc__", None) or "").strip().split("\n")[0]
            self._entries[name] = Entry(name, obj, params, doc)
            return obj

        return deco

    def names(self) -> list[str]:
        self.load_plugins()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self.load_plugins()
        return isinstance(name, str) and name in self._entries

    def get(self, name: str) -> Entry[T]:
        self.load_plugins()
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(self.unknown_message(name)) from None

    def unknown_message(self, name: Any) -> str:
        return f"unknown {self.kind} {name!r}; allowed: {', '.join(self.names())}"


def registered_name(registry: Registry[Any], check: Callable[[Entry[Any]], str | None] | None = None) -> Any:
    """A parameter type that names an entry of ``registry`` (a plugin's entries included),
    validated when the study is: ``mapping: registered_name(MAPPINGS)``. ``check`` may
    refuse an entry that exists but does not fit (returns the reason)."""

    def validate(name: str) -> str:
        if name not in registry:
            raise ValueError(registry.unknown_message(name))
        problem = check(registry.get(name)) if check is not None else None
        if problem:
            raise ValueError(problem)
        return name

    return Annotated[str, AfterValidator(validate)]
