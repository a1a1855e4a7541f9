"""The Ray executor on real local clusters: same numbers as serial, and studies that
survive a lost node and a killed actor. No mocks: real Ray on loopback."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import ray
from ray.cluster_utils import Cluster

from mcstudy import load_study, open_results
from mcstudy.execution import RunOptions, run_study

from .conftest import small_study


def _serial_reference(tmp_path: Path, study: Path, cache: Path) -> np.ndarray:
    out = tmp_path / "serial.zarr"
    run_study(load_study(study), RunOptions(out, executor="serial", block_size=4, cache_dir=cache, progress=False))
    return open_results(out)["accuracy"].values


def test_ray_with_two_workers_is_identical_to_serial(tmp_path: Path, cache_dir: Path) -> None:
    study = small_study(tmp_path, chips=12)
    ref = _serial_reference(tmp_path, study, cache_dir)
    fresh_cache = tmp_path / "cold-cache"  # variants are trained again, as Ray tasks
    report = run_study(
        load_study(study),
        RunOptions(tmp_path / "ray.zarr", executor="ray", workers=2, block_size=5, cache_dir=fresh_cache, progress=False),
    )
    assert report.trained == {"float": "trained", "noise_injection": "trained"}
    assert not ray.is_initialized()  # the executor shut down the cluster it started
    ds = open_results(tmp_path / "ray.zarr")
    np.testing.assert_array_equal(ds["accuracy"].values, ref)
    assert bool(ds["done"].all())


def _done_units(store: Path) -> int:
    try:
        return int(open_results(store)["done"].values.sum())
    except Exception:  # not created yet
        return 0


def _run_in_thread(spec, options: RunOptions) -> tuple[threading.Thread, dict]:  # type: ignore[no-untyped-def]
    box: dict = {}

    def target() -> None:
        try:
            box["report"] = run_study(spec, options)
        except BaseException as e:  # surfaced by the test
            box["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


def _wait_for_progress(store: Path, total_chips: int, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        done = _done_units(store)
        if 0 < done < total_chips:
            return
        time.sleep(0.05)
    raise AssertionError("the study never reached its middle")


@pytest.fixture
def cluster():
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    yield c
    ray.shutdown()
    c.shutdown()


def test_study_survives_losing_a_node(tmp_path: Path, cache_dir: Path, cluster: Cluster) -> None:
    study = small_study(tmp_path, chips=48)
    ref = _serial_reference(tmp_path, study, cache_dir)
    first = cluster.add_node(num_cpus=1)
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    spec = load_study(study)
    out = tmp_path / "nodes.zarr"
    thread, box = _run_in_thread(spec, RunOptions(out, executor="ray", workers=2, block_size=2, cache_dir=cache_dir, progress=False))
    _wait_for_progress(out, 2 * 48)
    cluster.add_node(num_cpus=1)  # room for the restarted actor
    cluster.remove_node(first)  # both worker nodes host an actor: this one is lost
    thread.join(timeout=600)
    assert "error" not in box, box.get("error")
    ds = open_results(out)
    np.testing.assert_array_equal(ds["accuracy"].values, ref)
    assert bool(ds["done"].all())


def _actor_pids() -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if b"ray::_UnitWorker" in cmd:
                pids.append(int(entry))
    return pids


def test_study_survives_a_killed_actor(tmp_path: Path, cache_dir: Path) -> None:
    study = small_study(tmp_path, chips=48)
    ref = _serial_reference(tmp_path, study, cache_dir)
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")
    try:
        out = tmp_path / "kill.zarr"
        spec = load_study(study)
        thread, box = _run_in_thread(spec, RunOptions(out, executor="ray", workers=2, block_size=2, cache_dir=cache_dir, progress=False))
        _wait_for_progress(out, 2 * 48)
        pids = _actor_pids()
        assert pids, "no actor process found"
        os.kill(pids[0], signal.SIGKILL)
        thread.join(timeout=600)
        assert "error" not in box, box.get("error")
        ds = open_results(out)
        np.testing.assert_array_equal(ds["accuracy"].values, ref)
    finally:
        ray.shutdown()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_ray_job_submit_against_a_started_cluster(tmp_path: Path, cache_dir: Path) -> None:
    import json
    import subprocess
    import sys

    from .conftest import ROOT

    study = small_study(tmp_path, chips=10)
    ref = _serial_reference(tmp_path, study, cache_dir)
    gcs, dashboard = _free_port(), _free_port()
    env = dict(os.environ, MCSTUDY_CACHE=str(cache_dir))
    start = [
        "ray", "start", "--head", f"--port={gcs}", "--num-cpus=2", "--include-dashboard=true",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--disable-usage-stats",
    ]  # fmt: skip
    subprocess.run(start, env=env, check=True, capture_output=True, timeout=180)
    try:
        out = tmp_path / "job.zarr"
        submit = [
            "ray", "job", "submit", "--address", f"http://127.0.0.1:{dashboard}",
            "--runtime-env-json", json.dumps({"env_vars": {"MCSTUDY_CACHE": str(cache_dir)}}),
            "--", sys.executable, str(ROOT / "cluster" / "submit_study.py"), str(study), "--out", str(out), "--workers", "2",
        ]  # fmt: skip
        r = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "succeeded" in (r.stdout + r.stderr).lower()
        ds = open_results(out)
        np.testing.assert_array_equal(ds["accuracy"].values, ref)
        assert bool(ds["done"].all())
    finally:
        subprocess.run(["ray", "stop", "--force"], env=env, capture_output=True, timeout=120)


_PRIVACY_PROBE = """
import json, os
from pathlib import Path


