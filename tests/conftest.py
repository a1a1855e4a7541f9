"""Shared fixtures: a small version of the quickstart study and a per-session model cache.

Everything a test writes goes under pytest's temporary directories.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

# Ray clusters started by the tests use token authentication with a token of their own
# (nothing is written to ~/.ray).
os.environ["RAY_AUTH_MODE"] = "token"
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(16))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
QUICKSTART = ROOT / "studies" / "quickstart.yaml"


@pytest.fixture(scope="session", autouse=True)
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One trained-model cache for the whole session (tests never touch ~/.cache)."""
    path = tmp_path_factory.mktemp("model-cache")
    os.environ["MCSTUDY_CACHE"] = str(path)
    return path


def small_study(tmp_path: Path, chips: int = 24, **changes: object) -> Path:
    """The quickstart with few chips and short training, with top-level ``changes``."""
    raw = yaml.safe_load(QUICKSTART.read_text())
    raw["chips"] = chips
    for v in raw["variants"].values():
        v["epochs"] = 12
    raw.update(changes)
    path = tmp_path / f"{raw['name']}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run_cli(*args: str | Path, cwd: Path | None = None, cache: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real ``mcstudy`` command line in a subprocess."""
    env = dict(os.environ)
    if cache is not None:
        env["MCSTUDY_CACHE"] = str(cache)
    return subprocess.run(
        [sys.executable, "-m", "mcstudy", *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
