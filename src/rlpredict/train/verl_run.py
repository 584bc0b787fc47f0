"""Run verl's trainer as a subprocess and recover its training history from the console.

verl's console logger prints one line per step, ``step:N - key:value - key:value ...``
(behind a Ray prefix such as ``(TaskRunner pid=42)``). Every launch appends its output to
:data:`CONSOLE_LOG` in the checkpoint dir, so the history of a run that was interrupted and
resumed is complete; for a step logged twice the later line wins.

The history's ``reward`` is verl's ``critic/score/mean``: under DAPO it includes the overlong
penalty and covers only the groups kept by dynamic sampling, so it is not the training
accuracy. verl 0.9.1 logs no training accuracy (the reward managers' ``acc`` reaches only the
validation metrics, ``val-core/<data_source>/acc/mean@N``, logged every ``test_freq`` steps
when validation files are given); the ``reward_metric`` column says what ``reward`` is.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from rlpredict.atomic import atomic_write_text
from rlpredict.errors import CheckpointError
from rlpredict.runs import discover_verl_run

CONSOLE_LOG = "rlpredict_console.log"
DONE_FILE = "rlpredict_done.json"  # written when the run has saved its last step
REWARD_KEYS = ("critic/score/mean", "critic/rewards/mean")
_STEP_LINE = re.compile(r"(?:^|\s)step:(\d+) - (.*)$")
_NUMBER = re.compile(r"(?:np\.[a-z0-9_]+\()?([^()]*)\)?")


def parse_value(text: str) -> float | None:
    """A logged number: ``0.5``, ``3``, ``nan`` or numpy's ``np.float64(0.5)``."""
    m = _NUMBER.fullmatch(text.strip())
    try:
        return float(m.group(1)) if m else None
    except ValueError:
        return None


def parse_console(lines: Iterable[str]) -> list[dict[str, float]]:
    """One dict of metrics per step, sorted by step; later lines replace earlier ones."""
    by_step: dict[int, dict[str, float]] = {}
    for line in lines:
        m = _STEP_LINE.search(line.rstrip("\n"))
        if not m:
            continue
        metrics: dict[str, float] = {}
        for item in m.group(2).split(" - "):
            key, sep, value = item.rpartition(":")
            number = parse_value(value) if sep else None
            if key and number is not None:
                metrics[key.strip()] = number
        by_step[int(m.group(1))] = metrics
    return [{"step": step, **by_step[step]} for step in sorted(by_step)]


def history_frame(rows: list[dict[str, float]], reward_meaning: str | None = None) -> pd.DataFrame:
    """Columns ``step``, ``reward`` (verl's mean training score) and ``reward_metric`` (what
    ``reward`` measures: ``reward_meaning``, else the verl metric it was read from) first,
    then every logged metric in name order."""
    table = pd.DataFrame(rows, columns=None if rows else ["step"])
    reward = next((k for k in REWARD_KEYS if k in table), None)
    table["reward"] = table[reward] if reward else math.nan
    table["reward_metric"] = reward_meaning or reward or ""
    first = ["step", "reward", "reward_metric"]
    rest = sorted(c for c in table.columns if c not in first)
    return table[[*first, *rest]]


def read_history(console_log: str | Path, reward_meaning: str | None = None) -> pd.DataFrame:
    """The training history in a console log; empty (with its columns) if there is none.
    ``reward_meaning``: the ``reward_metric`` text (see :func:`history_frame`)."""
    path = Path(console_log)
    if not path.is_file():
        return history_frame([], reward_meaning)
    with path.open(errors="replace") as f:
        return history_frame(parse_console(f), reward_meaning)


def run_logged(command: list[str], console_log: str | Path, env: dict | None = None) -> int:
    """Run ``command``, copying its output to stdout and appending it to ``console_log``."""
    console_log = Path(console_log)
    console_log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "1", **(env or {})}
    with console_log.open("a") as log:
        log.write(f"# rlpredict: {' '.join(command)}\n")
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        assert process.stdout is not None
        for line in process.stdout:
            sys.stdout.write(line)
            log.write(line)
        return process.wait()


