"""What a study may ask for: the documented bounds on names, file size, chips, times and sweeps (README, "Limits")."""

from __future__ import annotations

import re


NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$"
# What a study may ask for: a study file is untrusted input, and each bound keeps a typo
# (chips: 10**12) from exhausting memory instead of failing with a message (README, "Limits").
MAX_FILE_BYTES = 1 << 20  # 1 MiB of YAML
MAX_YAML_NODES = 100_000  # YAML nodes after expanding aliases (a "billion laughs" file is refused)
MAX_NAME_LENGTH = 100  # a study's or an entry's name (it becomes a file name)
MAX_CHIPS = 10_000_000
MAX_TIMES = 1_000
MAX_VARIANTS = 1_000  # after sweeps
MAX_POPULATIONS = 10_000  # after sweeps
MAX_PROCEDURES = 100
MAX_RESULTS = 5_000_000_000  # variants × populations × procedures × times × chips
_NAME_RE = re.compile(NAME_PATTERN)

