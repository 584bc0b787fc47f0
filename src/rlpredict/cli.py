"""The ``rlpredict`` command: analyses of users' own checkpoints.

Each subcommand is a Command in COMMANDS: a function adding its arguments to an argparse
parser and a function running it. Heavy imports (torch, pandas) happen inside the run
functions so that ``rlpredict --help`` stays fast. Bad input ends with one line
``rlpredict: error: <message>`` on stderr and exit status 2, and leaves no partial output.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rlpredict.methods import METHODS, cli_methods

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


def write_table(df, path: str | Path, inputs: Sequence[str | Path] = ()) -> Path:
    """Write a DataFrame to .parquet or .csv (by suffix) through a tmp file and a rename.

    ValueError for another suffix, or for a path that is, contains or lies inside an input.
    """
    from rlpredict.checkpoints import atomic_output_file

    path = Path(path)
    _check_table_suffix(path)
    with atomic_output_file(path, inputs) as tmp:
        if path.suffix == ".parquet":
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, index=False)
    return path


def _check_table_suffix(path: Path) -> None:
    if path.suffix not in (".parquet", ".csv"):
        raise ValueError(f"{path}: output must end in .parquet or .csv")


# ---------------------------------------------------------------------------------------
# Inputs and outputs, checked by main() before any command runs

# Arguments naming files or dirs a command reads (besides its STEP=DIR pairs) and writes.
MODEL_ARGS = ("base", "checkpoint")
INPUT_ARGS = (*MODEL_ARGS, "prompts", "verl_dir")
OUTPUT_ARGS = ("out", "fits")
LOW_PRECISION_FLAG = "--allow-low-precision"


def _pair_dirs(args: argparse.Namespace) -> list[str]:
    """The DIRs of the STEP=DIR pairs (malformed pairs are reported by parse_checkpoints)."""
    items = getattr(args, "checkpoints", None) or []
    return [d for _, sep, d in (item.partition("=") for item in items) if sep and d]


def _given(args: argparse.Namespace, names: tuple[str, ...]) -> list[tuple[str, str]]:
    """(option, value) of the named arguments the command has and was given."""
    found = [(f"--{n}", getattr(args, n, None)) for n in names]
    return [(flag, value) for flag, value in found if value]


def model_inputs(args: argparse.Namespace) -> list[str]:
    """The model dirs a command reads: --base, --checkpoint and the STEP=DIR pairs."""
    return [value for _, value in _given(args, MODEL_ARGS)] + _pair_dirs(args)


def check_outputs(args: argparse.Namespace) -> None:
    """ValueError unless every output (--out, --fits) stays clear of every input and the other
    outputs: an output may not be, contain or lie inside one of them (symlinks resolved)."""
    from rlpredict.checkpoints import check_output_path

    inputs = [value for _, value in _given(args, INPUT_ARGS)] + _pair_dirs(args)
    outputs = _given(args, OUTPUT_ARGS)
    for i, (flag, out) in enumerate(outputs):
        check_output_path(out, inputs, flag)
        for other_flag, other in outputs[:i]:
            try:
                check_output_path(out, [other])
            except ValueError:
                raise ValueError(
                    f"{out}: {flag} and {other_flag} {other} overlap (the same path, or one "
                    "inside the other)"
                ) from None


def _add_low_precision(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        LOW_PRECISION_FLAG,
        action="store_true",
        help="accept bf16/fp16 weights (refused by default: their rounding error swamps an "
        "RL-sized ΔW); a warning is printed",
    )


def base_inputs(args: argparse.Namespace) -> set[Path]:
    """The base model W_0 a command reads (--base or the 0=DIR pair), resolved."""
    bases = [args.base] if getattr(args, "base", None) else []
    items = getattr(args, "checkpoints", None) or []
    bases += [d for step, sep, d in (i.partition("=") for i in items) if sep and step == "0"]
    return {Path(b).resolve() for b in bases}


def check_precision(args: argparse.Namespace) -> None:
    """For the ΔW commands (those with --allow-low-precision): CheckpointError naming the dir
    and a tensor when a trained checkpoint holds bf16/fp16 weights, or with the flag a warning.

    The base W_0 may be stored in bf16: training starts from exactly those values, so
    ΔW = W_t − W_0 against fp32 checkpoints loses nothing.
    """
    if not hasattr(args, "allow_low_precision"):
        return
    from rlpredict.checkpoints import ModelReader, low_precision_problem

    seen = base_inputs(args)
    for model_dir in model_inputs(args):
        key = Path(model_dir).resolve()
        if key in seen or not key.is_dir():
            continue  # the base, or a missing dir the command itself reports
        seen.add(key)
        with ModelReader(model_dir) as reader:
            problem = low_precision_problem(reader)
        if problem is None:
            continue
        if not args.allow_low_precision:
            raise ValueError(f"{problem}; pass {LOW_PRECISION_FLAG} to accept it")
        print(f"rlpredict: warning: {problem} ({LOW_PRECISION_FLAG} given)", file=sys.stderr)


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
    _add_low_precision(p)


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
# convert

CONVERT_DESCRIPTION = """\
Convert verl FSDP actor checkpoints to fp32 Hugging Face dirs OUT/step_N/ (the input of
every other command). VERL_DIR is a run's trainer.default_local_dir (global_step_N/actor/
dirs) or one global_step_N/actor dir. The fp32 weights come from the rank shards
(model_world_size_W_rank_R.pt), one tensor at a time, or from actor/huggingface/ when verl
saved them there in fp32.

