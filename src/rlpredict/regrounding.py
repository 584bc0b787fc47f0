"""Periodic re-grounding (RL-Extra): train M real RL steps, extrapolate N steps further along
the segment, restart RL from the extrapolated model, and repeat.

The loop is the one of the RLVR-linearity paper (arXiv 2601.04537, v3 §5 "periodic
re-grounding", v1/v2 "RL-Extra") as the authors' ``scripts/run_rl_extrapolation.sh`` runs it:

1. RL for M real steps from the current model (a fresh verl run of
   ``total_training_steps=M``: new optimizer, new lr schedule, constant lr 1e-6 and no
   warm-up in their script, so "restart" and "continue" give the same learning rates there);
2. two-point weight extrapolation with the segment's start model as t0 and its end as t1 to
   N steps further: W = W_t0 + α (W_t1 − W_t0), α = (M + N) / M;
3. the extrapolated model is the next segment's start; its "virtual" step (what standard RL
   would have needed, were the weights exactly linear in the step) is t0 + M + N.

After k segments the chain has used k·M real RL steps and stands at virtual step k·(M + N):
on exactly linear weights it reaches the weights of real step T in T·M / (M + N) real steps.

Pure Python and pandas (no torch): the workflow plans its jobs with it while parsing the
Snakefile, and its tables from the evaluations.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pandas as pd

LR_MODES = ("restart", "continue")  # restart: the authors' (each segment a fresh run)
OPTIMIZER_MODES = ("reset", "keep")  # reset: the authors' (each segment a fresh run)
DATA_MODES = ("restart", "reshuffle")  # restart: the authors' (the same command per segment)

Weights = TypeVar("Weights")


@dataclass(frozen=True)
class Segment:
    """One segment of a re-grounding chain: M real RL steps, then extrapolation N further.

    Steps are counted in optimizer steps. ``real_*`` count the real RL steps the chain has
    taken (its cost); ``virtual_*`` place the segment's models on the step axis of standard
    RL (what the extrapolation claims to stand for). ``lr_steps`` are the steps of the chain's
    lr schedule that the segment's M optimizer steps use: (0, M) when the schedule restarts
    with each segment, (real_start, real_end) when one schedule over the chain's real steps
    is continued.
    """

    index: int  # 1-based
    m: int
    n: int
    real_start: int
    virtual_start: int
    lr_mode: str = "restart"
    optimizer: str = "reset"
    data: str = "restart"

    @property
    def real_end(self) -> int:
        """Real RL steps taken when the segment's training ends."""
        return self.real_start + self.m

    @property
    def virtual_end(self) -> int:
        """Virtual step of the segment's last trained model (t1)."""
        return self.virtual_start + self.m

    @property
    def virtual_target(self) -> int:
        """Virtual step of the extrapolated model (t' = t0 + M + N)."""
        return self.virtual_start + self.m + self.n

    @property
    def alpha(self) -> float:
        """α of W_t0 + α (W_t1 − W_t0): (M + N) / M."""
        return (self.m + self.n) / self.m

    @property
    def lr_steps(self) -> tuple[int, int]:
        """First and one-past-last step of the lr schedule this segment trains with."""
        return (0, self.m) if self.lr_mode == "restart" else (self.real_start, self.real_end)

    def data_seed(self, seed: int) -> int:
        """The seed the segment's training draws its prompts with: the run's ``seed`` for
        ``restart`` (every segment starts the prompt order over, as the same training
        command run again does), ``seed + index − 1`` for ``reshuffle``."""
        return seed if self.data == "restart" else seed + self.index - 1

    @property
    def keeps_optimizer(self) -> bool:
        """Whether training starts from the previous segment's optimizer state."""
        return self.optimizer == "keep" and self.index > 1


def chain_name(m: int, n: int) -> str:
    """The chain's name and directory: ``m{M}_n{N}``; a changed (M, N) is another chain."""
    return f"m{m}_n{n}"


def parse_chain(name: str) -> tuple[int, int]:
    """(M, N) of a chain name ``m{M}_n{N}``. Raises ValueError for anything else."""
    head, _, tail = name.partition("_")
    if not (head[:1] == "m" and tail[:1] == "n" and head[1:].isdigit() and tail[1:].isdigit()):
        raise ValueError(f"{name!r} is not a re-grounding chain name m{{M}}_n{{N}}")
    return int(head[1:]), int(tail[1:])


