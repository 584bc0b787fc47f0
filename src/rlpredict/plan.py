"""Which extrapolation jobs a config asks for: methods × windows, with the checkpoints each
uses. Pure Python, so the workflow and the tests share one definition."""

from __future__ import annotations

from dataclasses import dataclass, field

OPERATORS = ("two-point", "lstsq", "expo", "relex", "alpharl", "logits")


@dataclass(frozen=True)
class Job:
    method: str  # e.g. "two-point", "lstsq-free", "expo-a1.5", "relex", "alpharl-oracle", "logits"
    window: str  # the window fraction as written in config, e.g. "0.4"
    steps: tuple[int, ...]  # checkpoints the method reads (0 = base)
    target_step: int
    alpha: float | None = None
    skipped: str | None = None  # why the job cannot run
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def operator(self) -> str:
        """The operator behind the variant: two-point, lstsq, expo, relex, alpharl or logits."""
        return next(op for op in OPERATORS if self.method.startswith(op))

    @property
    def fit(self) -> str:
        return self.method.split("-", 1)[1] if self.operator == "lstsq" else "free"

    @property
    def model_id(self) -> str:
        return (
            f"logits/w{self.window}"
            if self.method == "logits"
            else (f"extrap/{self.method}/w{self.window}")
        )


def window_steps(steps: list[int], fraction: float) -> list[int]:
    """RL checkpoints (not the base) at or before ``fraction`` of the final step."""
    final = steps[-1]
    return [s for s in steps if 0 < s <= fraction * final + 1e-9]


def pair(window: list[int]) -> tuple[int, int]:
    """The two points of two-point/logits extrapolation: first and last window checkpoint, or
    the base and the only one."""
    return (window[0], window[-1]) if len(window) >= 2 else (0, window[-1])


def plan_jobs(steps: list[int], settings: dict) -> list[Job]:
    """Every (method, window) the ``extrapolate`` config section asks for."""
    target = settings.get("target_step") or steps[-1]
    methods = settings["methods"]
    jobs = []
    for fraction in settings["windows"]:
        window = window_steps(steps, float(fraction))
        label = str(fraction)
        if not window:
            jobs.append(Job("all", label, (), target, skipped="no checkpoint inside the window"))
            continue
        if window[-1] >= target:
            raise ValueError(
                f"extrapolate.windows: window {fraction} ends at step {window[-1]}, not before "
                f"the target step {target}"
            )
        t0, t1 = pair(window)
        if methods["two_point"]:
            jobs.append(Job("two-point", label, (t0, t1), target))
        for fit in methods["lstsq"]:
            use = tuple(window) if fit == "free" and len(window) >= 2 else (0, *window)
            jobs.append(Job(f"lstsq-{fit}", label, use, target))
        for alpha in methods["expo_alphas"]:
            jobs.append(Job(f"expo-a{alpha}", label, (0, window[-1]), target, alpha=alpha))
        candidates = []
        if methods["relex"]:
            candidates.append(Job("relex", label, (0, *window), target))
        for goal in methods["alpharl_targets"]:
            candidates.append(Job(f"alpharl-{goal}", label, (0, *window), target))
        for job in candidates:
            if len(window) < 2:
                job = Job(
                    job.method,
                    label,
                    job.steps,
                    target,
                    skipped="needs at least 2 checkpoints inside the window",
                )
            jobs.append(job)
        if methods["logits"]:
            alpha = (target - t0) / (t1 - t0)
            jobs.append(Job("logits", label, (t0, t1), target, alpha=alpha))
    return jobs


def runnable(jobs: list[Job]) -> list[Job]:
    return [job for job in jobs if job.skipped is None]