verl's own model merger is not used: it casts every tensor to bf16, whose rounding erases
the RL updates of a run at lr ~1e-6. An actor kept in bf16 is refused for the same reason
(train with actor_rollout_ref.actor.fsdp_config.model_dtype=fp32). Saves newer than
latest_checkpointed_iteration.txt may be incomplete: a run's are left out (with a
warning), and naming one directly is an error. OUT is written only once every step is
converted.
"""

CONVERT_EPILOG = """examples:
  rlpredict convert checkpoints/my_run --base Qwen2.5-Math-1.5B --out run_fp32
  rlpredict convert checkpoints/my_run/global_step_200/actor --out step200_fp32
  rlpredict extrapolate weight 0=run_fp32/step_0 100=run_fp32/step_100 \\
      200=run_fp32/step_200 --target-step 1000 --out pred_1000
"""


def _convert_arguments(p: argparse.ArgumentParser) -> None:
    p.description = CONVERT_DESCRIPTION
    p.epilog = CONVERT_EPILOG
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("verl_dir", metavar="VERL_DIR", help="verl run dir or one global_step_N/actor")
    p.add_argument("--out", required=True, help="output dir of the step_N/ HF dirs")
    p.add_argument("--base", default=None, help="the run's base model dir, written as step_0")
    p.add_argument(
        "--prefer",
        choices=("hf_model", "shards"),
        default="hf_model",
        help="read actor/huggingface/ when it holds fp32 weights (hf_model, default) or "
        "always merge the rank shards",
    )


@register(
    "convert",
    "verl FSDP checkpoints → fp32 HF dirs step_N/ (never bf16, unlike verl's merger)",
    _convert_arguments,
)
def run_convert(args: argparse.Namespace) -> None:
    from rlpredict.train.verl_checkpoints import convert_verl, unfinished_saves

    source = Path(args.verl_dir)
    for step in unfinished_saves(source) if source.is_dir() else []:
        print(
            f"rlpredict: warning: {source / f'global_step_{step}'} left out: saved after the "
            "step in latest_checkpointed_iteration.txt, it may be incomplete",
            file=sys.stderr,
        )
    done = convert_verl(source, args.out, base_model_dir=args.base, prefer=args.prefer)
    print(f"wrote {args.out}: steps {sorted(done)} as fp32 HF dirs step_N/")


# ---------------------------------------------------------------------------------------
# spectrum


def _spectrum_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", required=True, help="base model dir (W_0)")
    p.add_argument("--checkpoint", required=True, help="trained model dir (W_t)")
    p.add_argument("--out", required=True, help="output table (.parquet or .csv)")
    p.add_argument("--k", type=int, default=8, help="singular values per matrix (8)")
    p.add_argument("--modules", default=None, help=DEFAULT_MODULES_HELP)
    _add_low_precision(p)


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
# shared parsing of STEP=VALUE pairs

CHECKPOINTS_HELP = (
    "checkpoints as STEP=DIR pairs (HF model dirs), e.g. 0=base 100=run/step_100 "
    "200=run/step_200; step 0, when given, is the base model"
)


def parse_step_pairs(items: list[str], what: str, convert: Callable[[str], object]) -> dict:
    """{step: convert(value)} from ``STEP=VALUE`` strings; ValueError naming the bad item."""
    pairs: dict[int, object] = {}
    for item in items or []:
        step, sep, value = item.partition("=")
        try:
            n = int(step)
        except ValueError:
            n = None
        if not sep or not value or n is None or n < 0:
            raise ValueError(f"malformed {what} {item!r}: expected STEP=VALUE with STEP >= 0")
        if n in pairs:
            raise ValueError(f"step {n} is given twice in the {what}s")
        try:
            pairs[n] = convert(value)
        except ValueError as e:
            raise ValueError(f"malformed {what} {item!r}: {e}") from None
    return dict(sorted(pairs.items()))


def _model_dir(value: str) -> Path:
    path = Path(value)
    if not path.is_dir():
        raise ValueError(f"{path} is not a directory")
    return path


def _accuracy(value: str) -> float:
    x = float(value)
    if not math.isfinite(x):
        raise ValueError("accuracy must be a finite number")
    return x


def parse_checkpoints(items: list[str]) -> dict[int, Path]:
    return parse_step_pairs(items, "checkpoint", _model_dir)


def _add_checkpoints(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoints", nargs="*", metavar="STEP=DIR", help=CHECKPOINTS_HELP)


def _add_model_output(p: argparse.ArgumentParser) -> None:
    """--dtype and --out of the extrapolate methods, and (all being ΔW commands) the flag
    accepting low-precision inputs."""
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="output dtype (float32)")
    p.add_argument("--out", required=True, help="output model dir (written only on success)")
    _add_low_precision(p)


def _add_base(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", default=None, help="base model dir W_0 (default: the 0=DIR pair)")


# ---------------------------------------------------------------------------------------
# extrapolate

WEIGHT_DEFAULT = "lstsq-free"  # the --fit of ``extrapolate weight`` when none is given


def _weight_fits() -> dict:
    """The ``--fit`` choices of ``extrapolate weight``: registry name → method."""
    return {m.name: m for m in cli_methods("weight")}


def _add_time(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "time axis",
        "Time is the step number, or with --time lr the integral of the learning rate up to "
        "the step (straightens trajectories under decaying schedules; only the schedule's "
        "shape matters, not the peak lr).",
    )
    g.add_argument("--time", choices=("step", "lr"), default="step", help="time axis (step)")
    g.add_argument("--lr-schedule", choices=("constant", "linear", "cosine"), default=None)
    g.add_argument("--lr", type=float, default=None, help="peak learning rate (1.0)")
    g.add_argument("--total-steps", type=int, default=None, help="steps of the whole schedule")
    g.add_argument("--warmup-steps", type=int, default=None, help="linear warm-up steps (0)")
    g.add_argument("--min-lr", type=float, default=None, help="final lr of the decay (0)")


def _schedule(args: argparse.Namespace):
    from rlpredict.extrapolate import lr_schedule

    given = [
        f"--{k.replace('_', '-')}"
        for k in ("lr_schedule", "lr", "total_steps", "warmup_steps", "min_lr")
        if getattr(args, k) is not None
    ]
    if args.time == "step":
        if given:
            raise ValueError(f"{', '.join(given)} apply only with --time lr")
        return None
    if args.lr_schedule is None or args.total_steps is None:
        raise ValueError("--time lr needs --lr-schedule and --total-steps")
    return lr_schedule(
        args.lr_schedule,
        1.0 if args.lr is None else args.lr,
        args.total_steps,
        args.warmup_steps or 0,
        args.min_lr or 0.0,
    )


def _add_copy_norms(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument(
        "--copy-norms",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"copy norm layers from the latest checkpoint instead of extrapolating them "
        f"(default: {default})",
    )


def _alpha_fits() -> str:
    """The ``--fit`` choices taking ``--alpha`` (``two-point``)."""
    return " and ".join(m.name for m in _weight_fits().values() if m.takes_alpha)


def _weight_arguments(p: argparse.ArgumentParser) -> None:
    _add_checkpoints(p)
    fits = _weight_fits()
    p.add_argument(
        "--fit",
        choices=tuple(fits),
        default=WEIGHT_DEFAULT,
        help="; ".join(
            f"{m.name}: {m.summary}" + (" (default)" if m.name == WEIGHT_DEFAULT else "")
            for m in fits.values()
        ),
    )
    target = p.add_mutually_exclusive_group()
    target.add_argument("--target-step", type=int, default=None, help="step to extrapolate to")
    target.add_argument(
        "--alpha",
        type=float,
        default=None,
        help=f"{_alpha_fits()} only: W_t0 + α (W_t1 − W_t0)",
    )
    _add_base(p)
    _add_copy_norms(p, "copy")
    _add_time(p)
    _add_model_output(p)


def _expo_arguments(p: argparse.ArgumentParser) -> None:
    _add_checkpoints(p)
    target = p.add_mutually_exclusive_group()
    target.add_argument("--alpha", type=float, default=None, help="θ₁ + α (θ₁ − θ₀)")
    target.add_argument(
        "--target-step", type=int, default=None, help="instead of α: α = target / t₁ − 1"
    )
    _add_base(p)
    _add_copy_norms(p, "extrapolate every tensor")
    _add_time(p)
    _add_model_output(p)


def _relex_arguments(p: argparse.ArgumentParser) -> None:
    _add_checkpoints(p)
    p.add_argument("--target-step", type=int, required=True, help="step to extrapolate to")
    p.add_argument(
        "--fit",
        choices=("free", "anchored"),
        default="free",
        help="line fitted to the rank-1 coefficients c_t: free (default) or through 0 at the base",
    )
    _add_base(p)
    _add_copy_norms(p, "extrapolate every tensor")
    _add_time(p)
    _add_model_output(p)


def _alpharl_arguments(p: argparse.ArgumentParser) -> None:
    _add_checkpoints(p)
    p.add_argument(
        "--accuracy",
        action="append",
        default=[],
        metavar="STEP=ACC",
        help="dev accuracy of a window checkpoint; repeat for every window step",
    )
    p.add_argument(
        "--target",
        default="forecast",
        help="forecast (default: y* from a line of accuracy vs step over the window, at "
        "--final-step; a forecast outside [0, 1] is clamped to it with a warning, and both "
        "values are printed), oracle (y* = --final-accuracy, the fully trained model's; uses "
        "the final result, not a forecast) or a number in [0, 1] taken as y*",
    )
    p.add_argument("--final-step", type=int, default=None, help="the run's final step T")
    p.add_argument("--final-accuracy", type=float, default=None, help="for --target oracle")
    p.add_argument("--scale", choices=("frobenius", "none"), default="frobenius")
    p.add_argument(
        "--add-to",
        choices=("base", "last"),
        default="base",
        help="add the predicted update to the base (default) or the last window checkpoint",
    )
    p.add_argument("--modules", default=None, help=DEFAULT_MODULES_HELP)
    p.add_argument("--fits", default=None, help="also write per-module R² (.parquet or .csv)")
    p.add_argument("--seed", type=int, default=0, help="seed of the randomized SVD (0)")
    _add_base(p)
    _add_model_output(p)


# Sub-commands of ``extrapolate``: ``weight`` runs the methods whose registry entry names it
# (chosen with --fit); the others are methods of the registry, under their own name.
EXTRAPOLATE_METHODS = {
    "weight": (
        "line through the weights of the window, evaluated at a later step",
        _weight_arguments,
    ),
    "expo": (METHODS["expo"].summary, _expo_arguments),
    "relex": (METHODS["relex"].summary, _relex_arguments),
    "alpharl": (METHODS["alpharl"].summary, _alpharl_arguments),
}

EXTRAPOLATE_EPILOG = """examples:
  rlpredict extrapolate weight 0=base 100=run/step_100 200=run/step_200 \\
      --target-step 1000 --out pred_1000
  rlpredict extrapolate weight 100=run/step_100 200=run/step_200 --fit two-point --alpha 3 \\
      --out pred
  rlpredict extrapolate expo --base base 200=run/step_200 --alpha 4 --out expo
  rlpredict extrapolate relex 0=base 100=run/step_100 200=run/step_200 --target-step 1000 \\
      --time lr --lr-schedule cosine --total-steps 1000 --out relex
  rlpredict extrapolate alpharl 0=base 100=run/step_100 200=run/step_200 300=run/step_300 \\
      --accuracy 100=0.41 --accuracy 200=0.45 --accuracy 300=0.48 --final-step 1000 \\
      --out alpharl --fits alpharl_fits.csv