def _tcp_listeners() -> set[tuple[str, int]]:
    '''Listening TCP sockets of this machine, as (address, port).'''
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            ip, port = fields[1].split(":")
            if len(ip) == 8:
                addr = ".".join(str(b) for b in bytes.fromhex(ip)[::-1])
            elif ip.startswith("0000000000000000FFFF0000"):  # ::ffff:a.b.c.d
                addr = ".".join(str(b) for b in bytes.fromhex(ip[24:])[::-1])
            else:
                addr = "::1" if ip == "00000000000000000000000001000000" else ip
            out.add((addr, int(port, 16)))
    return out


home_token = Path.home() / ".ray" / "auth_token"
had = home_token.exists()
before = _tcp_listeners()
from mcstudy.execution.ray_executor import RayExecutor
out = {}
for run in range(2):  # a second instance in the same process (a notebook's second study) works too
    executor = RayExecutor(workers=1)
    import ray
    out["opened"] = sorted(_tcp_listeners() - before)
    private = Path(executor._owns.dir)
    token = private / "auth_token"
    out["modes"] = [oct(private.stat().st_mode & 0o777), oct(token.stat().st_mode & 0o777)]
    out["dir"] = str(private)
    out["notes"] = executor.notes()
    out["token_path_set"] = os.environ.get("RAY_AUTH_TOKEN_PATH") == str(token)
    out["answer"] = ray.get(ray.remote(lambda: 42).remote())
    executor.close()
    out["left"] = private.exists() or ray.is_initialized() or "RAY_AUTH_TOKEN_PATH" in os.environ
