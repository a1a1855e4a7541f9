"""Errors a user can cause. The CLI prints them as a message and exits with code 2.

Anything else that escapes is a bug in mcstudy and keeps its traceback.
"""

from __future__ import annotations


class McStudyError(Exception):
    """A mistake in the user's input (study file, data file, command line, store)."""


class SpecError(McStudyError):
    """A study file that does not validate. Holds every problem found, each with its field path."""

    def __init__(self, problems: list[tuple[str, str]], source: str | None = None) -> None:
        self.problems = list(dict.fromkeys(problems))  # each once (sweep points share their sections)
        self.source = source
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"study file {self.source}" if self.source else "study"
        n = len(self.problems)
        head = f"{where} is not valid ({n} problem{'s' if n != 1 else ''}); nothing was written:"
        lines = [f"  - {path or '(top level)'}: {msg}" for path, msg in self.problems]
        return "\n".join([head, *lines])


class DataError(McStudyError):
    """A dataset file that is missing or malformed; the message names the path."""


class StoreError(McStudyError):
    """A results store that cannot be used for this run (different study, locked, corrupt)."""


class WorkerError(McStudyError):
    """A worker process that died; the store keeps every finished chip and a rerun resumes."""


class PluginError(McStudyError):
    """An installed plugin (a ``mcstudy.*`` entry point of another package) that fails to
    load or does not register what its entry point names; the message names the package."""