"""


def _nested(p: argparse.ArgumentParser, dest: str, table: dict, epilog: str) -> None:
    p.epilog = epilog
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = p.add_subparsers(dest=dest, required=True, metavar=dest.upper())
    for name, (help, add_arguments) in table.items():
        q = sub.add_parser(
            name,
            help=help,
            description=help,
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add_arguments(q)


def _extrapolate_arguments(p: argparse.ArgumentParser) -> None:
    _nested(p, "method", EXTRAPOLATE_METHODS, EXTRAPOLATE_EPILOG)


@register(
    "extrapolate",
    "predict a later checkpoint from early ones (weight, expo, relex, alpharl)",
    _extrapolate_arguments,
)
def run_extrapolate(args: argparse.Namespace) -> None:
    import torch

    checkpoints = parse_checkpoints(args.checkpoints)
    EXTRAPOLATE_RUNS[args.method](args, checkpoints, getattr(torch, args.dtype))


def _run_weight(args: argparse.Namespace, checkpoints: dict[int, Path], out_dtype) -> None:
    method = _weight_fits()[args.fit]
    if args.alpha is not None and not method.takes_alpha:
        raise ValueError(f"--alpha applies to --fit {_alpha_fits()} only, not to {args.fit}")
    _run_weight_method(args, checkpoints, out_dtype, method.name, method.fit)


def _run_method(args: argparse.Namespace, checkpoints: dict[int, Path], out_dtype) -> None:
    """``extrapolate expo`` or ``extrapolate relex``: the method of that name."""
    _run_weight_method(args, checkpoints, out_dtype, args.method, getattr(args, "fit", "free"))


def _run_weight_method(
    args: argparse.Namespace, checkpoints: dict[int, Path], out_dtype, label: str, fit: str
) -> None:
    from rlpredict.extrapolate import extrapolate_weights

    alpha = getattr(args, "alpha", None)
    extrapolate_weights(
        label,
        checkpoints,
        args.target_step,
        args.out,
        base_dir=args.base,
        alpha=alpha,
        fit=fit,
        time=args.time,
        lr_schedule=_schedule(args),
        copy_norms=args.copy_norms,
        out_dtype=out_dtype,
        progress=False,
    )
    to = f"step {args.target_step}" if args.target_step is not None else f"α {alpha}"
    print(
        f"wrote {args.out}: {label} from steps {sorted(checkpoints)} to {to} "
        f"(time {args.time}, {args.dtype})"
    )


def _alpharl_target(text: str) -> str | float:
    if text in ("forecast", "oracle"):
        return text
    try:
        return float(text)
    except ValueError:
        raise ValueError(
            f"invalid --target {text!r}: choose forecast, oracle or a number"
        ) from None


def _run_alpharl(args: argparse.Namespace, checkpoints: dict[int, Path], out_dtype) -> None:
    import statistics

    from rlpredict import spectral
    from rlpredict.alpharl import alpharl_extrapolate

    target = _alpharl_target(args.target)
    if args.fits is not None:
        _check_table_suffix(Path(args.fits))
    accuracies = parse_step_pairs(args.accuracy, "accuracy", _accuracy)
    stray = [s for s in accuracies if s != 0 and s not in checkpoints]
    if stray:
        raise ValueError(f"--accuracy given for step(s) {stray} with no checkpoint")
    if target == "forecast" and args.final_step is None:
        raise ValueError("--target forecast needs --final-step (the step to forecast to)")
    if target == "oracle" and args.final_accuracy is None:
        raise ValueError("--target oracle needs --final-accuracy (the fully trained model's)")
    result = alpharl_extrapolate(
        checkpoints,
        accuracies,
        args.out,
        final_step=args.final_step,
        target=target,
        final_accuracy=args.final_accuracy,
        base_dir=args.base,
        scale=args.scale,
        add_to=args.add_to,
        module_regex=args.modules or spectral.DEFAULT_MODULE_REGEX,
        out_dtype=out_dtype,
        seed=args.seed,
        progress=False,
    )
    if args.fits is not None:
        write_table(result.fits, args.fits)
    r2 = [x for x in result.fits["r2"] if math.isfinite(x)]
    median = f"{statistics.median(r2):.4f}" if r2 else "n/a"
    label = {"oracle": "oracle (uses the final accuracy)", "forecast": "forecast"}.get(
        target, "given"
    )
    y_star = f"{result.target_accuracy:.4f}"
    if result.target_clamped:
        y_star += f" (forecast {result.target_accuracy_raw:.4f} clamped to [0, 1])"
    print(
        f"wrote {args.out}: AlphaRL, target {label} y* = {y_star}, "
        f"{len(result.fits)} matrices, median PLS R² {median}, added to {args.add_to}"
    )


EXTRAPOLATE_RUNS = {
    "weight": _run_weight,
    "expo": _run_method,
    "relex": _run_method,
    "alpharl": _run_alpharl,
}


# ---------------------------------------------------------------------------------------
# linearity


def _linearity_common(p: argparse.ArgumentParser) -> None:
    _add_checkpoints(p)
    p.add_argument("--out", required=True, help="per-entry R² table (.parquet or .csv)")
    p.add_argument("--seed", type=int, default=0, help="seed (0)")
    p.add_argument("--threshold", type=float, default=0.7, help="R² threshold reported (0.7)")


def _linearity_weights_arguments(p: argparse.ArgumentParser) -> None:
    _linearity_common(p)
    p.add_argument("--fraction", type=float, default=1e-3, help="entries sampled per tensor")
    p.add_argument("--min-samples", type=int, default=50, help="at least this many per tensor")
    p.add_argument("--min-change", type=float, default=1e-4, help="keep entries moving more")
    p.add_argument(
        "--min-distinct",
        type=int,
        default=None,
        help="keep entries taking at least N distinct values, capped at the number of "
        "checkpoints (default 4: with 3 checkpoints all 3 values must differ)",
    )
    p.add_argument("--include", default=r"\.weight$", help="regex of tensors sampled")
    _add_low_precision(p)


def _linearity_logprobs_arguments(p: argparse.ArgumentParser) -> None:
    _linearity_common(p)
    p.add_argument(
        "--prompts",
        required=True,
        help='probe prompts: JSON lines with a "prompt" field, or plain text, one per line',
    )
    p.add_argument("--max-new-tokens", type=int, default=64, help="response length (64)")
    p.add_argument(
        "--temperature", type=float, default=0.0, help="0: greedy responses (default); > 0: sampled"
    )
    p.add_argument("--top-p", type=float, default=1.0, help="top-p of sampled responses (1)")
    p.add_argument("--min-change", type=float, default=0.2, help="keep tokens moving more")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu", help="torch device (cpu)")


LINEARITY_KINDS = {
    "weights": ("per-weight R² of a line vs step", _linearity_weights_arguments),
    "logprobs": (
        "per-token log-prob R² vs step on the earliest checkpoint's responses to the prompts",
        _linearity_logprobs_arguments,
    ),
}

LINEARITY_EPILOG = """examples:
  rlpredict linearity weights 0=base 100=run/step_100 200=run/step_200 300=run/step_300 \\
      --out weight_r2.parquet
  rlpredict linearity logprobs 0=base 100=run/step_100 200=run/step_200 \\
      --prompts prompts.jsonl --max-new-tokens 128 --out token_r2.csv
