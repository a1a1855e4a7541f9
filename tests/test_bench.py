"""The benchmark compares like with like: mcstudy's batched path and the plain one-chip
loop of ``mcstudy bench`` model the same physics (statistically equal accuracies)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mcstudy.bench import TIMES, Workload, batched_accuracies, loop_accuracies
from mcstudy.data import DataSpec, load_dataset
from mcstudy.models import build_model
from mcstudy.models.zoo import MLPParams
from mcstudy.training import TRAINERS, TrainJob, run_train_job


@pytest.mark.parametrize("converters", [False, True])
def test_batched_path_and_one_chip_loop_have_the_same_physics(converters: bool) -> None:
    data = load_dataset(DataSpec(dataset="digits"), seed=0)
    params = MLPParams(hidden=(32,))
    model = build_model("mlp", params, data.input_shape, data.n_classes)
    model.load_state_dict(run_train_job(TrainJob("mlp", params, "standard", TRAINERS.get("standard").params(epochs=10), 0), data).state_dict)
    w = Workload("mlp", model.eval(), torch.from_numpy(data.x_test), torch.from_numpy(data.y_test), converters)
    n = 48
    batched = batched_accuracies(w, range(n)).numpy()  # (time, chip)
    loop = np.array([loop_accuracies(w, c) for c in range(n)]).T
    assert batched.shape == loop.shape == (len(TIMES), n)
    # different random numbers, same distribution: the means agree within 4 standard
    # errors of their difference (plus one test sample for the accuracy's granularity)
    se = np.sqrt(batched.var(1, ddof=1) / n + loop.var(1, ddof=1) / n)
    gap = np.abs(batched.mean(1) - loop.mean(1))
    assert (gap <= 4 * se + 1 / len(w.y)).all(), (batched.mean(1), loop.mean(1), se)
    assert (np.diff(batched.mean(1)) < 0.01).all()  # compensated accuracy does not rise with drift
