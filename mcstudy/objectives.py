"""What a study trains for and what it scores: a loss and a headline metric, by registry name.

``loss: cross_entropy`` (the default; integer class labels) or ``loss: mse`` (regression:
float targets, one per output or one per sample for a single output). ``metric:
accuracy`` (the default: top-1), ``{kind: top_k, k: 5}`` (the label among the k largest
outputs), ``mse`` or ``mae`` (regression errors). The loss trains every variant and is
recorded per chip as ``loss``; classification also records ``accuracy``; the metric is
recorded under its own name (``top5_accuracy``, ``mse``, ``mae``) and is the headline of
the summary table and the yield. A metric higher or lower is better
(``Metric.higher_is_better``); a chip passes the yield when it is within the study's
``analysis.yield_within`` of the float network: absolute for accuracies (0.01 = 1
percentage point), relative for errors (0.01 = 1 % above the float network's).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt

from .registries import LOSSES, SCORES
from .registry import NoParams, Params


def _outputs_like(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Outputs ``(M, K)`` against regression targets ``(M,)`` (K = 1) or ``(M, K)``."""
    if targets.dim() == 1:
        if outputs.shape[-1] != 1:
            raise ValueError(f"regression targets hold one value per sample, but the network has {outputs.shape[-1]} outputs")
        return outputs[..., 0]
    if outputs.shape[-1] != targets.shape[-1]:
        raise ValueError(f"regression targets hold {targets.shape[-1]} values per sample, but the network has {outputs.shape[-1]} outputs")
    return outputs


def _mean_over_outputs(e: torch.Tensor) -> torch.Tensor:
    """Per-sample errors ``(M, ...)`` -> their mean over outputs ``(M,)``."""
    return e.reshape(e.shape[0], -1).mean(1)


