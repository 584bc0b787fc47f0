"""Where a run's checkpoints are: step → dir for this workflow's runs and for verl's.

Torch-free (directory listings only), so the workflow can list the checkpoints of a run
trained elsewhere while it parses the Snakefile. Reading the weights is
:mod:`rlpredict.checkpoints`' job.
"""

from __future__ import annotations

import re
from pathlib import Path

from rlpredict.errors import CheckpointError


def discover_run(checkpoints_dir: str | Path) -> dict[int, Path]:
    """Map step → dir for the ``step_{N}`` subdirs of a run, sorted by step.

    Raises CheckpointError when the dir does not exist or holds no ``step_{N}`` dir.
    """
    checkpoints_dir = Path(checkpoints_dir)
    if not checkpoints_dir.is_dir():
        raise CheckpointError(f"{checkpoints_dir}: checkpoints dir not found")
    steps = {}
    for p in checkpoints_dir.iterdir():
        m = re.fullmatch(r"step_(\d+)", p.name)
        if m and p.is_dir():
            steps[int(m.group(1))] = p
    if not steps:
        raise CheckpointError(f"{checkpoints_dir}: no step_{{N}} checkpoint dirs")
    return dict(sorted(steps.items()))


def discover_verl_run(verl_dir: str | Path) -> dict[int, Path]:
    """Map step → ``global_step_N/actor`` dir, sorted; steps past the last completed save
    (``latest_checkpointed_iteration.txt``) are left out as possibly incomplete.

    Raises CheckpointError when the dir does not exist or holds no completed actor dir.
    """
    verl_dir = Path(verl_dir)
    if not verl_dir.is_dir():
        raise CheckpointError(f"{verl_dir}: verl checkpoint dir not found")
    steps = {}
    for p in verl_dir.iterdir():
        m = re.fullmatch(r"global_step_(\d+)", p.name)
        if m and (p / "actor").is_dir():
            steps[int(m.group(1))] = p / "actor"
    latest_file = verl_dir / "latest_checkpointed_iteration.txt"
    if latest_file.is_file():
        latest = int(latest_file.read_text().strip())
        steps = {s: p for s, p in steps.items() if s <= latest}
    if not steps:
        raise CheckpointError(f"{verl_dir}: no global_step_N/actor checkpoint dirs")
    return dict(sorted(steps.items()))