def segment_count(m: int, budget: int | None = None, segments: int | None = None) -> int:
    """Segments of M real steps: ``segments`` as given, or as many whole ones as fit in a
    budget of ``budget`` real RL steps. Exactly one of the two must be given.

    Raises:
        ValueError: both or neither given, M < 1, or a budget below M.
    """
    if m < 1:
        raise ValueError(f"regrounding.pairs: M must be at least 1, got {m}")
    if (budget is None) == (segments is None):
        raise ValueError("regrounding: give exactly one of budget (real RL steps) or segments")
    if segments is not None:
        if segments < 1:
            raise ValueError(f"regrounding.segments: must be at least 1, got {segments}")
        return segments
    if budget < m:
        raise ValueError(
            f"regrounding.budget: {budget} real RL steps hold no segment of M = {m} steps"
        )
    return budget // m


def plan_chain(
    m: int,
    n: int,
    *,
    budget: int | None = None,
    segments: int | None = None,
    lr_mode: str = "restart",
    optimizer: str = "reset",
    data: str = "restart",
) -> list[Segment]:
    """The segments of one re-grounding chain (M, N), in order.

    Args:
        m: real RL steps per segment (M ≥ 1).
        n: steps the extrapolation adds beyond each segment (N ≥ 0; N = 0 is standard RL cut
            into segments).
        budget: real RL steps the chain may use (whole segments only), or
        segments: the number of segments.
        lr_mode: ``restart`` (each segment trains with the schedule over its own M steps: the
            authors' fresh verl run per segment) or ``continue`` (one schedule over the
            chain's real steps, the segment taking its part).
        optimizer: ``reset`` (fresh optimizer state per segment: the authors') or ``keep``
            (each segment starts from the previous one's optimizer state).
        data: ``restart`` (each segment draws prompts from the start of the run's order, as
            the authors' same verl command per segment does: every segment trains on the
            same first M batches) or ``reshuffle`` (segment k draws with seed + k − 1).

    Raises:
        ValueError: naming the ``regrounding`` key at fault.
    """
    if n < 0:
        raise ValueError(f"regrounding.pairs: N must be at least 0, got {n}")
    if lr_mode not in LR_MODES:
        raise ValueError(f"regrounding.lr_schedule: {lr_mode!r} is not one of {LR_MODES}")
    if optimizer not in OPTIMIZER_MODES:
        raise ValueError(f"regrounding.optimizer: {optimizer!r} is not one of {OPTIMIZER_MODES}")
    if data not in DATA_MODES:
        raise ValueError(f"regrounding.data: {data!r} is not one of {DATA_MODES}")
    count = segment_count(m, budget, segments)
    return [
        Segment(k + 1, m, n, k * m, k * (m + n), lr_mode, optimizer, data) for k in range(count)
    ]


def extrapolate_segment(
    segment: Segment,
    start: str | Path,
    end: str | Path,
    out: str | Path,
    *,
    progress: bool = True,
) -> Path:
    """Write one segment's extrapolated model to ``out`` (an fp32 HF dir) and return it.

    Two-point (rlpredict.extrapolate.two_point) with t0 = the segment's start model at its
    virtual step, t1 = its end M real steps later, to t' = t0 + M + N: α = (M + N) / M; norm
    tensors are copied from the end, as in every two-point extrapolation. With N = 0 (standard
    RL cut into segments) α = 1 and the model is the end's weights. Source: the authors'
    scripts/run_rl_extrapolation.sh (first = t0, second = t0 + M, target = t0 + M + N).

    Raises:
        CheckpointError: unreadable, mismatched or non-finite start or end models.
    """
    from rlpredict.extrapolate import extrapolate_weights

    checkpoints = {segment.virtual_start: Path(start), segment.virtual_end: Path(end)}
    # N = 0: t' = t1 is not past the window, so the step is given as α = 1 instead
    target, alpha = (None, 1.0) if segment.n == 0 else (segment.virtual_target, None)
    return extrapolate_weights(
        "two-point", checkpoints, target, out, alpha=alpha, progress=progress
    )


def chain_real_steps(chain: Sequence[Segment]) -> int:
    """Real RL steps of the whole chain (the length of a continued lr schedule)."""
    return chain[-1].real_end if chain else 0


