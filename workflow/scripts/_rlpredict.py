"""Makes this checkout's ``src/`` importable when a script runs in a per-rule conda env
(Snakemake puts this directory on the script's ``sys.path``)."""

import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[2] / "src")
if SRC not in sys.path:
    sys.path.insert(0, SRC)
