"""Your trained weights: a PyTorch state dict saved with ``torch.save(model.state_dict(), path)``.

A variant deploys one as it is (``trainer: pretrained, checkpoint: path.pt``) or any
trainer starts from one instead of random weights (``init: path.pt``). The file is read
with ``torch.load(weights_only=True)`` (tensors and plain containers only, never
arbitrary pickled objects); its SHA-256 is part of the study's hash and of the trained
model's cache key, so a changed file is another study. A checkpoint must match the
study's model exactly: missing or unexpected keys and tensors of another shape are a
clear error naming them and the file.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from ..errors import McStudyError
from ..location import file_sha256, pin_problem, study_relative
from ..registry import FileParamError

MAX_CHECKPOINT_BYTES = 4 << 30  # 4 GiB (README, "Limits")


def resolve_checkpoint(path: str, pinned: str | None, base_dir: Path | None, field: str) -> tuple[str, str]:
    """``(absolute path, SHA-256)`` of a checkpoint named in a study (relative to
    ``base_dir``), checked to exist, within the size limit and, if the study pins its
    SHA-256, unchanged. Problems raise :class:`FileParamError` naming ``field``."""
    p = study_relative(path, base_dir)
    if not p.is_file():
        raise FileParamError(field, f"no such checkpoint file; got {str(p)!r}")
    if p.stat().st_size > MAX_CHECKPOINT_BYTES:
        raise FileParamError(field, f"{p} has {p.stat().st_size:,} bytes; a checkpoint may have at most {MAX_CHECKPOINT_BYTES:,}")
    digest = file_sha256(p)
    if problem := pin_problem(str(p), digest, pinned):
        raise FileParamError(field, problem)
    return str(p), digest


def load_into(model: nn.Module, path: str, sha256: str | None) -> None:
    """Load the checkpoint at ``path`` into ``model`` (in place), refusing a file that
    changed since the study was read, that is not a state dict, or that does not match
    the model key for key and shape for shape."""
    p = Path(path)
    if sha256 is not None and (not p.is_file() or file_sha256(p) != sha256):
        raise McStudyError(f"checkpoint {p} changed (or vanished) since the study was read; run again")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling refused, a truncated file, not a torch file
        raise McStudyError(f"checkpoint {p} cannot be read as a state dict with weights_only=True: {type(e).__name__}: {e}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]  # a training checkpoint that wraps the state dict
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise McStudyError(f"checkpoint {p} is not a state dict (names to tensors); save it with torch.save(model.state_dict(), path)")
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the model" for k in sorted(set(own) & set(state)) if state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + ([f"unexpected {', '.join(unexpected)}"] if unexpected else []) + shapes
        raise McStudyError(f"checkpoint {p} does not match the study's model: " + "; ".join(parts))
    with torch.no_grad():
        model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
