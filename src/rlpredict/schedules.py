"""The learning-rate schedule a run was trained with, for the ``lr`` time axis.

With ``extrapolate.time: lr`` a checkpoint's time is the integral of the learning rate up to
its step (``rlpredict.extrapolate.lr_integral``), so the schedule must be the one the run
was trained with, read from the backend that trained it:

- ``trl``: transformers' ``get_scheduler`` as TRL's GRPOTrainer calls it with
  ``train.trl.lr_schedule`` and ``warmup_steps`` over ``train.steps``;
- ``verl``: verl 0.9.1's actor optimizer (``lr_scheduler_type`` constant or cosine,
  ``lr_warmup_steps`` or ``lr_warmup_steps_ratio``, ``min_lr_ratio``, ``num_cycles``,
  ``zero_indexed_step``), as composed from ``train.verl`` with its ``extra_overrides``;
- ``existing``: ``train.existing.lr_schedule`` when set, else the overrides recorded in
  the verl dir's ``rlpredict_run.json`` (runs this workflow launched); anything else is an
  error, never a guess.

Torch-free: the workflow checks the schedule while it parses the Snakefile.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

LR_SCHEDULES = ("constant", "linear", "cosine")
VERL_OPTIM = "actor_rollout_ref.actor.optim."
VERL_TOTAL_STEPS = "trainer.total_training_steps"
# verl 0.9.1's actor optimizer defaults (verl/trainer/config/optim/fsdp.yaml).
VERL_OPTIM_DEFAULTS: dict[str, object] = {
    "lr": 1e-3,
    "lr_warmup_steps": -1,
    "lr_warmup_steps_ratio": 0.0,
    "lr_scheduler_type": "constant",
    "warmup_style": None,
    "min_lr_ratio": 0.0,
    "num_cycles": 0.5,
    "zero_indexed_step": True,
}
RUN_RECORD = "rlpredict_run.json"  # rlpredict.train.verl_backend.FINGERPRINT_FILE


@dataclass(frozen=True)
class LRSchedule:
    """The learning rate of optimizer step ``s`` (0-based): call it with the step.

    ``kind`` is ``constant``, ``linear`` (decay to ``min_lr`` at ``total_steps``) or ``cosine``
    (``num_cycles`` cosine waves, half a wave by default, down to ``min_lr``), each after a
    linear warm-up from 0 over ``warmup_steps``, as transformers'
    ``get_*_schedule_with_warmup`` and verl's ``verl.utils.torch_functional`` schedules.
    ``step_offset`` 1 counts steps from 1 (verl's ``zero_indexed_step: false``). The decay
    stops at ``total_steps``. Build it with :func:`lr_schedule`.
    """

    kind: str
    lr: float
    total_steps: int
    warmup_steps: int = 0
    min_lr: float = 0.0
    num_cycles: float = 0.5
    step_offset: int = 0

    def __call__(self, step: int) -> float:
        lr, warmup_steps, total_steps = self.lr, self.warmup_steps, self.total_steps
        step += self.step_offset
        if step < warmup_steps:
            return lr * step / warmup_steps
        if self.kind == "constant":
            return lr
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if self.kind == "linear":
            shape = 1.0 - progress
        else:
            shape = 0.5 * (1.0 + math.cos(2.0 * math.pi * self.num_cycles * progress))
        return max(self.min_lr, self.min_lr + (lr - self.min_lr) * shape)


def lr_schedule(
    kind: str,
    lr: float,
    total_steps: int,
    warmup_steps: int = 0,
    min_lr: float = 0.0,
    num_cycles: float = 0.5,
    step_offset: int = 0,
) -> LRSchedule:
    """The learning rate used by optimizer step ``s`` (0-based) for a common schedule.

    ``kind`` is ``constant``, ``linear`` (decay to ``min_lr`` at ``total_steps``) or ``cosine``
    (half cosine to ``min_lr`` unless ``num_cycles`` says otherwise), each with a linear
    warm-up from 0 over ``warmup_steps``, as in transformers' ``get_*_schedule_with_warmup``.

    Raises:
        ValueError: unknown kind, ``total_steps <= 0`` or warm-up outside [0, total_steps].
    """
    if kind not in LR_SCHEDULES:
        raise ValueError(f"unknown lr schedule {kind!r}; choose one of {LR_SCHEDULES}")
    if total_steps <= 0 or not 0 <= warmup_steps <= total_steps:
        raise ValueError(
            f"lr schedule needs total_steps > 0 and 0 <= warmup_steps <= total_steps, "
            f"got total_steps={total_steps}, warmup_steps={warmup_steps}"
        )
    return LRSchedule(kind, lr, total_steps, warmup_steps, min_lr, num_cycles, step_offset)


# ---------------------------------------------------------------------------------------
# The schedule each backend trains with


def trl_lr_schedule(trl: dict, steps: int) -> LRSchedule:
    """TRL's schedule: transformers' ``get_scheduler(lr_scheduler_type, num_warmup_steps,
    num_training_steps=max_steps)`` (transformers/optimization.py), where ``constant`` takes
    no warm-up at all and ``constant_with_warmup`` does; ``warmup_steps`` below 1 is a ratio
    of the steps (``TrainingArguments.get_warmup_steps``).

    ``trl`` is ``train.trl`` (``lr``, ``lr_schedule``, ``warmup_steps``); ``steps`` is
    ``train.steps``. Raises ValueError naming ``train.trl.lr_schedule`` for another kind.
    """
    kind = trl.get("lr_schedule", "constant")
    warmup = trl.get("warmup_steps", 0) or 0
    warmup = int(warmup) if warmup >= 1 else math.ceil(steps * warmup)
    if kind == "constant":
        warmup = 0
    kind = kind.removesuffix("_with_warmup")
    if kind not in LR_SCHEDULES:
        raise ValueError(f"train.trl.lr_schedule: {kind!r} has no lr time axis here")
    return lr_schedule(kind, float(trl.get("lr", 1.0)), steps, min(warmup, steps))


def _override_value(text: str) -> object:
    """A value in Hydra's override grammar as Python (numbers, null, booleans, strings)."""
    text = text.strip()
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    lowered = text.lower()
    if lowered in ("null", "none"):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    return text.strip("'\"")


def verl_optim_settings(overrides: Iterable[str]) -> tuple[dict, int | None]:
    """The actor optimizer settings (over verl's defaults) and ``trainer.total_training_steps``
    that verl's ``main_ppo`` overrides set; a later override of a key wins, as in Hydra."""
    optim = dict(VERL_OPTIM_DEFAULTS)
    total = None
    for override in overrides:
        key, sep, value = str(override).lstrip("+").partition("=")
        if not sep:
            continue
        if key.startswith(VERL_OPTIM):
            optim[key.removeprefix(VERL_OPTIM)] = _override_value(value)
        elif key == VERL_TOTAL_STEPS:
            parsed = _override_value(value)
            total = parsed if isinstance(parsed, int) else None
    return optim, total


def verl_lr_schedule(optim: dict, total_steps: int, key: str = "train.verl") -> LRSchedule:
    """verl 0.9.1's actor schedule: ``FSDPEngine._build_lr_scheduler``
    (verl/workers/engine/fsdp/transformer_impl.py) with ``FSDPOptimizerConfig``'s rules
    (verl/workers/config/optimizer.py: a set ``warmup_style`` replaces
    ``lr_scheduler_type``, which is constant or cosine).

    Warm-up steps: ``lr_warmup_steps`` when positive, else ``int(lr_warmup_steps_ratio ×
    total_steps)``. ``constant`` is ``get_constant_schedule_with_warmup``; ``cosine`` is
    ``get_cosine_schedule_with_warmup`` with ``min_lr_ratio``, ``num_cycles`` and
    ``zero_indexed_step`` (verl/utils/torch_functional.py). verl steps the scheduler once per
    training step, after that step's updates (verl/workers/engine_workers.py), so training
    step s (0-based) uses lr(s). ValueError naming ``key`` for a schedule verl refuses.
    """
    settings = {**VERL_OPTIM_DEFAULTS, **optim}
    kind = settings["warmup_style"] or settings["lr_scheduler_type"]
    if kind not in ("constant", "cosine"):
        raise ValueError(
            f"{key}: verl's actor lr_scheduler_type is constant or cosine, not {kind!r}"
        )
    warmup = settings["lr_warmup_steps"]
    if warmup is None or warmup <= 0:
        warmup = int(float(settings["lr_warmup_steps_ratio"]) * total_steps)
    cosine = kind == "cosine"
    return lr_schedule(
        kind,
        float(settings["lr"]),
        total_steps,
        min(int(warmup), total_steps),
        min_lr=float(settings["lr"]) * float(settings["min_lr_ratio"] or 0.0) if cosine else 0.0,
        num_cycles=float(settings["num_cycles"]) if cosine else 0.5,
        step_offset=0 if settings["zero_indexed_step"] or not cosine else 1,
    )


def verl_config_schedule(config: dict) -> LRSchedule:
    """The schedule of ``train.backend: verl``, from the overrides the workflow launches."""
    from rlpredict.train.verl_backend import compose_overrides

    overrides = compose_overrides(
        config, model_path="base", train_files="train.parquet", checkpoint_dir="verl"
    )
    optim, total = verl_optim_settings(overrides)
    return verl_lr_schedule(optim, total or int(config["train"]["steps"]))


def _existing_schedule(existing: dict, steps: list[int]) -> LRSchedule:
    """The schedule of ``train.backend: existing``: the config's, or the verl run's record."""
    key = "train.existing.lr_schedule"
    kind = existing.get("lr_schedule")
    total = existing.get("lr_total_steps") or max(steps)
    if kind is not None:
        try:
            return lr_schedule(
                kind,
                1.0,
                total,
                existing.get("lr_warmup_steps") or 0,
                min_lr=existing.get("lr_min_ratio") or 0.0,
            )
        except ValueError as err:
            raise ValueError(f"{key}: {err}") from None
    verl_dir = existing.get("verl_dir")
    record = Path(verl_dir) / RUN_RECORD if verl_dir else None
    if record is not None and record.is_file():
        optim, recorded_total = verl_optim_settings(json.loads(record.read_text())["overrides"])
        return verl_lr_schedule(optim, recorded_total or total, key)
    where = (
        f"; {record} (written when this workflow trains a verl run) is missing" if record else ""
    )
    raise ValueError(
        f"{key}: extrapolate.time lr needs the learning-rate schedule the run was trained "
        f"with: set it (constant, linear or cosine, with lr_warmup_steps and lr_total_steps) "
        f"or use extrapolate.time step{where}"
    )


def needs_lr_schedule(extrapolate: dict) -> bool:
    """Whether the ``extrapolate`` config places checkpoints on the lr time axis: enabled,
    ``time: lr`` and a weight-space method (every one but AlphaRL, which fits accuracy, and
    logits mixing, which uses steps)."""
    from rlpredict.methods import METHODS

    if not extrapolate.get("enabled", True) or extrapolate.get("time") != "lr":
        return False
    return any(
        METHODS[m].space == "weights" and not METHODS[m].needs_dev_labels
        for m in extrapolate.get("methods", ())
        if m in METHODS
    )


def run_lr_schedule(config: dict, steps: list[int]) -> LRSchedule:
    """The lr schedule the run of a validated workflow config was trained with.

    ``steps`` are the run's checkpoint steps (the last is the final one). Raises ValueError
    starting with the config key to set when the schedule is unknown or not one verl/TRL has.
    """
    train = config["train"]
    backend = train["backend"]
    if backend == "trl":
        return trl_lr_schedule(train["trl"], int(train["steps"]))
    if backend == "verl":
        return verl_config_schedule(config)
    if backend == "existing":
        return _existing_schedule(train["existing"], steps)
    raise ValueError(f"train.backend: no lr schedule known for backend {backend!r}")