class Loss:
    """A per-sample loss ``(outputs (M, K), targets (M, ...)) -> (M,)``; training and the
    recorded ``loss`` take its mean."""

    classification = True  # targets are class indices (int64), outputs are logits
    long_name = ""
    units = "1"

    def __init__(self, params: Params) -> None:
        self.params = params

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def mean(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The training objective: the mean over samples."""
        return self(outputs, targets).mean()


@LOSSES.register("cross_entropy", NoParams)
class CrossEntropy(Loss):
    """Softmax cross-entropy of the logits with the class labels, nat."""

    long_name, units = "mean cross-entropy loss on the test split", "nat"

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs, targets, reduction="none")

    def mean(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs, targets)  # torch's own reduction (the same bits as before losses were named)


@LOSSES.register("mse", NoParams)
class MeanSquaredError(Loss):
    """Squared error of the outputs against float targets, averaged over outputs (target units²)."""

    classification = False
    long_name, units = "mean squared error on the test split", "target units²"

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        d = _outputs_like(outputs, targets) - targets
        return _mean_over_outputs(d * d)


class Metric:
    """A per-chip score: the mean over test samples of :meth:`per_sample`."""

    classification = True
    higher_is_better = True
    long_name = ""
    units = "1"

    def __init__(self, params: Params) -> None:
        self.params = params

    @property
    def variable(self) -> str:
        """Its name in the store."""
        raise NotImplementedError

    def problem(self, n_outputs: int) -> str | None:
        """Why this metric cannot score a network of ``n_outputs`` outputs (None: it can)."""
        return None

    def per_sample(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``outputs (M, K)``, ``targets (M, ...)`` -> ``(M,)``."""
        raise NotImplementedError


@SCORES.register("accuracy", NoParams)
class Accuracy(Metric):
    """Top-1 accuracy: the share of test samples whose largest output is the label."""

    long_name = "test accuracy"
    variable = "accuracy"  # type: ignore[assignment]

    def per_sample(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (outputs.argmax(-1) == targets).to(torch.float64)


class TopKParams(Params):
    k: PositiveInt = Field(5, le=1000, description="the label counts as found among the k largest outputs")


@SCORES.register("top_k", TopKParams)
class TopK(Metric):
    """Top-k accuracy: the share of test samples whose label is among the k largest outputs
    (ties broken as ``torch.topk`` breaks them)."""

    params: TopKParams  # type: ignore[assignment]

    @property
    def variable(self) -> str:  # type: ignore[override]
        return f"top{self.params.k}_accuracy"

    @property
    def long_name(self) -> str:  # type: ignore[override]
        return f"test top-{self.params.k} accuracy"

    def per_sample(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # the label's rank, ties broken as argmax breaks them (the lower index first): with
        # k = 1 this is exactly the top-1 accuracy
        label = outputs.gather(-1, targets.unsqueeze(-1))
        index = torch.arange(outputs.shape[-1], device=outputs.device)
        rank = (outputs > label).sum(-1) + ((outputs == label) & (index < targets.unsqueeze(-1))).sum(-1)
        return (rank < self.params.k).to(torch.float64)

    def problem(self, n_outputs: int) -> str | None:
        if self.params.k >= n_outputs:
            return f"metric top_k with k = {self.params.k} and {n_outputs} classes: every chip would score 100 %; choose k below {n_outputs}"
        return None


class _RegressionError(Metric):
    """An error against regression targets, per output, averaged over outputs; lower is better."""

    classification, higher_is_better = False, False

    def error(self, d: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def per_sample(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return _mean_over_outputs(self.error(_outputs_like(outputs, targets) - targets)).to(torch.float64)


@SCORES.register("mse", NoParams)
class MSE(_RegressionError):
    """Mean squared error against regression targets (averaged over outputs)."""

    long_name, units = "test mean squared error", "target units²"
    variable = "mse"  # type: ignore[assignment]

    def error(self, d: torch.Tensor) -> torch.Tensor:
        return d * d


@SCORES.register("mae", NoParams)
class MAE(_RegressionError):
    """Mean absolute error against regression targets (averaged over outputs)."""

    long_name, units = "test mean absolute error", "target units"
    variable = "mae"  # type: ignore[assignment]

    def error(self, d: torch.Tensor) -> torch.Tensor:
        return d.abs()


class Objective:
    """A study's loss and headline metric, built from their registry names and parameters."""

    def __init__(self, loss: str = "cross_entropy", loss_params: Params | None = None, metric: str = "accuracy", metric_params: Params | None = None) -> None:
        self.loss_name, self.metric_name = loss, metric
        self.loss = LOSSES.get(loss).obj(loss_params or NoParams())
        self.metric = SCORES.get(metric).obj(metric_params or NoParams())

    @property
    def default(self) -> bool:
        """Cross-entropy and top-1 accuracy: what every study that names neither uses."""
        return (self.loss_name, self.metric_name) == ("cross_entropy", "accuracy")

    @property
    def classification(self) -> bool:
        return self.loss.classification

    @property
    def headline(self) -> str:
        """The store variable of the headline metric."""
        return self.metric.variable

    @property
    def metrics(self) -> tuple[str, ...]:
        """What every chip records: accuracy (classification) and loss, then the headline
        metric where it is another."""
        base = ("accuracy", "loss") if self.classification else ("loss",)
        return base if self.headline in base else (*base, self.headline)

    def attrs(self) -> dict[str, dict[str, str]]:
        """Long name and units of each recorded metric."""
        out = {"loss": {"long_name": self.loss.long_name, "units": self.loss.units, "better": "lower"}}
        if self.classification:
            out["accuracy"] = {"long_name": "test accuracy", "units": "1"}
        out[self.headline] = {"long_name": self.metric.long_name, "units": self.metric.units}
        if not self.metric.higher_is_better:
            out[self.headline]["better"] = "lower"  # read by the analysis (yield, wins)
        return out

    @torch.no_grad()
    def sums(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-chip sums over a batch, float64 ``(C,)``, of every recorded metric, for
        outputs ``(C, n, K)`` and the batch's targets ``(n, ...)``."""
        c, n = outputs.shape[:2]
        flat = outputs.reshape(c * n, *outputs.shape[2:])
        rep = targets.repeat(c, *([1] * (targets.dim() - 1)))
        out = {"loss": self.loss(flat, rep).reshape(c, n).to(torch.float64).sum(1)}
        if self.classification:
            out["accuracy"] = (outputs.argmax(-1) == targets).sum(1, dtype=torch.float64)
        if self.headline not in out:
            out[self.headline] = self.metric.per_sample(flat, rep).reshape(c, n).sum(1)
        return out