def verl_segment_config(config: dict, segment: Segment, chain_steps: int) -> dict:
    """The config (``run``, ``seed``, ``train``) of the verl run that trains one segment: a
    fresh run of ``train.steps = M`` from the segment's start model, saving every
    ``train.save_every`` steps (at most M) and at its end, with the segment's data seed
    (:meth:`Segment.data_seed`).

    lr schedule: ``restart`` is that run's own schedule over its M steps (the authors').
    ``continue`` needs the segment's part of one schedule over the chain's ``chain_steps``
    real steps; a fresh verl run cannot start a schedule part-way, so this works only where
    the part is a schedule of its own: constant lr, with the warm-up inside the first
    segment (later segments run without warm-up). Every step's lr is checked against the
    chain's (rlpredict.schedules.verl_config_schedule).

    Raises:
        ValueError: naming ``regrounding.lr_schedule`` when verl cannot follow the chain's
            schedule, or the ``train.verl`` key of an invalid setting.
    """
    from rlpredict.schedules import verl_config_schedule

    train = config["train"]
    seg_train = {
        **train,
        "steps": segment.m,
        "save_every": min(int(train["save_every"]), segment.m),
    }
    if segment.lr_mode == "continue" and segment.index > 1:
        seg_train["verl"] = {**train["verl"], "lr_warmup_steps": 0}
    seed = segment.data_seed(config["seed"])
    seg_config = {"run": config["run"], "seed": seed, "train": seg_train}
    if segment.lr_mode == "continue":
        chain = verl_config_schedule({**seg_config, "train": {**train, "steps": chain_steps}})
        own = verl_config_schedule(seg_config)
        for s in range(segment.m):
            wanted, got = chain(segment.real_start + s), own(s)
            if not math.isclose(wanted, got, rel_tol=1e-9, abs_tol=0.0):
                raise ValueError(
                    f"regrounding.lr_schedule: continue cannot be trained with verl here: real "
                    f"step {segment.real_start + s} of chain (M, N) = ({segment.m}, "
                    f"{segment.n}) should use lr {wanted:.4g}, a fresh verl run for its "
                    f"segment {segment.index} uses {got:.4g} (verl starts "
                    "every run at the start of its schedule; continue works with a constant "
                    "lr whose warm-up fits in the first segment); use restart"
                )
    return seg_config


def run_chain(
    start: Weights,
    chain: Sequence[Segment],
    train: Callable[[Weights, Segment], Weights],
    extrapolate: Callable[[Weights, Weights, float], Weights],
) -> list[tuple[Segment, Weights, Weights]]:
    """Run a chain in memory: for each segment ``end = train(start, segment)`` (M real steps
    from ``start``), then ``start = extrapolate(start, end, segment.alpha)`` (two-point, t0 the
    segment's start, t1 its end). Returns (segment, end, extrapolated) per segment. The
    workflow runs the same loop as Snakemake jobs; this is its reference."""
    out = []
    for segment in chain:
        end = train(start, segment)
        start = extrapolate(start, end, segment.alpha)
        out.append((segment, end, start))
    return out


def real_steps_to_virtual(virtual_step: int, m: int, n: int) -> float:
    """Real RL steps a chain (M, N) needs to reach ``virtual_step`` on exactly linear weights:
    virtual_step · M / (M + N)."""
    return virtual_step * m / (m + n)


# --------------------------------------------------------------------------------------
# Tables: accuracy against real RL steps, steps to target accuracies, equal budgets

TARGET_GAIN_FRACTIONS = (0.5, 0.75, 0.9, 1.0)  # default targets: base + f (final − base)
STANDARD = "standard RL"


def standard_curve(
    accuracy: Mapping[int, tuple[float, float]],
    train_seconds: float,
    final_step: int,
    eval_seconds: Mapping[int, float] | None = None,
) -> list[dict]:
    """Curve rows of standard RL: one per checkpoint step → (accuracy, stderr). ``seconds``
    is training time to the step, the run's measured time per step times the step;
    ``seconds_with_eval`` adds the evaluation seconds (``eval_seconds`` per step) of every
    checkpoint after the base up to the step (NaN when not given)."""
    per_step = train_seconds / final_step
    rows = []
    evaluated = 0.0
    for step, (acc, se) in sorted(accuracy.items()):
        trained = step * per_step if step > 0 else 0.0  # the base costs nothing, known or not
        if step > 0:
            evaluated += math.nan if eval_seconds is None else eval_seconds[step]
        rows.append(
            {
                "series": STANDARD,
                "chain": "standard",
                "m": None,
                "n": None,
                "point": "checkpoint",
                "real_step": step,
                "virtual_step": step,
                "accuracy": acc,
                "stderr": se,
                "seconds": trained,
                "seconds_with_eval": trained + evaluated,
            }
        )
    return rows


