"""Process-level settings of the compute workers."""

from __future__ import annotations


def test_workers_keep_large_freed_buffers_mapped() -> None:
    """execution/allocator.py: after ``keep_freed_memory`` a block's large tensors come back
    from the heap instead of being page-faulted in afresh (glibc); measured in a fresh
    process, allocating and touching 64 MiB sixteen times. The figure is the median over
    the steady state: the heap may still grow once there (another allocation in between),
    which costs one full fault-in but not a fresh mapping every time."""
    import subprocess
    import sys

    probe = (
        "import resource, sys, torch\n"
        "from mcstudy.execution.allocator import keep_freed_memory\n"
        "tuned = sys.argv[1] == '1' and keep_freed_memory()\n"
        "faults = []\n"
        "for _ in range(16):\n"
        "    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "    torch.ones(1 << 24)\n"
        "    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)\n"
        "steady = sorted(faults[4:])\n"  # after the heap has grown
        "print(int(tuned), steady[len(steady) // 2])\n"
    )
    faults = {}
    for flag in ("0", "1"):
        out = subprocess.run([sys.executable, "-c", probe, flag], capture_output=True, text=True, check=True).stdout.split()
        faults[flag] = (int(out[0]), int(out[1]))
    pages = (64 << 20) // 4096
    assert faults["0"][1] > pages // 2  # a fresh mapping each time: every page faulted in again
    if faults["1"][0]:  # glibc: each tensor reuses the previous one's pages
        assert faults["1"][1] < pages // 10
