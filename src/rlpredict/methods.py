"""The prediction methods: one spec per method, one name everywhere.

A method's ``name`` is what users see: the ``rlpredict extrapolate`` command or ``--fit``
choice, the job id and model dir of a workflow run (``extrap/<name>/w<window>``; methods
with a variant append it: ``expo-a1.5``, ``alpharl-forecast``), the row of the speedup
table and the figure label. Everything else about a method (which checkpoints it reads,
how many it needs, α or target step, the norm-layer policy, its per-tensor operator) is
declared here once and read by the planner (``rlpredict.plan``), the executors
(``rlpredict.extrapolate``, ``rlpredict.alpharl``) and the CLI.

The workflow config lists these names too (``extrapolate.methods``, read by
:func:`configured_methods`); :func:`old_methods_problem` says what replaces the keys it had
before.

This module imports nothing heavy: the Snakefile reads it at parse time.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

BASE = "base"  # key of the base model (step 0) among a method's inputs


@dataclass(frozen=True)
class Method:
    """One prediction method.

    Attributes:
        name: the one name (CLI choice, job id, table row, figure label).
        summary: one line for help texts.
        family: the operator family the method belongs to (``lstsq`` for both of its fits).
        reads: which window checkpoints it reads: ``ends`` (earliest and latest), ``all`` or
            ``last``.
        needs_base: whether it reads the base model (step 0) besides the window.
        min_window: checkpoints it needs inside the window (besides the base). A method that
            does not need the base counts the base as a checkpoint when the window is short.
        target: what it extrapolates to: ``step`` (a target step), ``step-or-alpha`` (a
            target step or the operator's α instead) or ``accuracy`` (a dev accuracy y*).
        copy_norms: default norm-layer policy: copy tensors whose name contains "norm" from
            the latest checkpoint (True) or extrapolate them like every other tensor.
        fit: the least-squares line the method fits (``free`` or ``anchored`` at the base);
            None where the caller chooses it (the line through RELEX's coefficients).
        space: ``weights`` (writes a model) or ``logits`` (mixes two models' logits when
            evaluating; no model is written).
        cli: the ``rlpredict extrapolate`` sub-command running it, and whether the name is a
            ``--fit`` choice of that command (``weight``) or the command itself.
        variant: what a variant of the method sets, when the workflow plans several:
            ``alpha`` (job id ``expo-a1.5``) or ``accuracy target`` (``alpharl-forecast``);
            None for methods without variants.
        operator: ``module:function`` of the per-tensor operator the executor calls.
    """

    name: str
    summary: str
    family: str
    reads: str
    needs_base: bool
    min_window: int
    target: str
    copy_norms: bool = False
    fit: str | None = "free"
    space: str = "weights"
    cli: str | None = None
    variant: str | None = None
    operator: str | None = None

    def job_id(self, variant: object = None) -> str:
        """The job id / table row of this method with ``variant`` (e.g. ``expo-a1.5``)."""
        if self.variant is None:
            return self.name
        if self.variant == "alpha":
            return f"{self.name}-a{variant}"
        return f"{self.name}-{variant}"

    def model_id(self, job_id: str, window: str) -> str:
        """Where the workflow keeps the job's prediction (relative to ``models/``)."""
        if self.space == "logits":
            return f"logits/w{window}"
        return f"extrap/{job_id}/w{window}"

    @property
    def takes_alpha(self) -> bool:
        """Whether the operator's α can be given instead of a target step."""
        return self.target == "step-or-alpha"

    @property
    def needs_dev_labels(self) -> bool:
        """Whether the method reads dev accuracies of the window checkpoints."""
        return self.target == "accuracy"

    def uses_final_result(self, variant: object = None) -> bool:
        """Whether the variant reads the fully trained model's result (AlphaRL's oracle
        target): such a prediction is not a forecast."""
        return self.needs_dev_labels and variant == "oracle"

    def tensor_operator(self) -> Callable:
        """The per-tensor operator (imported on first use: torch stays out of parse time)."""
        if self.operator is None:
            raise ValueError(f"method {self.name!r} has no per-tensor operator")
        module, _, function = self.operator.partition(":")
        return getattr(importlib.import_module(module), function)


REGISTRY: tuple[Method, ...] = (
    Method(
        "two-point",
        "line through the earliest and latest checkpoint",
        family="two-point",
        reads="ends",
        needs_base=False,
        min_window=2,
        target="step-or-alpha",
        copy_norms=True,
        cli="weight",
        operator="rlpredict.extrapolate:TwoPointOperator",
    ),
    Method(
        "lstsq-free",
        "least-squares line over all checkpoints",
        family="lstsq",
        reads="all",
        needs_base=False,
        min_window=2,
        target="step",
        copy_norms=True,
        cli="weight",
        operator="rlpredict.extrapolate:LeastSquaresOperator",
    ),
    Method(
        "lstsq-anchored",
        "line forced through the base at step 0",
        family="lstsq",
        reads="all",
        needs_base=True,
        min_window=1,
        target="step",
        copy_norms=True,
        fit="anchored",
        cli="weight",
        operator="rlpredict.extrapolate:LeastSquaresOperator",
    ),
    Method(
        "expo",
        "ExPO: θ₁ + α (θ₁ − θ₀) from the base θ₀ and the latest checkpoint θ₁",
        family="expo",
        reads="last",
        needs_base=True,
        min_window=1,
        target="step-or-alpha",
        cli="expo",
        variant="alpha",
        operator="rlpredict.extrapolate:ExpoOperator",
    ),
    Method(
        "relex",
        "RELEX: rank-1-in-time extrapolation of W_t − W_0 per tensor",
        family="relex",
        reads="all",
        needs_base=True,
        min_window=2,
        target="step",
        cli="relex",
        fit=None,
        operator="rlpredict.extrapolate:RelexOperator",
    ),
    Method(
        "alpharl",
        "AlphaRL: rank-1 update fitted against dev accuracy, added to the base",
        family="alpharl",
        reads="all",
        needs_base=True,
        min_window=2,
        target="accuracy",
        cli="alpharl",
        variant="accuracy target",
        operator="rlpredict.alpharl:alpharl_update",
    ),
    Method(
        "logits",
        "two-point extrapolation of the logits of the earliest and latest checkpoint",
        family="logits",
        reads="ends",
        needs_base=False,
        min_window=2,
        target="step-or-alpha",
        space="logits",
    ),
)

METHODS: dict[str, Method] = {m.name: m for m in REGISTRY}
FITS = ("free", "anchored")


def get_method(name: str) -> Method:
    """The method called ``name``; ValueError naming the choices for another name."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(
            f"unknown extrapolation method {name!r}; choose one of {tuple(METHODS)}"
        ) from None


def weight_method(method: str, fit: str = "free") -> Method:
    """The weight-space method for a name or a family with a fit (``lstsq`` + ``anchored``
    is ``lstsq-anchored``), as ``extrapolate_weights`` takes it.

    Raises:
        ValueError: no weight-space method of that name or family, or an unknown fit.
    """
    weight = [m for m in REGISTRY if m.operator and m.target != "accuracy"]
    named = [m for m in weight if method in (m.name, m.family)]
    if not named:
        names = tuple(dict.fromkeys(x for m in weight for x in (m.family, m.name)))
        raise ValueError(f"unknown extrapolation method {method!r}; choose one of {names}")
    if fit not in FITS:
        raise ValueError(f"unknown fit {fit!r}; choose one of {FITS}")
    exact = [m for m in named if m.name == method]
    return exact[0] if exact else next(m for m in named if m.fit == fit)


def cli_methods(command: str) -> tuple[Method, ...]:
    """The methods an ``rlpredict extrapolate`` sub-command runs (its ``--fit`` choices for
    ``weight``)."""
    return tuple(m for m in REGISTRY if m.cli == command)


# The workflow config's ``extrapolate`` section lists methods by their registry names; a
# method with variants has its own settings next to the list, whose ``VARIANT_KEY`` holds
# one value per job: ``expo: {alphas: [1.5]}``, ``alpharl: {targets: [forecast, oracle]}``.
VARIANT_KEY = {"expo": "alphas", "alpharl": "targets"}


def configured_methods(section: dict) -> list[tuple[Method, object]]:
    """(method, variant) for each method the ``extrapolate`` config section asks for, in the
    order of ``section["methods"]`` (the order the jobs are planned and tabulated).

    ``section["methods"]`` lists registry names (``two-point``, ``lstsq-anchored``, …); a
    method with variants runs once per value of its parameter: ExPO per
    ``section["expo"]["alphas"]``, AlphaRL per ``section["alpharl"]["targets"]``.

    Raises:
        ValueError: an unknown method name.
    """
    chosen: list[tuple[Method, object]] = []
    for name in section["methods"]:
        method = get_method(name)
        if name in VARIANT_KEY:
            chosen += [(method, value) for value in section[name][VARIANT_KEY[name]]]
        else:
            chosen.append((method, None))
    return chosen


# ``extrapolate.methods`` before it listed names: a mapping of these keys (with these
# defaults). Read only to say what replaces them.
OLD_METHOD_KEYS = {
    "two_point": True,
    "lstsq": ["free", "anchored"],
    "expo_alphas": [1.5],
    "relex": True,
    "alpharl_targets": ["forecast", "oracle"],
    "logits": True,
}


def _as_list(value: object) -> list:
    return list(value) if isinstance(value, list) else []


def _flow(values: list) -> str:
    """``values`` as a YAML flow sequence: ``[free, anchored]``."""
    return f"[{', '.join(str(v) for v in values)}]"


def old_methods_problem(methods: object) -> str | None:
    """One line for an ``extrapolate.methods`` written with the old keys (a mapping such as
    ``{two_point: true, expo_alphas: [1.5]}``): the keys and the ``extrapolate`` settings
    that replace them, keys left out taking their old defaults. None for anything else (a
    list of names is checked by the schema).

    Example: ``{logits: false, expo_alphas: [2]}`` gives "old keys expo_alphas, logits
    (methods are now listed by name); write extrapolate: {methods: [two-point, lstsq-free,
    lstsq-anchored, expo, relex, alpharl], expo: {alphas: [2]}}".
    """
    if not isinstance(methods, dict):
        return None
    old = {**OLD_METHOD_KEYS, **methods}
    fits, alphas, targets = (
        _as_list(old[key]) for key in ("lstsq", "expo_alphas", "alpharl_targets")
    )
    names = ["two-point"] if old["two_point"] else []
    names += [f"lstsq-{fit}" for fit in fits]
    names += ["expo"] if alphas else []
    names += ["relex"] if old["relex"] else []
    names += ["alpharl"] if targets else []
    names += ["logits"] if old["logits"] else []
    settings = [f"methods: {_flow(names)}"]
    if alphas and alphas != OLD_METHOD_KEYS["expo_alphas"]:
        settings.append(f"expo: {{alphas: {_flow(alphas)}}}")
    if targets and targets != OLD_METHOD_KEYS["alpharl_targets"]:
        settings.append(f"alpharl: {{targets: {_flow(targets)}}}")
    old_form = f"old keys {', '.join(sorted(methods))}" if methods else "the old mapping form"
    return (
        f"{old_form} (methods are now listed by name); write extrapolate: {{{', '.join(settings)}}}"
    )
