"""Trained weights cached under a hash of everything they depend on.

The key covers the data (a digest of the split arrays), the model and its parameters,
the trainer and its parameters, the training seed and the training code's version, so
a second run trains nothing and a change to any of those retrains only what changed.
Cached files are untrusted input: they load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..errors import McStudyError
from ..registry import Params

TRAINING_CODE_VERSION = 6  # 6: Conv1d, LSTM and attention weights are crossbar weights (trainers perturb them); 5: QAT grid through the mapping's transfer, continuous HWA surrogate, ranges recorded


def default_cache_dir() -> Path:
    """``$MCSTUDY_CACHE``, else ``$XDG_CACHE_HOME/mcstudy``, else ``~/.cache/mcstudy``."""
    if env := os.environ.get("MCSTUDY_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mcstudy"


def training_key(
    data_digest: str, model: str, model_params: Params, trainer: str, trainer_params: Params, seed: int, loss: str = "cross_entropy"
) -> str:
    payload: dict[str, object] = {
        "data": data_digest,
        "model": [model, model_params.model_dump(mode="json")],
        "trainer": [trainer, trainer_params.model_dump(mode="json")],
        "seed": seed,
        "code": TRAINING_CODE_VERSION,
        "torch": torch.__version__.split("+")[0],
    }
    if loss != "cross_entropy":  # named only where a study names another loss
        payload["loss"] = loss
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


class ModelCache:
    """A directory of ``<key>.pt`` state dicts with ``<key>.json`` metadata."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()
        if self.root.exists() and not self.root.is_dir():
            raise McStudyError(f"the model cache {self.root} is a file, not a directory (--cache-dir or $MCSTUDY_CACHE)")

    def load(self, key: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        pt, meta = self.root / f"{key}.pt", self.root / f"{key}.json"
        if not (pt.is_file() and meta.is_file()):
            return None
        try:
            state = torch.load(pt, map_location="cpu", weights_only=True)
            info = json.loads(meta.read_text())
        except Exception:  # a corrupt or foreign file: retrain rather than trust it
            return None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            return None
        return state, info

    def save(self, key: str, state: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise McStudyError(f"cannot create the model cache {self.root}: {e.strerror or e} (--cache-dir or $MCSTUDY_CACHE)") from None
        for suffix, write in ((".pt", lambda f: torch.save(state, f)), (".json", lambda f: f.write(json.dumps(info, indent=1).encode()))):
            fd, tmp = tempfile.mkstemp(dir=self.root, suffix=suffix + ".tmp")
            with os.fdopen(fd, "wb") as f:
                write(f)
            os.replace(tmp, self.root / f"{key}{suffix}")
