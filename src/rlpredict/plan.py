"""Which extrapolation jobs a config asks for: methods × windows, with the checkpoints each
uses. Pure Python, so the workflow and the tests share one definition; what each method
reads and needs comes from the method registry (``rlpredict.methods``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from rlpredict.methods import METHODS, Method, configured_methods


@dataclass(frozen=True)
class Job:
    method: str  # job id: the method's name, plus its variant ("expo-a1.5", "alpharl-oracle")
    window: str  # the window fraction as written in config, e.g. "0.4"
    steps: tuple[int, ...]  # checkpoints the method reads (0 = base)
    target_step: int
    alpha: float | None = None
    skipped: str | None = None  # why the job cannot run
    extra: dict = field(default_factory=dict, compare=False)
    # the registry name ("" for the placeholder of an empty window) and the variant; not in
    # repr, which the workflow records as a parameter of the jobs planned
    name: str = field(default="", repr=False, compare=False)
    variant: object = field(default=None, repr=False, compare=False)

    @property
    def spec(self) -> Method:
        """The method's registry entry."""
        return METHODS[self.name]

    @property
    def operator(self) -> str:
        """The operator family behind the job: two-point, lstsq, expo, relex, alpharl or
        logits."""
        return self.spec.family

    @property
    def fit(self) -> str:
        """The least-squares line of the method: ``free`` or ``anchored``."""
        return self.spec.fit or "free"

    @property
    def needs_dev_labels(self) -> bool:
        """Whether the job reads the dev accuracies of its checkpoints (AlphaRL)."""
        return self.name in METHODS and self.spec.needs_dev_labels

    @property
    def uses_final_result(self) -> bool:
        """Whether the prediction reads the fully trained model's result (not a forecast)."""
        return self.name in METHODS and self.spec.uses_final_result(self.variant)

    @property
    def writes_model(self) -> bool:
        """Whether the job writes a model (weight space) rather than mixing logits."""
        return self.name in METHODS and self.spec.space == "weights"

    @property
    def model_id(self) -> str:
        if self.name not in METHODS:  # the placeholder of an empty window
            return f"extrap/{self.method}/w{self.window}"
        return self.spec.model_id(self.method, self.window)


def window_steps(steps: list[int], fraction: float) -> list[int]:
    """RL checkpoints (not the base) at or before ``fraction`` of the final step."""
    final = steps[-1]
    return [s for s in steps if 0 < s <= fraction * final + 1e-9]


def pair(window: list[int]) -> tuple[int, int]:
    """The two points of two-point/logits extrapolation: first and last window checkpoint, or
    the base and the only one."""
    return (window[0], window[-1]) if len(window) >= 2 else (0, window[-1])


def job_steps(method: Method, window: list[int]) -> tuple[int, ...]:
    """The checkpoints (0 = base) ``method`` reads for a non-empty ``window``.

    A method needing the base reads it besides the window; one that does not counts the
    base as a checkpoint when the window holds fewer than its minimum.
    """
    chosen = {
        "ends": [window[0], window[-1]] if len(window) >= 2 else window,
        "all": window,
        "last": [window[-1]],
    }[method.reads]
    if method.needs_base or len(window) < method.min_window:
        return (0, *chosen)
    return tuple(chosen)


def plan_job(method: Method, variant: object, window: list[int], label: str, target: int) -> Job:
    """The job of ``method`` (with ``variant``) on a non-empty ``window`` ending before
    ``target``; skipped with a reason when the window is too short for it."""
    steps = job_steps(method, window)
    alpha = None
    if method.variant == "alpha":
        alpha = variant
    elif method.space == "logits":  # the evaluation mixes logits at α, planned here
        t0, t1 = steps
        alpha = (target - t0) / (t1 - t0)
    skipped = None
    if method.needs_base and len(window) < method.min_window:
        skipped = f"needs at least {method.min_window} checkpoints inside the window"
    return Job(
        method.job_id(variant),
        label,
        steps,
        target,
        alpha=alpha,
        skipped=skipped,
        name=method.name,
        variant=variant,
    )


def plan_jobs(steps: list[int], settings: dict) -> list[Job]:
    """Every (method, window) the ``extrapolate`` config section asks for."""
    target = settings.get("target_step") or steps[-1]
    methods = configured_methods(settings)
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
        jobs += [plan_job(method, variant, window, label, target) for method, variant in methods]
    return jobs


def runnable(jobs: list[Job]) -> list[Job]:
    return [job for job in jobs if job.skipped is None]