def check_saved(verl_dir: str | Path, steps: list[int]) -> dict[int, Path]:
    """The actor dirs of ``steps``; CheckpointError naming the steps verl did not save."""
    saved = discover_verl_run(verl_dir)
    missing = [s for s in steps if s not in saved]
    if missing:
        raise CheckpointError(
            f"{verl_dir}: verl finished without checkpoints for step(s) {missing} "
            f"(saved: {sorted(saved)})"
        )
    return {s: saved[s] for s in steps}


def write_done(verl_dir: str | Path, steps: list[int], command: list[str]) -> Path:
    """Record that the run reached its last step (the training rule's output)."""
    path = Path(verl_dir) / DONE_FILE
    atomic_write_text(path, json.dumps({"steps": steps, "command": command}, indent=1) + "\n")
    return path


def train_with_verl(
    config: dict,
    *,
    model_path: str | Path,
    train_files: str | Path | list,
    val_files: str | Path | list | None,
    verl_dir: str | Path,
    steps: list[int],
    threads: int,
    log_file: str | Path,
) -> pd.DataFrame:
    """Run (or resume, see ``verl_backend.prepare_run_dir``) one verl training run from the HF
    dir ``model_path`` into ``verl_dir`` and return its training history.

    ``config`` holds ``run``, ``seed`` and ``train`` (``train.steps`` optimizer steps, a save
    every ``train.save_every`` and at the last step). ``steps``: the steps that must have
    been saved (0, the start, is skipped). ``threads``: the job's CPUs, for Ray's count.
    Raises RuntimeError when verl fails (its output is in ``log_file`` and in the console
    log), CheckpointError when it finished without saving one of ``steps``.
    """
    from rlpredict.backends import train_gpus
    from rlpredict.train.verl_backend import (
        format_value,
        launch_command,
        ray_num_cpus,
        reward_meaning,
    )

    verl_dir = Path(verl_dir)
    # Ray counts the job's CPUs, not the node's (verl's advice under SLURM).
    command = launch_command(
        config,
        model_path=Path(model_path).resolve(),
        train_files=train_files,
        val_files=val_files,
        checkpoint_dir=verl_dir,
        python=sys.executable,
        ray_cpus=ray_num_cpus(threads, train_gpus(config), os.environ),
    )
    # Hydra's own run files (resolved config, log) go next to the checkpoints, not into cwd.
    command.append(f"hydra.run.dir={format_value(str(verl_dir.resolve() / 'hydra'))}")
    code = run_logged(command, verl_dir / CONSOLE_LOG)
    if code != 0:
        raise RuntimeError(f"verl exited with code {code}; its output is in {log_file}")
    check_saved(verl_dir, [s for s in steps if s > 0])
    history = read_history(verl_dir / CONSOLE_LOG, reward_meaning(config["train"]))
    write_done(verl_dir, steps, command)
    return history


def import_checkpoint(source: str | Path, out_dir: str | Path, kind: str) -> Path:
    """One checkpoint as an fp32 HF dir at out_dir.

    ``base``: any HF dir, cast to fp32 (bf16 hub weights are exactly what training starts
    from); ``verl``: a verl ``global_step_N/actor`` dir; ``hf``: an HF dir that must already
    hold fp32 weights (RL updates vanish in bf16).
    """
    from rlpredict.train.verl_checkpoints import convert_step, copy_model  # torch

    if kind == "base":
        return copy_model(source, out_dir)
    if kind == "verl":
        return convert_step(source, out_dir)
    if kind == "hf":
        return copy_model(source, out_dir, require_fp32=True)
    raise ValueError(f"unknown checkpoint kind {kind!r}; use base, verl or hf")


def existing_history(existing: dict) -> pd.DataFrame:
    """The training history of a run trained elsewhere, where one was recorded: the console
    log this workflow keeps in a verl dir, or the history next to a checkpoints dir written
    by this workflow (``results/{run}/analysis/train_history.csv``); else an empty table."""
    if existing.get("verl_dir"):
        return read_history(Path(existing["verl_dir"]) / CONSOLE_LOG)
    table = Path(existing["checkpoints_dir"]).parent / "analysis" / "train_history.csv"
    if table.is_file():
        return pd.read_csv(table)
    return history_frame([])