"""


def _linearity_arguments(p: argparse.ArgumentParser) -> None:
    _nested(p, "kind", LINEARITY_KINDS, LINEARITY_EPILOG)


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from JSON lines with a "prompt" field or from plain text lines."""
    import json

    path = Path(path)
    lines = [(n, line) for n, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    if not lines:
        raise ValueError(f"{path}: no prompts")
    if path.suffix != ".jsonl" and not lines[0][1].lstrip().startswith("{"):
        return [line for _, line in lines]
    prompts = []
    for n, line in lines:
        try:
            row = json.loads(line)
            prompt = row["prompt"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f'{path}:{n}: expected a JSON object with "prompt" ({e!r})') from None
        if not isinstance(prompt, str):
            raise ValueError(f'{path}:{n}: "prompt" must be a string')
        prompts.append(prompt)
    return prompts


def _print_linearity(summary: dict, threshold: float, what: str) -> None:
    frac = summary[f"frac_r2_gt_{threshold:g}"]
    print(
        f"{what}: {summary['n_kept']} kept over {summary['n_checkpoints']} checkpoints; "
        f"median R² {summary['median_r2']:.4f}, mean R² {summary['mean_r2']:.4f}, "
        f"fraction R² > {threshold:g}: {frac:.4f}"
    )


@register("linearity", "how linear in step are weights or token log-probs", _linearity_arguments)
def run_linearity(args: argparse.Namespace) -> None:
    out = Path(args.out)
    _check_table_suffix(out)
    checkpoints = parse_checkpoints(args.checkpoints)
    if len(checkpoints) < 3:
        raise ValueError(f"linearity needs at least 3 checkpoints, got {len(checkpoints)}")
    from rlpredict import linearity

    if args.kind == "weights":
        table, summary = linearity.weight_linearity(
            checkpoints,
            fraction=args.fraction,
            min_samples=args.min_samples,
            min_change=args.min_change,
            min_distinct=(
                linearity.MIN_DISTINCT if args.min_distinct is None else args.min_distinct
            ),
            seed=args.seed,
            include=args.include,
            r2_threshold=args.threshold,
        )
        what = (
            f"weights ({summary['n_sampled']} entries sampled from {summary['n_tensors']} tensors)"
        )
    else:
        prompts = read_prompts(args.prompts)
        probes = linearity.generate_probe_responses(
            checkpoints[min(checkpoints)],
            prompts,
            max_new_tokens=args.max_new_tokens,
            do_sample=args.temperature > 0,
            temperature=args.temperature if args.temperature > 0 else 1.0,
            top_p=args.top_p,
            seed=args.seed,
            batch_size=args.batch_size,
            device=args.device,
        )
        table, summary = linearity.logprob_linearity(
            checkpoints,
            probes,
            min_change=args.min_change,
            batch_size=args.batch_size,
            device=args.device,
            r2_threshold=args.threshold,
        )
        what = f"token log-probs ({summary['n_tokens']} tokens of {summary['n_probes']} responses)"
    write_table(table, out)
    _print_linearity(summary, args.threshold, what)
    print(f"wrote {out}: {len(table)} rows")


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
        check_outputs(args)
        check_precision(args)
        args._run(args)
    except (CheckpointError, ValueError, OSError) as e:
        message = " ".join(str(e).split())
        print(f"rlpredict: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
