"""Crash safety: a killed coordinator resumes to the same dataset, one run per store,
stale locks never block, fsspec URLs, and the cluster configs Ray will accept."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import yaml

from mcstudy import load_study, open_results
from mcstudy.execution import RunOptions, run_study
from mcstudy.store import Location, StoreLock

from .conftest import ROOT, run_cli, small_study


def _done(store: Path) -> int:
    try:
        return int(open_results(store)["done"].values.sum())
    except Exception:
        return 0


def test_sigkill_of_the_coordinator_then_resume_gives_the_same_dataset(tmp_path: Path, cache_dir: Path) -> None:
    study = small_study(tmp_path, chips=64)
    reference = tmp_path / "ref.zarr"
    run_study(load_study(study), RunOptions(reference, executor="serial", block_size=4, cache_dir=cache_dir, progress=False))
    out = tmp_path / "killed.zarr"
    env = dict(os.environ, MCSTUDY_CACHE=str(cache_dir))
    cmd = [sys.executable, "-m", "mcstudy", "run", str(study), "--out", str(out), "--workers", "2", "--block-size", "4", "--quiet"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (0 < _done(out) < 2 * 64):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the coordinator and its workers, mid-study
    proc.wait()
    done_before = _done(out)
    assert 0 < done_before < 2 * 64, "the kill did not land mid-study"

    r = run_cli("run", study, "--out", out, "--workers", "2", cache=cache_dir)
    assert r.returncode == 0, r.stderr
    resumed = re.search(r"(\d+) of (\d+) units already done", r.stderr)
    computed = re.search(r"\((\d+) of (\d+) units computed\)", r.stdout)
    assert resumed and computed
    already, total = int(resumed.group(1)), int(resumed.group(2))
    assert already * 4 == done_before  # chips marked done before the kill = units skipped
    assert int(computed.group(1)) == total - already  # nothing done before was computed again
    a, b = open_results(reference).load(), open_results(out).load()
    for var in ("accuracy", "loss", "done", "float_accuracy"):
        np.testing.assert_array_equal(a[var].values, b[var].values, err_msg=var)


def test_a_second_run_on_the_same_store_is_refused(tmp_path: Path, cache_dir: Path) -> None:
    study = small_study(tmp_path, chips=4)
    out = tmp_path / "busy.zarr"
    with StoreLock(Location(out)):
        r = run_cli("run", study, "--out", out, "--executor", "serial", cache=cache_dir)
    assert r.returncode == 2 and "being written by another mcstudy run" in r.stderr and f"pid {os.getpid()}" in r.stderr
    assert not out.exists()


def test_a_stale_lock_from_a_killed_run_does_not_block(tmp_path: Path, cache_dir: Path) -> None:
    out = tmp_path / "stale.zarr"
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from mcstudy.store import Location, StoreLock\nimport time\nwith StoreLock(Location({str(out)!r})):\n    print('held', flush=True)\n    time.sleep(600)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait()
    assert "pid" in Location(out).lock_path().read_text()  # the dead run's note is still there
    r = run_cli("run", small_study(tmp_path, chips=4), "--out", out, "--executor", "serial", cache=cache_dir)
    assert r.returncode == 0, r.stderr


def test_store_at_an_fsspec_url(tmp_path: Path, cache_dir: Path) -> None:
    url = f"file://{tmp_path}/url-store.zarr"
    r = run_cli("run", small_study(tmp_path, chips=4), "--out", url, "--executor", "serial", cache=cache_dir)
    assert r.returncode == 0, r.stderr
    ds = open_results(url)
    assert bool(ds["done"].all())
    r = run_cli("run", small_study(tmp_path, chips=4), "--out", url, "--executor", "serial", cache=cache_dir)
    assert r.returncode == 0 and "(0 of 2 units computed)" in r.stdout


@pytest.mark.parametrize("name", ["aws.yaml", "local.yaml"])
def test_cluster_configs_pass_rays_own_validation(name: str) -> None:
    from ray.autoscaler._private.util import fillout_defaults, validate_config

    config = yaml.safe_load((ROOT / "cluster" / name).read_text())
    validate_config(fillout_defaults(config))
    broken = dict(config, head_start_ray_comands=["ray start --head"])  # a misspelt field is caught
    with pytest.raises(jsonschema.ValidationError, match="head_start_ray_comands"):
        validate_config(fillout_defaults(broken))


def test_a_script_without_a_main_guard_fails_with_a_clear_error_instead_of_hanging(tmp_path: Path, cache_dir: Path) -> None:
    """The local executor spawns workers that import the calling script; a script that runs
    a study at import time makes every worker die while it starts. The run must stop
    with an error that says what to do, not wait forever."""
    study = small_study(tmp_path, chips=8)
    script = tmp_path / "unguarded.py"
    script.write_text(
        "from mcstudy import load_study\n"
        "from mcstudy.execution import RunOptions, run_study\n"
        f"run_study(load_study({str(study)!r}), RunOptions({str(tmp_path / 'out.zarr')!r}, executor='local', workers=2, progress=False))\n"
    )
    env = {**os.environ, "MCSTUDY_CACHE": str(cache_dir)}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert out.returncode != 0
    assert "if __name__ ==" in out.stderr and "worker process exited" in out.stderr
