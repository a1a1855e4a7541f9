"""Hostile input, damaged stores, interrupts: a user's mistake exits 2 with a message and
writes nothing; damage is detected and repaired to an uninterrupted run's numbers; an
interrupted run stops promptly, leaves nothing behind and resumes identically."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from mcstudy import load_study, open_results
from mcstudy.data import DataSpec, load_dataset
from mcstudy.data.idx import write_idx
from mcstudy.errors import DataError, StoreError
from mcstudy.execution import RunOptions, run_study
from mcstudy.location import Lease, Location, StoreLock

from .conftest import QUICKSTART, run_cli, small_study


def _refused(r: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    for needle in needles:
        assert needle in r.stderr, (needle, r.stderr[-2000:])


# -- 1. study files that are not what they seem ------------------------------------------


def test_study_files_in_other_encodings(tmp_path: Path) -> None:
    text = QUICKSTART.read_text(encoding="utf-8").replace("Float-trained", "Flöat-trained")
    utf16 = tmp_path / "utf16.yaml"
    utf16.write_bytes(text.encode("utf-16"))  # with a byte-order mark: read as such
    r = run_cli("validate", utf16)
    assert r.returncode == 0, r.stderr
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes(text.encode("latin-1"))
    _refused(run_cli("validate", latin), "latin1.yaml", "not UTF-8", "byte 0xf6", "save the file as UTF-8")


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path: Path) -> None:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]")  # 9^9 = 387 million nodes
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    t0 = time.perf_counter()
    r = run_cli("validate", bomb)
    _refused(r, "aliases", "100,000")
    assert time.perf_counter() - t0 < 30  # the interpreter's start included; the check itself is linear


@pytest.mark.parametrize(
    "path, value, message",
    [
        ("chips", 10**12, "chips: must be <= 10000000"),
        ("times", ["20s", "1e400s"], "times.1: input should be a finite number"),
        ("times", ["20s", 5000 * 365 * 86400], "times.1: must be <= 31536000000"),
        ("hardware.pcm.variation.within.sigma", float("inf"), "hardware.pcm.variation.within.sigma: input should be a finite number"),
        ("hardware.pcm.device", {"name": "pcm", "drift_scale": float("nan")}, "hardware.pcm.device.drift_scale: input should be a finite number"),
        ("name", "x" * 300, "name: string should have at most 100 characters"),
    ],
)
def test_what_a_study_may_ask_for_is_bounded_and_finite(tmp_path: Path, path: str, value: object, message: str) -> None:
    raw = yaml.safe_load(QUICKSTART.read_text())
    *parents, last = path.split(".")
    node = raw
    for p in parents:
        node = node[p]
    node[last] = value
    study = tmp_path / "bounded.yaml"
    study.write_text(yaml.safe_dump(raw, sort_keys=False))
    out = tmp_path / "never.zarr"
    _refused(run_cli("run", study, "--out", out), message)
    assert not out.exists()


def test_a_population_that_overflows_stops_the_run_instead_of_storing_nan(tmp_path: Path, cache_dir: Path) -> None:
    raw = yaml.safe_load(small_study(tmp_path, chips=4).read_text())
    raw["hardware"]["pcm"]["variation"]["within"]["sigma"] = 500.0  # finite, far beyond any device
    study = tmp_path / "overflow.yaml"
    study.write_text(yaml.safe_dump(raw, sort_keys=False))
    _refused(run_cli("run", study, "--out", tmp_path / "o.zarr", "--executor", "serial", cache=cache_dir), "non-finite loss", "'pcm'")


# -- 2. paths and URLs -------------------------------------------------------------------


def test_paths_that_cannot_be_written_are_refused_with_a_message(tmp_path: Path, cache_dir: Path) -> None:
    study = small_study(tmp_path, chips=4)
    (tmp_path / "afile").write_text("not a directory")
    _refused(run_cli("run", study, "--out", tmp_path / "afile" / "x.zarr", cache=cache_dir), "is a file, not a directory")
    _refused(run_cli("run", study, "--out", "a" * 300 + ".zarr", cache=cache_dir, cwd=tmp_path), "at most 255")
    _refused(run_cli("run", study, "--out", "http://127.0.0.1:9/x.zarr", cache=cache_dir), "http:// stores cannot be written")
    _refused(run_cli("run", study, "--cache-dir", tmp_path / "afile", "--out", tmp_path / "c.zarr"), "is a file, not a directory")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "ro"
        locked.mkdir(mode=0o555)
        _refused(run_cli("run", study, "--out", locked / "x.zarr", cache=cache_dir), "no permission to write")
    assert not any(p.name.endswith(".zarr") for p in tmp_path.rglob("*"))


def test_user_text_is_never_markup(tmp_path: Path, cache_dir: Path) -> None:
    study = small_study(tmp_path, chips=4)
    out = tmp_path / "[/b]odd[red].zarr"
    r = run_cli("run", study, "--out", out, "--executor", "serial", cache=cache_dir)
    assert r.returncode == 0, r.stderr
    assert "[/b]odd[red].zarr" in r.stdout
    _refused(run_cli("report", tmp_path / "[/b]missing.zarr"), "[/b]missing.zarr")
    (tmp_path / "page").write_text("a file")
    _refused(run_cli("report", out, "--out", tmp_path / "page"), "is a file")


def test_overwrite_through_a_symbolic_link_is_refused(tmp_path: Path, cache_dir: Path) -> None:
    study = small_study(tmp_path, chips=4)
    real = tmp_path / "real.zarr"
    assert run_cli("run", study, "--out", real, "--executor", "serial", cache=cache_dir).returncode == 0
    before = open_results(real).load()
    link = tmp_path / "link.zarr"
    link.symlink_to(real)
    raw = yaml.safe_load(study.read_text())
    raw["seed"] = 99
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(raw, sort_keys=False))
    _refused(run_cli("run", other, "--out", link, "--overwrite", "--executor", "serial", cache=cache_dir), "symbolic link")
    assert before.identical(open_results(real).load()) and link.is_symlink()


# -- 4. one run per store, whatever its name ---------------------------------------------


def test_one_run_per_store_whatever_its_name(tmp_path: Path, cache_dir: Path) -> None:
    out = tmp_path / "one.zarr"
    (tmp_path / "alias.zarr").symlink_to(out)
    study = small_study(tmp_path, chips=4)
    with StoreLock(Location(out)):
        for name in (f"file://{out}", tmp_path / "alias.zarr", tmp_path / "sub" / ".." / "one.zarr"):
            (tmp_path / "sub").mkdir(exist_ok=True)
            _refused(run_cli("run", study, "--out", name, "--executor", "serial", cache=cache_dir), "being written by another mcstudy run")
    assert not out.exists()


def test_object_store_lease() -> None:
    """Where there is no flock (s3://, gs://, …): a lease object with the holder and an
    expiry. A held lease refuses a second run; an expired one (a killed run) does not."""
    url = f"memory://lease-{os.getpid()}/study.zarr"
    first = Lease(Location(url), seconds=30.0, settle=0.01)
    first.acquire()
    with pytest.raises(StoreError, match="being written by another mcstudy run"):
        Lease(Location(url), seconds=30.0, settle=0.01).acquire()
    first.release()
    second = Lease(Location(url), seconds=0.2, settle=0.01)
    second.acquire()
    second._stop.set()  # a run that died: its lease is no longer renewed
    time.sleep(0.5)
    third = Lease(Location(url), seconds=30.0, settle=0.01)
    third.acquire()  # the dead run's lease has expired
    third.release()
    assert not Location(url).fs.exists(Location(url).lease_path())


# -- 3. damaged stores ----------------------------------------------------------------------


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def _set_attr(store: Path, key: str, value: object) -> None:
    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"][key] = value
    (store / "zarr.json").write_text(json.dumps(meta))


DAMAGE = {
    "accuracy chunk deleted": lambda s: (s / "accuracy/c/1/0/0/0/1").unlink(),
    "loss chunk with a flipped byte": lambda s: _flip(s / "loss/c/0/0/0/0/0"),
    "accuracy chunk truncated": lambda s: os.truncate(s / "accuracy/c/0/0/0/0/1", 3),
    "done array deleted": lambda s: __import__("shutil").rmtree(s / "done"),
    "loss metadata deleted": lambda s: (s / "loss/zarr.json").unlink(),
    "block_size edited": lambda s: _set_attr(s, "block_size", 64),
    "float_accuracy chunk deleted": lambda s: (s / "float_accuracy/c/0").unlink(),
    "chip coordinate chunk with a flipped byte": lambda s: _flip(s / "chip/c/0"),
    "accuracy metadata garbage": lambda s: (s / "accuracy/zarr.json").write_text("{garbage"),
}
RECOMPUTED = {"done array deleted": "all", "loss metadata deleted": "all", "accuracy metadata garbage": "all",
              "block_size edited": 0, "float_accuracy chunk deleted": 0, "chip coordinate chunk with a flipped byte": 0}  # fmt: skip


@pytest.fixture(scope="module")
def intact(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("intact")
    study = small_study(tmp, chips=6)
    store = tmp / "intact.zarr"
    run_study(load_study(study), RunOptions(store, executor="serial", block_size=3, cache_dir=cache_dir, progress=False))
    return study, store


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damage_is_detected_never_resumed_over_and_repaired_to_the_same_numbers(
    kind: str, intact: tuple[Path, Path], tmp_path: Path, cache_dir: Path
) -> None:
    import shutil

    from mcstudy.verify import verify

    study, reference = intact
    store = tmp_path / "damaged.zarr"
    shutil.copytree(reference, store)
    DAMAGE[kind](store)
    damage = verify(Location(store))
    assert not damage.intact and not damage.fatal, damage.lines()
    spec = load_study(study)
    opts = dict(executor="serial", block_size=3, cache_dir=cache_dir, progress=False)
    with pytest.raises(StoreError, match="--repair"):
        run_study(spec, RunOptions(store, **opts))  # never resumed over
    report = run_study(spec, RunOptions(store, repair=True, **opts))
    expected = RECOMPUTED.get(kind, 1)
    assert report.units_run == (report.units_total if expected == "all" else expected)
    assert verify(Location(store)).intact
    a, b = open_results(reference).load(), open_results(store).load()
    for name in a.variables:
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
    assert {k: v for k, v in a.attrs.items() if k != "created"} == {k: v for k, v in b.attrs.items() if k != "created"}


def test_verify_export_and_repair_through_the_command_line(intact: tuple[Path, Path], tmp_path: Path, cache_dir: Path) -> None:
    import shutil

    study, reference = intact
    store = tmp_path / "damaged.zarr"
    shutil.copytree(reference, store)
    assert run_cli("verify", store).returncode == 0
    DAMAGE["loss chunk with a flipped byte"](store)
    r = run_cli("verify", store)
    assert r.returncode == 1 and "damaged" in r.stdout and "float × pcm × chips 0-2" in r.stdout and "--repair" in r.stdout, r.stdout
    _refused(run_cli("run", study, "--out", store, "--executor", "serial", cache=cache_dir), "is damaged", "--repair")
    _refused(run_cli("export", store, "--parquet", tmp_path / "x.parquet"), "damaged")
    assert not (tmp_path / "x.parquet").exists()
    r = run_cli("run", study, "--out", store, "--executor", "serial", "--repair", cache=cache_dir)
    assert r.returncode == 0 and "(1 of 4 units computed)" in r.stdout, r.stderr
    assert run_cli("verify", store).returncode == 0


def test_a_store_from_a_newer_mcstudy_is_never_resumed(intact: tuple[Path, Path], tmp_path: Path, cache_dir: Path) -> None:
    import shutil

    study, reference = intact
    store = tmp_path / "future.zarr"
    shutil.copytree(reference, store)
    _set_attr(store, "mcstudy_format", 99)
    for repair in (False, True):
        with pytest.raises(StoreError, match=r"(?s)newer mcstudy.*--overwrite"):
            run_study(load_study(study), RunOptions(store, executor="serial", repair=repair, cache_dir=cache_dir, progress=False))
    with pytest.raises(StoreError, match="newer mcstudy"):
        open_results(store)


# -- 7. data with nothing in it, or too much ------------------------------------------------


def _mnist_dir(tmp_path: Path, n: int = 20, labels: np.ndarray | None = None) -> Path:
    root = tmp_path / "mnist"
    root.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for part, k in (("train", n), ("t10k", n)):
        write_idx(root / f"{part}-images-idx3-ubyte.gz", rng.integers(0, 255, (k, 28, 28)))
        write_idx(root / f"{part}-labels-idx1-ubyte.gz", labels if labels is not None else np.arange(k) % 10)
    return root


def test_empty_degenerate_and_oversized_data_are_refused_with_the_file(tmp_path: Path) -> None:
    root = _mnist_dir(tmp_path, n=0)
    with pytest.raises(DataError, match="holds no data"):
        load_dataset(DataSpec(dataset="mnist", root=str(root)), 0)
    root = _mnist_dir(tmp_path, labels=np.full(20, 3))
    with pytest.raises(DataError, match="single class"):
        load_dataset(DataSpec(dataset="mnist", root=str(root)), 0)
    # a tiny gzip whose header declares 6 GB of images: refused before anything is decompressed
    bomb = root / "train-images-idx3-ubyte.gz"
    with gzip.open(bomb, "wb") as f:
        f.write(bytes([0, 0, 0x08, 3]) + (7_700_000).to_bytes(4, "big") + (28).to_bytes(4, "big") + (28).to_bytes(4, "big"))
        f.write(bytes(1 << 20))
    t0 = time.perf_counter()
    with pytest.raises(DataError, match=r"declares 6,036,800,000 data bytes"):
        load_dataset(DataSpec(dataset="mnist", root=str(root)), 0)
    assert time.perf_counter() - t0 < 5
    har = tmp_path / "har"
    for part, label in (("train", "7"), ("test", "1")):
        (har / part).mkdir(parents=True)
        (har / part / f"X_{part}.txt").write_text("0.1 0.2\nnan 0.3\n" if part == "train" else "0.1 0.2\n0.2 0.1\n")
        (har / part / f"y_{part}.txt").write_text(f"1\n{label}\n")
    with pytest.raises(DataError, match="NaN or infinite"):
        load_dataset(DataSpec(dataset="har", root=str(har)), 0)
    (har / "train" / "X_train.txt").write_text("0.1 0.2\n0.4 0.3\n")
    (har / "test" / "y_test.txt").write_text("1\n-4\n")
    with pytest.raises(DataError, match="labels run from -5"):
        load_dataset(DataSpec(dataset="har", root=str(har)), 0)


# -- 5. interrupts ----------------------------------------------------------------------


def _members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(pid))
    return out


@pytest.mark.parametrize("how", ["SIGINT to the process group", "SIGTERM to the coordinator"])
def test_an_interrupted_run_stops_promptly_leaves_nothing_and_resumes_identically(how: str, tmp_path: Path, cache_dir: Path) -> None:
    study = small_study(tmp_path, chips=96)
    reference = tmp_path / "ref.zarr"
    run_study(load_study(study), RunOptions(reference, executor="serial", block_size=4, cache_dir=cache_dir, progress=False))
    out = tmp_path / "interrupted.zarr"
    env = dict(os.environ, MCSTUDY_CACHE=str(cache_dir))
    cmd = [sys.executable, "-m", "mcstudy", "run", str(study), "--out", str(out), "--workers", "2", "--block-size", "4"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 300
    done = 0
    while time.time() < deadline and done == 0:
        time.sleep(0.1)
        try:
            done = int(open_results(out)["done"].values.sum())
        except Exception:
            done = 0
    assert done > 0 and proc.poll() is None, "the run ended before the interrupt"
    if how.startswith("SIGINT"):
        os.killpg(proc.pid, signal.SIGINT)
    else:
        os.kill(proc.pid, signal.SIGTERM)
    t0 = time.time()
    _, err = proc.communicate(timeout=60)
    assert time.time() - t0 < 15, "the run did not stop promptly"
    assert proc.returncode == (130 if how.startswith("SIGINT") else 143), err[-2000:]
    assert "Traceback" not in err, err[-3000:]
    assert sum("stopped by" in line for line in err.splitlines()) == 1 and "rerun the same command to resume" in err
    time.sleep(1)
    assert _members(proc.pid) == [], "a worker outlived the run"
    assert not list(Path(os.environ.get("TMPDIR", "/tmp")).glob(f"mcstudy-payload-{proc.pid}-*"))
    assert run_cli("verify", out).returncode == 0
    r = run_cli("run", study, "--out", out, "--workers", "2", "--block-size", "4", cache=cache_dir)
    assert r.returncode == 0, r.stderr
    a, b = open_results(reference).load(), open_results(out).load()
    for name in ("accuracy", "loss", "done"):
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)


# -- more from an adversarial pass -------------------------------------------------------------


def test_outputs_never_replace_devices_pipes_or_a_store(intact: tuple[Path, Path], tmp_path: Path) -> None:
    _, store = intact
    pipe = tmp_path / "pipe.parquet"
    os.mkfifo(pipe)
    _refused(run_cli("export", store, "--parquet", pipe), "not a regular file")
    assert not pipe.is_file()  # still a pipe
    _refused(run_cli("export", store, "--parquet", store / "zarr.json"), "inside the results store")
    _refused(run_cli("export", store, "--parquet", "/dev/null"), "not a regular file")
    assert run_cli("verify", store).returncode == 0


def test_an_overwrite_that_fails_before_its_first_unit_keeps_the_old_store(tmp_path: Path, cache_dir: Path) -> None:
    study = small_study(tmp_path, chips=4)
    out = tmp_path / "kept.zarr"
    assert run_cli("run", study, "--out", out, "--executor", "serial", cache=cache_dir).returncode == 0
    before = open_results(out).load()
    raw = yaml.safe_load(study.read_text())
    raw["hardware"]["pcm"]["variation"]["within"]["sigma"] = 500.0  # every chip overflows: the run fails at its first unit
    other = tmp_path / "fails.yaml"
    other.write_text(yaml.safe_dump(raw, sort_keys=False))
    _refused(run_cli("run", other, "--out", out, "--overwrite", "--executor", "serial", cache=cache_dir), "non-finite loss")
    assert before.identical(open_results(out).load())
    assert not list(tmp_path.glob(".kept.zarr.creating-*"))


@pytest.mark.parametrize(
    "path, value, field",
    [
        ("variants.float.trainer", {"a": 1}, "variants.float.trainer"),
        ("hardware.pcm.device", {"name": {"x": 1}}, "hardware.pcm.device.name"),
        ("data.test_fraction", 0.0001, "no test samples"),
        ("model.hidden", [100000, 100000], "model.hidden.0"),
        ("variants.noise_injection.sigma", [0.1, 0.1000001], "variants.noise_injection"),
        ("execution.threads_per_worker", 10**6, "execution.threads_per_worker"),
    ],
)
def test_more_user_mistakes_exit_2_with_a_message(tmp_path: Path, cache_dir: Path, path: str, value: object, field: str) -> None:
    raw = yaml.safe_load(small_study(tmp_path, chips=4).read_text())
    *parents, last = path.split(".")
    node = raw
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    study = tmp_path / "mistake.yaml"
    study.write_text(yaml.safe_dump(raw, sort_keys=False))
    _refused(run_cli("run", study, "--out", tmp_path / "m.zarr", "--executor", "serial", cache=cache_dir), field)
    assert not (tmp_path / "m.zarr").exists()


def test_workers_leave_when_their_coordinator_is_killed(tmp_path: Path, cache_dir: Path) -> None:
    """A coordinator that dies without cleaning up (SIGKILL, the OOM killer): its local
    workers notice and exit instead of holding their memory for ever."""
    study = small_study(tmp_path, chips=400)
    env = dict(os.environ, MCSTUDY_CACHE=str(cache_dir))
    cmd = [sys.executable, "-m", "mcstudy", "run", str(study), "--out", str(tmp_path / "k.zarr"), "--workers", "2", "--block-size", "4"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and len(_members(proc.pid)) < 3:  # the coordinator and two workers
        time.sleep(0.2)
    assert len(_members(proc.pid)) >= 3, "the workers did not start"
    os.kill(proc.pid, signal.SIGKILL)  # the coordinator alone
    proc.wait()
    deadline = time.time() + 15
    while time.time() < deadline and _members(proc.pid):
        time.sleep(0.2)
    assert _members(proc.pid) == [], "workers outlived their coordinator"