def chain_curve(
    chain: Sequence[Segment],
    base: tuple[float, float],
    ends: Sequence[tuple[float, float]],
    extrapolated: Sequence[tuple[float, float]],
    train_seconds: Sequence[float],
    extrapolate_seconds: Sequence[float],
    eval_seconds: Sequence[tuple[float, float]] | None = None,
) -> list[dict]:
    """Curve rows of one chain: two series, its segment ends and its extrapolated models,
    each starting at the base (real step 0), against the real RL steps taken.

    ``ends``/``extrapolated`` are (accuracy, stderr) per segment; ``seconds`` of a point is
    the training time of the segments up to it plus the time of the extrapolations made
    before it (the segment end: those of the earlier segments; the extrapolated model: its
    own too): the cost of making the model, as for standard RL's checkpoints, which need no
    evaluation to proceed either. ``seconds_with_eval`` adds the evaluation seconds
    (``eval_seconds``: (end, extrapolated) per segment) of every model of the chain made up
    to that point, the extra evaluations re-grounding adds to a run (NaN when not given).
    """
    m, n = chain[0].m, chain[0].n
    name = chain_name(m, n)
    evals = eval_seconds or [(math.nan, math.nan)] * len(chain)
    rows = []
    for point, results in (("segment end", ends), ("extrapolated", extrapolated)):
        series = f"(M, N) = ({m}, {n}) {point}"
        rows.append(_row(series, name, m, n, point, 0, 0, base, 0.0, 0.0))
        for k, segment in enumerate(chain):
            seconds = sum(train_seconds[: k + 1]) + sum(extrapolate_seconds[:k])
            evaluated = sum(sum(e) for e in evals[:k]) + evals[k][0]
            virtual = segment.virtual_end
            if point == "extrapolated":
                seconds += extrapolate_seconds[k]
                evaluated += evals[k][1]
                virtual = segment.virtual_target
            rows.append(
                _row(
                    series,
                    name,
                    m,
                    n,
                    point,
                    segment.real_end,
                    virtual,
                    results[k],
                    seconds,
                    seconds + evaluated,
                )
            )
    return rows


def _row(series, chain, m, n, point, real, virtual, result, seconds, with_eval) -> dict:
    return {
        "series": series,
        "chain": chain,
        "m": m,
        "n": n,
        "point": point,
        "real_step": real,
        "virtual_step": virtual,
        "accuracy": result[0],
        "stderr": result[1],
        "seconds": seconds,
        "seconds_with_eval": with_eval,
    }


def default_targets(base: float, final: float) -> list[float]:
    """Target accuracies when none are configured: base + f·(final − base) for f in
    ``TARGET_GAIN_FRACTIONS``, i.e. half, three quarters, 90 % and all of standard RL's
    gain (one target, the base's accuracy, when standard RL gains nothing)."""
    return sorted({base + f * max(0.0, final - base) for f in TARGET_GAIN_FRACTIONS})


def first_reaching(curve: pd.DataFrame, target: float) -> pd.Series | None:
    """The first row (by real step) of one series whose accuracy is at least ``target``."""
    hits = curve[curve["accuracy"] >= target - 1e-12].sort_values("real_step")
    return hits.iloc[0] if len(hits) else None


def steps_to_targets(curves: pd.DataFrame, targets: Sequence[float]) -> pd.DataFrame:
    """Per series and target accuracy: the real RL steps (and seconds) it first reaches the
    target, and its speedups over standard RL: ``speedup`` = standard RL's steps / the
    series' steps (the paper's, e.g. 1100 / 180 = 6.1×), ``cost_aware_speedup`` = standard
    RL's seconds / the series' seconds (extrapolation time included),
    ``cost_aware_speedup_with_eval`` the same with every evaluation of each series' models
    up to that point added (``seconds_with_eval``). NaN where a series never reaches the
    target within its budget."""
    rows = []
    standard = curves[curves["series"] == STANDARD]
    for target in targets:
        ref = first_reaching(standard, target)
        for series, curve in curves.groupby("series", sort=False):
            hit = first_reaching(curve, target)
            row = {"series": series, "chain": curve["chain"].iloc[0], "target": target}
            row["real_steps"] = math.nan if hit is None else hit["real_step"]
            for column in ("seconds", "seconds_with_eval", "accuracy"):
                row[column] = math.nan if hit is None else hit.get(column, math.nan)
            both = hit is not None and ref is not None
            for column, source in (
                ("speedup", "real_step"),
                ("cost_aware_speedup", "seconds"),
                ("cost_aware_speedup_with_eval", "seconds_with_eval"),
            ):
                row[column] = (
                    _ratio(ref.get(source, math.nan), hit.get(source, math.nan))
                    if both
                    else math.nan
                )
            rows.append(row)
    return pd.DataFrame(rows)


def _ratio(a: float, b: float) -> float:
    if math.isnan(a) or math.isnan(b):
        return math.nan
    if b == 0:
        return 1.0 if a == 0 else math.inf
    return a / b


