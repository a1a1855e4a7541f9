"""Accuracy of a study's trained network when every crossbar weight shrinks by one common
factor, in plain PyTorch (no chips, no noise): how far a common drift of all devices is
from harmless for this architecture.

    python analysis/common_scale.py studies/transformer_drift.yaml --seed 11 [--variant float]

Columns: the crossbar weights scaled (what uncompensated drift does to the weights); the
crossbar weights and every other float parameter scaled with them (biases, position
embeddings, norms: if digital parameters that do not drift were the cause, this would
restore accuracy); and, for a network with attention, the crossbar weights scaled except
the query and key rows of each input projection (the scores q·k then keep their scale).
The variant is trained as the study trains it (or loaded from the model cache).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn as nn

from mcstudy.data import load_dataset
from mcstudy.models import build_model
from mcstudy.models.crossbars import analog_modules, analog_weight_names
from mcstudy.spec import load_study
from mcstudy.training import ModelCache, train_or_load


def query_key_rows(model: nn.Module) -> dict[str, slice]:
    """Each attention's input projection and its query and key rows (the first 2·E)."""
    return {
        f"{name}.in_proj_weight" if name else "in_proj_weight": slice(0, 2 * m.embed_dim)
        for name, m in analog_modules(model)
        if isinstance(m, nn.MultiheadAttention) and m._qkv_same_embed_dim
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("study")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--variant", default=None, help="default: the study's first")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--factors", type=float, nargs="+", default=[1.0, 0.9, 0.75, 0.63, 0.5])
    args = ap.parse_args()

    spec = load_study(args.study, seed=args.seed)
    data = load_dataset(spec.data, spec.seed)
    v = spec.variant(args.variant) if args.variant else spec.variants[0]
    m = spec.model_of(v)
    trained = train_or_load(m.name, m.params, v.trainer.name, v.trainer.params, data, spec.seed, ModelCache(args.cache_dir), spec.loss.name)
    net = build_model(m.name, trained.model_params or m.params, data.input_shape, data.n_classes).eval()
    state = trained.state_dict
    crossbars = set(analog_weight_names(net))
    qk = query_key_rows(net)
    x, y = torch.from_numpy(data.x_test), torch.from_numpy(data.y_test)

    def accuracy(sd: dict[str, torch.Tensor]) -> float:
        net.load_state_dict(sd)
        with torch.no_grad():
            return float((net(x).argmax(-1) == y).double().mean())

    def scaled(a: float, everything: bool, keep_qk: bool) -> dict[str, torch.Tensor]:
        out = {}
        for n, t in state.items():
            if n in crossbars or (everything and t.is_floating_point()):
                t = t * a
                if keep_qk and n in qk:
                    t[qk[n]] = state[n][qk[n]]
            out[n] = t
        return out

    header = f"{'factor':>7}  {'crossbars':>9}  {'+ digital':>9}" + (f"  {'q,k kept':>9}" if qk else "")
    print(f"{spec.name}, variant {v.name}, seed {spec.seed}: test accuracy (%) with crossbar weights × factor")
    print(header)
    for a in args.factors:
        row = f"{a:>7.2f}  {100 * accuracy(scaled(a, False, False)):>9.1f}  {100 * accuracy(scaled(a, True, False)):>9.1f}"
        if qk:
            row += f"  {100 * accuracy(scaled(a, False, True)):>9.1f}"
        print(row)


if __name__ == "__main__":
    main()
