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

Pure Python (no torch): the workflow plans its jobs with it while parsing the Snakefile.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

LR_MODES = ("restart", "continue")  # restart: the authors' (each segment a fresh run)
OPTIMIZER_MODES = ("reset", "keep")  # reset: the authors' (each segment a fresh run)

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

    Raises:
        ValueError: naming the ``regrounding`` key at fault.
    """
    if n < 0:
        raise ValueError(f"regrounding.pairs: N must be at least 0, got {n}")
    if lr_mode not in LR_MODES:
        raise ValueError(f"regrounding.lr_schedule: {lr_mode!r} is not one of {LR_MODES}")
    if optimizer not in OPTIMIZER_MODES:
        raise ValueError(f"regrounding.optimizer: {optimizer!r} is not one of {OPTIMIZER_MODES}")
    count = segment_count(m, budget, segments)
    return [Segment(k + 1, m, n, k * m, k * (m + n), lr_mode, optimizer) for k in range(count)]


def chain_real_steps(chain: Sequence[Segment]) -> int:
    """Real RL steps of the whole chain (the length of a continued lr schedule)."""
    return chain[-1].real_end if chain else 0


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