def equal_budget(curves: pd.DataFrame) -> pd.DataFrame:
    """Accuracy at equal real RL steps (the paper's Table 2): for every step > 0 where both a
    re-grounding series and standard RL have a model, both accuracies and their difference
    with its s.e. (the accuracies taken as independent)."""
    standard = curves[curves["series"] == STANDARD].set_index("real_step")
    rows = []
    for series, curve in curves[curves["series"] != STANDARD].groupby("series", sort=False):
        for _, point in curve[curve["real_step"] > 0].iterrows():
            step = point["real_step"]
            if step not in standard.index:
                continue
            ref = standard.loc[step]
            rows.append(
                {
                    "series": series,
                    "chain": point["chain"],
                    "budget": step,
                    "accuracy": point["accuracy"],
                    "standard_accuracy": ref["accuracy"],
                    "difference": point["accuracy"] - ref["accuracy"],
                    "difference_stderr": math.hypot(point["stderr"], ref["stderr"]),
                }
            )
    return pd.DataFrame(rows)


def regrounding_table(curves: pd.DataFrame, targets: Sequence[float]) -> pd.DataFrame:
    """The long table ``tables/regrounding.csv``: the ``curve`` rows (accuracy against real
    RL steps), the ``steps_to_target`` rows and the ``equal_budget`` rows, told apart by
    the ``table`` column."""
    parts = [
        curves.assign(table="curve"),
        steps_to_targets(curves, targets).assign(table="steps_to_target"),
        equal_budget(curves).assign(table="equal_budget"),
    ]
    table = pd.concat(parts, ignore_index=True)
    return table[["table", *[c for c in table.columns if c != "table"]]]


def regrounding_markdown(table: pd.DataFrame) -> str:
    """The three parts of :func:`regrounding_table` as Markdown sections."""
    sections = {
        "steps_to_target": (
            "Real RL steps to reach each target accuracy; speedup = standard RL's steps / "
            "the series' steps; cost-aware speedup uses training plus extrapolation seconds, "
            "the last column also every evaluation of the series' models up to there",
            [
                "series",
                "target",
                "real_steps",
                "accuracy",
                "speedup",
                "seconds",
                "cost_aware_speedup",
                "seconds_with_eval",
                "cost_aware_speedup_with_eval",
            ],
        ),
        "equal_budget": (
            "Accuracy at equal real RL steps (difference to standard RL, ± s.e.)",
            [
                "series",
                "budget",
                "accuracy",
                "standard_accuracy",
                "difference",
                "difference_stderr",
            ],
        ),
        "curve": (
            "Accuracy against real RL steps",
            [
                "series",
                "real_step",
                "virtual_step",
                "accuracy",
                "stderr",
                "seconds",
                "seconds_with_eval",
            ],
        ),
    }
    out = []
    for name, (title, columns) in sections.items():
        part = table[table["table"] == name][columns]
        part = part.astype(object).where(part.notna(), None)  # shown as "–"
        markdown = part.to_markdown(index=False, floatfmt=".4g", missingval="–")
        out += [f"## {title}", "", NOTES[name], "", markdown, ""]
    return "\n".join(out)


NOTES = {
    "steps_to_target": (
        "target: an accuracy to reach (by default base + ½, ¾, 90 % and all of standard "
        "RL's gain); real_steps: the first real RL step at which the series' model reaches "
        "it (– : not within the chain's budget); accuracy: that model's; seconds: training "
        "plus extrapolation seconds up to that model; seconds_with_eval: also every "
        "evaluation of the series' models up to it; speedups: standard RL's value / the "
        "series' value. Standard RL is seen at its checkpoints (every train.save_every "
        "steps) and a chain every M steps: where M is smaller, the chain's crossing is "
        "timed more finely, in its favour. Training seconds are TRL's clock of each run "
        "(model loading included) or the sum of verl's timing_s/step, which leaves out each "
        "run's start-up (Ray, model loading): with verl a chain pays one start-up per "
        "segment that its seconds do not show."
    ),
    "equal_budget": (
        "budget: real RL steps taken; accuracy and standard_accuracy at that budget; "
        "difference = accuracy − standard_accuracy, its s.e. from both taken as "
        "independent (both are scored on the same test problems, so it is conservative)."
    ),
    "curve": (
        "real_step: RL steps actually trained; virtual_step: where the model stands on "
        "standard RL's step axis if the weights were exactly linear (segment k of (M, N) ends "
        "at (k − 1)(M + N) + M and extrapolates to k(M + N)); seconds, seconds_with_eval: "
        "cumulative, as above."
    ),
}