out["home_token_created"] = home_token.exists() and not had
print(json.dumps(out))
"""


def test_a_local_ray_instance_is_private(tmp_path: Path) -> None:
    """The instance mcstudy starts itself: every server it opens listens on loopback only,
    its token is a 0600 file in a 0700 directory (nothing in ~/.ray), and it leaves no
    file behind. In a fresh process, as a user's run is, with a TMPDIR of 100+ characters
    (a cluster job's scratch directory): Ray's unix sockets would not fit under it, so the
    private directory is a short one under /tmp."""
    import json
    import subprocess
    import sys

    from mcstudy.execution.ray_executor import FALLBACK_TEMP_DIRS

    long_tmp = tmp_path / "scratch" / "job_1234567" / ("node-local-" + "x" * 60) / "tmp"
    long_tmp.mkdir(parents=True)
    assert len(str(long_tmp)) > 100
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    probe = _PRIVACY_PROBE
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env={**env, "TMPDIR": str(long_tmp)}, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["opened"], "Ray opened no listener?"
    assert {addr for addr, _ in out["opened"]} <= {"127.0.0.1", "::1"}, out["opened"]
    assert out["modes"] == ["0o700", "0o600"] and out["token_path_set"] and out["answer"] == 42
    assert not out["left"] and not out["home_token_created"]
    assert str(Path(out["dir"]).parent) in FALLBACK_TEMP_DIRS and not any(long_tmp.iterdir())
    assert out["notes"] == [f"Ray's session files are in {out['dir']}: TMPDIR {long_tmp} is too long for Ray's unix socket paths"]


def test_the_private_ray_directory_is_under_tmpdir_where_the_sockets_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    """``private_dir`` takes TMPDIR where Ray's longest socket path fits the kernel's limit
    there, else the first fallback; with nowhere to put it, a message saying what to set."""
    import shutil
    import tempfile

    from mcstudy.errors import McStudyError
    from mcstudy.execution import ray_executor

    short = Path(tempfile.mkdtemp(prefix="t", dir="/tmp"))
    made: list[Path] = []
    try:
        monkeypatch.setattr(tempfile, "tempdir", str(short))
        fits = len(str(short)) + len("/mcstudy-ray-12345678") + len(ray_executor.RAY_SOCKET_TAIL)
        monkeypatch.setattr(ray_executor, "SOCKET_PATH_MAX", fits)
        monkeypatch.setenv("TMPDIR", str(short))
        path, note = ray_executor.private_dir()
        made.append(Path(path))
        assert made[-1].parent == short and made[-1].stat().st_mode & 0o777 == 0o700 and note is None
        monkeypatch.setattr(ray_executor, "SOCKET_PATH_MAX", fits - 1)
        path, note = ray_executor.private_dir()
        made.append(Path(path))
        assert str(made[-1].parent) == ray_executor.FALLBACK_TEMP_DIRS[0]
        assert note == f"Ray's session files are in {path}: TMPDIR {short} is too long for Ray's unix socket paths"
        monkeypatch.setattr(ray_executor, "SOCKET_PATH_MAX", 10)
        with pytest.raises(McStudyError, match="set TMPDIR to a short writable directory"):
            ray_executor.private_dir()
    finally:
        for d in made:
            d.rmdir()
        shutil.rmtree(short)



def test_an_unreachable_cluster_fails_within_bounded_time(tmp_path: Path, cache_dir: Path) -> None:
    """A refused port fails at the TCP check; a server that accepts and never answers
    fails after one bounded connection attempt (ray_executor.CONNECT_SECONDS)."""
    import socket

    from mcstudy.execution.ray_executor import CONNECT_SECONDS

    from .conftest import run_cli

    study = small_study(tmp_path, chips=4)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: [accepted.append(silent.accept()[0]) for _ in range(64)], daemon=True).start()
    for address, within in (("127.0.0.1:1", 20.0), (f"127.0.0.1:{silent.getsockname()[1]}", CONNECT_SECONDS + 20.0)):
        t0 = time.time()
        r = run_cli("run", study, "--executor", "ray", "--address", address, "--out", tmp_path / "never.zarr", cache=cache_dir)
        assert r.returncode == 2 and "Ray cluster at" in r.stderr and "Traceback" not in r.stderr, r.stderr[-1500:]
        assert time.time() - t0 < within, time.time() - t0
    assert not (tmp_path / "never.zarr").exists()
    silent.close()


ATTENTION_MODULE = '''
import os
import torch.nn as nn

with open({log!r}, "a") as f:  # where each process imported this module from
    f.write(os.path.abspath(__file__) + "\\n")


class Net(nn.Module):
    def __init__(self, n_classes, dim):
        super().__init__()
        self.embed = nn.Linear(8, dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, x):
        h = self.embed(x.reshape(x.shape[0], 8, 8))
        h = self.norm(h + self.attn(h, h, h)[0])
        return self.head(h.mean(1))


def build(input_shape, n_classes, dim=16):
    return Net(n_classes, dim)
'''


def test_ray_ships_a_study_local_module_to_its_workers(tmp_path: Path, cache_dir: Path) -> None:
    """A model module beside the study reaches Ray's workers through the job's runtime
    environment (a copy of the study's directory, not the original), training included,
    and the store is the serial executor's, bit for bit."""
    import yaml

    import mcstudy

    study_dir, log = tmp_path / "study", tmp_path / "imports.log"
    study_dir.mkdir()
    (study_dir / "attnnet.py").write_text(ATTENTION_MODULE.format(log=str(log)))
    study = study_dir / "attn.yaml"
    study.write_text(yaml.safe_dump({
        "name": "attn", "seed": 3, "chips": 6, "times": ["20s", "1d"],
        "model": {"factory": "attnnet:build", "kwargs": {"dim": 16}},
        "variants": {"float": {"trainer": "standard", "epochs": 3}},
        "hardware": {"pcm": {"device": "pcm", "read_noise": "per_vector", "variation": {"within": {"sigma": 0.05}}}},
        "procedures": {"inference": {}, "global": {"kind": "drift_compensation"}},
    }))  # fmt: skip
    serial = mcstudy.run(study, out=tmp_path / "serial.zarr", executor="serial", cache_dir=cache_dir, progress=False)
    run_study(load_study(study), RunOptions(tmp_path / "ray.zarr", executor="ray", workers=2, block_size=3, cache_dir=tmp_path / "cold", progress=False))
    np.testing.assert_array_equal(open_results(tmp_path / "ray.zarr")["accuracy"].values, serial["accuracy"].values)
    imported = set(log.read_text().split())
    shipped = {p for p in imported if not p.startswith(str(study_dir))}
    assert shipped and all("working_dir" in p for p in shipped), imported  # Ray's copy, in its session
    assert float(serial["float_accuracy"].sel(variant="float")) > 0.3
