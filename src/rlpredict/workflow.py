"""Small pieces the Snakemake scripts share: step lists, logging, one-line errors."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path

from rlpredict.checkpoints import CheckpointError

USER_ERRORS = (CheckpointError, FileNotFoundError, ValueError, RuntimeError)


def checkpoint_steps(total_steps: int, save_every: int) -> list[int]:
    """0 (the base), every ``save_every`` steps, and the final step."""
    if save_every > total_steps:
        raise ValueError(
            f"train.save_every ({save_every}) exceeds train.steps ({total_steps}): "
            "no checkpoint would be saved"
        )
    steps = list(range(0, total_steps + 1, save_every))
    if steps[-1] != total_steps:
        steps.append(total_steps)
    return steps


def setup_logging(log_file: str | Path) -> None:
    """Send logging, warnings, printed metrics and progress bars to the rule's log file."""
    Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    stream = open(log_file, "w", buffering=1)  # noqa: SIM115 - lives as long as the script
    sys.stdout = sys.stderr = stream
    logging.basicConfig(
        level=logging.INFO,
        stream=stream,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    logging.captureWarnings(True)


def run_script(main: Callable[[object], None], smk: object) -> None:
    """Run a rule's script body; a known input problem ends in one line, not a traceback."""
    setup_logging(smk.log[0])
    try:
        main(smk)
    except USER_ERRORS as err:
        message = f"rlpredict: error in rule {smk.rule}: {err}"
        logging.getLogger("rlpredict").error(message)
        print(message, file=sys.__stderr__)
        sys.exit(1)


def rank_tokens(ranks: list, percents: list) -> list[str]:
    """Path tokens for the ablation ranks, smallest first: ``4``, ``10pct``, ``full``."""
    ints = sorted({int(r) for r in ranks if r != "full"})
    tokens = [str(r) for r in ints] + [f"{p}pct" for p in sorted(set(percents))]
    return tokens + ["full"] if "full" in ranks else tokens


def rank_argument(token: str) -> str:
    """The rank as ``ablate_model`` takes it, from a path token."""
    return f"{token[:-3]}%" if token.endswith("pct") else token


def write_parquet(table, path: str | Path) -> None:
    """Parquet written under a temporary name and renamed when complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    table.to_parquet(tmp, index=False)
    tmp.replace(path)
