"""The ``rlpredict`` command: analyses of users' own checkpoints.

Each subcommand is a Command in COMMANDS: a function adding its arguments to an argparse
parser and a function running it. Heavy imports (torch, pandas) happen inside the run
functions so that ``rlpredict --help`` stays fast. Bad input ends with one line
``rlpredict: error: <message>`` on stderr and exit status 2, and leaves no partial output.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

EXIT_BAD_INPUT = 2
DEFAULT_MODULES_HELP = "regex selecting the matrices (default: attention and MLP projections)"


@dataclass(frozen=True)
class Command:
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], None]


COMMANDS: dict[str, Command] = {}


def register(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    """Decorator registering a run function as subcommand ``name``."""

    def decorate(run: Callable[[argparse.Namespace], None]):
        COMMANDS[name] = Command(help, add_arguments, run)
        return run

    return decorate


def _tmp_file(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_table(df, path: str | Path) -> Path:
    """Write a DataFrame to .parquet or .csv (by suffix) through a tmp file and a rename."""
    path = Path(path)
    _check_table_suffix(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_file(path)
    try:
        if path.suffix == ".parquet":
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, index=False)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _check_table_suffix(path: Path) -> None:
    if path.suffix not in (".parquet", ".csv"):
        raise ValueError(f"{path}: output must end in .parquet or .csv")


# ---------------------------------------------------------------------------------------
# ablate

DTYPES = ("float32", "bfloat16", "float16")


def _ablate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", required=True, help="base model dir (W_0)")
    p.add_argument("--checkpoint", required=True, help="trained model dir (W_t)")
    p.add_argument(
        "--rank", required=True, help="k ≥ 1, a percentage of min(m, n) like 10%%, or full"
    )
    p.add_argument("--scale", choices=("frobenius", "none"), default="frobenius")
    p.add_argument("--lam", type=float, default=1.0, help="multiplier λ of the update (1)")
    p.add_argument("--modules", default=None, help=DEFAULT_MODULES_HELP)
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="output dtype")
    p.add_argument("--out", required=True, help="output model dir")


@register("ablate", "write the rank-k ablated model W_0 + λ·α·ΔW^(k)", _ablate_arguments)
def run_ablate(args: argparse.Namespace) -> None:
    import statistics

    import torch

    from rlpredict import spectral
    from rlpredict.ablate import ablate_model

    result = ablate_model(
        args.base,
        args.checkpoint,
        args.out,
        rank=args.rank,
        scale=args.scale,
        lam=args.lam,
        module_regex=args.modules or spectral.DEFAULT_MODULE_REGEX,
        out_dtype=getattr(torch, args.dtype),
    )
    shares = [m["energy_share"] for m in result["modules"].values()]
    print(
        f"wrote {args.out}: rank {args.rank}, scale {args.scale}, λ {args.lam}, "
        f"{len(shares)} matrices, median energy share σ₁²/‖ΔW‖² {statistics.median(shares):.4f}"
    )


# ---------------------------------------------------------------------------------------
# spectrum


def _spectrum_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", required=True, help="base model dir (W_0)")
    p.add_argument("--checkpoint", required=True, help="trained model dir (W_t)")
    p.add_argument("--out", required=True, help="output table (.parquet or .csv)")
    p.add_argument("--k", type=int, default=8, help="singular values per matrix (8)")
    p.add_argument("--modules", default=None, help=DEFAULT_MODULES_HELP)


@register("spectrum", "top-k singular values and energy shares of ΔW", _spectrum_arguments)
def run_spectrum(args: argparse.Namespace) -> None:
    from rlpredict import spectral

    out = Path(args.out)
    _check_table_suffix(out)
    if args.k < 1:
        raise ValueError(f"invalid --k {args.k}: must be at least 1")
    df = spectral.spectrum_table(
        args.base,
        args.checkpoint,
        k=args.k,
        module_regex=args.modules or spectral.DEFAULT_MODULE_REGEX,
        step=None,
    )
    write_table(df, out)
    print(f"wrote {out}: {len(df)} rows")


# ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from rlpredict import __version__

    parser = argparse.ArgumentParser(
        prog="rlpredict", description="Analyses of RL checkpoints of LLMs."
    )
    parser.add_argument("--version", action="version", version=f"rlpredict {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.help, description=command.help)
        command.add_arguments(p)
        p.set_defaults(_run=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from rlpredict.checkpoints import CheckpointError

    try:
        args._run(args)
    except (CheckpointError, ValueError, OSError) as e:
        message = " ".join(str(e).split())
        print(f"rlpredict: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
