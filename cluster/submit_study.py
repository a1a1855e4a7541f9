"""Run a study on the Ray cluster this script runs on.

With the cluster launcher (the script is copied to the head node and run there)::

    ray submit cluster/aws.yaml cluster/submit_study.py -- ~/mcstudy/studies/pcm_drift.yaml --out ~/results/pcm_drift.zarr

With the Jobs API (the dashboard's job server, here reached on 127.0.0.1:8265)::

    ray job submit --address http://127.0.0.1:8265 -- \\
        python ~/mcstudy/cluster/submit_study.py ~/mcstudy/studies/pcm_drift.yaml --out ~/results/pcm_drift.zarr

Every ``mcstudy run`` flag works after the study file; ``--executor ray --address auto``
is implied. ``--out`` may be a path on the head node or an fsspec URL (``s3://...``)
when the filesystem package (s3fs, gcsfs, ...) is installed on the head node.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from mcstudy.cli import main as mcstudy_main

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if args else 2
    if "--executor" not in args:
        args += ["--executor", "ray"]
    if "--address" not in args:
        args += ["--address", "auto"]
    return mcstudy_main(["run", *args])


if __name__ == "__main__":
    sys.exit(main())
