"""RLVR training with TRL's GRPOTrainer on the CPU (or one GPU).

TRL's own checkpoints (with optimizer state, for resuming) live in a state dir that the
workflow does not declare as output, so an interrupted run resumes instead of starting over;
model-only fp32 HF dirs are exported to ``checkpoints/step_{N}/`` when training ends.

A run resumes from the newest *complete* checkpoint (see :func:`checkpoint_problem`): one
cut short while it was being written is skipped, named in the log, and written again. It
resumes only the same run: same settings, seed, lr schedule and start model, whose weight
files must be the ones it started from (:func:`weight_files_stamp`); otherwise it starts over. The
wall time of every attempt is carried across resumes in the checkpoints' trainer state
(:class:`TrainingClock`) and logged as ``train_seconds`` in the training history.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
import zipfile
from pathlib import Path

import torch
from safetensors import safe_open
from torch.optim.lr_scheduler import LambdaLR
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from transformers.trainer_callback import ExportableState

from rlpredict.atomic import atomic_output_file, atomic_write_text
from rlpredict.checkpoints import atomic_output_dir
from rlpredict.model import score_completion
from rlpredict.schedules import LRSchedule
from rlpredict.tasks.prompts import is_chat_task
from rlpredict.tasks.registry import verifier

log = logging.getLogger(__name__)

STATE_FINGERPRINT = "rlpredict_run.json"
TRAINER_STATE = "trainer_state.json"
# What Trainer reads back on resume besides the weights and trainer_state.json; a missing
# optimizer, scheduler or RNG file is silently replaced by a fresh one, so all are required.
RESUME_ARCHIVES = ("optimizer.pt", "scheduler.pt")
MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)
SHARD_GLOB = "model-*-of-*.safetensors"


def make_reward(tokenizer, task: str = "arithmetic"):
    """The task's verifier as a GRPO reward.

    arithmetic: the completion must end with EOS (an answer cut off scores 0). A chat task:
    the verifier reads the assistant's reply as lm-eval returns it at evaluation (the text
    before the end-of-turn token), so reward and evaluation score the same text alike.
    """
    if is_chat_task(task):
        verify = verifier(task)

        def chat_reward(completions, answer, **kwargs) -> list[float]:
            return [
                verify(reply_text(completion), ans)
                for completion, ans in zip(completions, answer, strict=True)
            ]

        chat_reward.__name__ = f"{task}_reward"
        return chat_reward

    def arithmetic_reward(completion_ids, answer, **kwargs) -> list[float]:
        return [
            score_completion(tokenizer, ids, ans)
            for ids, ans in zip(completion_ids, answer, strict=True)
        ]

    return arithmetic_reward


def reply_text(completion) -> str:
    """The text of a GRPO completion: a string, or TRL's conversational form (a list with
    one assistant message)."""
    if isinstance(completion, str):
        return completion
    return "".join(message["content"] for message in completion)


def training_rows(rows: list[dict], task: str = "arithmetic") -> list[dict]:
    """GRPO dataset rows for split rows ``{"prompt", "answer"}``.

    A chat task's prompt becomes one user message, which TRL renders with the tokenizer's
    chat template (``add_generation_prompt=True``, no added special tokens): the same text
    as :func:`rlpredict.tasks.prompts.render_prompt` and lm-eval's ``apply_chat_template``.
    """
    if is_chat_task(task):
        return [
            {"prompt": [{"role": "user", "content": r["prompt"]}], "answer": r["answer"]}
            for r in rows
        ]
    return [{"prompt": r["prompt"], "answer": r["answer"]} for r in rows]


class KeepOnlyLatestOptimizer(TrainerCallback):
    """Drops optimizer/scheduler state from all but the newest checkpoint: resuming needs only
    the newest, and the analyses need only the weights."""

    def on_save(self, args, state, control, **kwargs):
        for ckpt in sorted_checkpoints(Path(args.output_dir))[:-1]:
            for name in ("optimizer.pt", "scheduler.pt"):
                (ckpt / name).unlink(missing_ok=True)


def sorted_checkpoints(state_dir: Path) -> list[Path]:
    found = [p for p in state_dir.glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", p.name)]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def _is_torch_archive(path: Path) -> bool:
    """A ``torch.save`` file written to the end (a zip whose central directory, written
    last, is there)."""
    return path.is_file() and zipfile.is_zipfile(path)


def _weights_problem(ckpt: Path) -> str | None:
    index = ckpt / "model.safetensors.index.json"
    try:
        files = (
            sorted(set(json.loads(index.read_text())["weight_map"].values()))
            if index.exists()
            else ["model.safetensors"]
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"{index.name} unreadable"
    for name in files:
        try:
            with safe_open(ckpt / name, framework="pt"):
                pass
        except Exception:  # missing, or a header/size mismatch: cut short
            return f"{name} missing or truncated"
    return None


def checkpoint_problem(ckpt: str | Path) -> str | None:
    """Why Trainer cannot resume from ``ckpt`` as it was saved, or None when it is complete.

    Complete means every file ``Trainer`` reads when resuming, each written to the end:
    ``trainer_state.json`` (written last, parsed), ``optimizer.pt``, ``scheduler.pt`` and
    ``rng_state*.pth`` (torch archives), ``config.json`` and the safetensors weights
    (single file or index with its shards, headers matching the file sizes).
    """
    ckpt = Path(ckpt)
    try:
        json.loads((ckpt / TRAINER_STATE).read_text())["global_step"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{TRAINER_STATE} missing or unreadable"
    for name in RESUME_ARCHIVES:
        if not _is_torch_archive(ckpt / name):
            return f"{name} missing or truncated"
    rng = sorted(ckpt.glob("rng_state*.pth"))
    if not rng or not all(_is_torch_archive(p) for p in rng):
        return "rng_state*.pth missing or truncated"
    try:
        json.loads((ckpt / "config.json").read_text())
    except (OSError, ValueError):
        return "config.json missing or unreadable"
    return _weights_problem(ckpt)


def resume_checkpoint(state_dir: str | Path) -> Path | None:
    """The newest complete checkpoint in ``state_dir`` (None if there is none). Newer,
    incomplete ones (a save cut short) are logged with the reason and removed: training
    writes them again."""
    for ckpt in reversed(sorted_checkpoints(Path(state_dir))):
        problem = checkpoint_problem(ckpt)
        if problem is None:
            return ckpt
        log.warning(
            "skipping incomplete checkpoint %s (%s); it will be written again", ckpt, problem
        )
        shutil.rmtree(ckpt)
    return None


def weight_files_stamp(model_dir: Path) -> dict[str, list[int]]:
    """Size and modification time (ns) of each weight file of an HF dir: a start model
    rewritten since an interrupted run (an upstream job run again) makes its saved state
    another run's, even at the same path."""
    files = [model_dir / "model.safetensors", *sorted(model_dir.glob(SHARD_GLOB))]
    stats = {f.name: f.stat() for f in files if f.is_file()}
    return {name: [st.st_size, st.st_mtime_ns] for name, st in stats.items()}


def prepare_state_dir(state_dir: Path, fingerprint: dict) -> Path | None:
    """Returns the checkpoint to resume from, if the state dir holds this very run."""
    marker = state_dir / STATE_FINGERPRINT
    if state_dir.exists():
        previous = json.loads(marker.read_text()) if marker.exists() else None
        if previous != fingerprint:
            log.warning("%s holds another run's state; starting over", state_dir)
            shutil.rmtree(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(marker, json.dumps(fingerprint, indent=1, sort_keys=True))
    return resume_checkpoint(state_dir)


class SegmentSchedule(TrainerCallback):
    """Trains with an explicit lr schedule: optimizer step ``s`` of this run uses
    ``schedule(offset + s)``.

    Replaces the multiplier of the LambdaLR that transformers' ``get_scheduler`` builds (so
    the logged ``learning_rate`` is the one used) once the trainer has made it, and after a
    resume has loaded its step count. A re-grounding segment continuing one schedule over
    the chain's real steps passes the chain's schedule and the segment's first real step.
    """

    def __init__(self, schedule: LRSchedule, offset: int = 0):
        self.schedule, self.offset = schedule, int(offset)

    def factor(self, step: int) -> float:
        return self.schedule(self.offset + step) / self.schedule.lr

    def on_train_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kw):
        if not isinstance(lr_scheduler, LambdaLR):
            raise RuntimeError(
                f"an explicit lr schedule needs a LambdaLR, TRL built {type(lr_scheduler)}"
            )
        lr_scheduler.lr_lambdas = [self.factor] * len(optimizer.param_groups)
        for group, base_lr in zip(optimizer.param_groups, lr_scheduler.base_lrs, strict=True):
            group["lr"] = base_lr * self.factor(lr_scheduler.last_epoch)
        lr_scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


class StartOptimizerState(TrainerCallback):
    """Starts a fresh run from another run's optimizer state (``optimizer.pt`` of TRL's
    checkpoint): the re-grounding option that keeps Adam's moments across segments. Only the
    per-parameter state is taken; the param groups (lr as this run's schedule set it for its
    first step, betas, weight decay) stay this run's. Not used when the run resumes from its
    own checkpoint, whose state the trainer loads."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        if not _is_torch_archive(self.path):
            raise FileNotFoundError(f"{self.path}: optimizer state missing or truncated")
        saved = torch.load(self.path, map_location="cpu", weights_only=True)
        groups = optimizer.state_dict()["param_groups"]
        optimizer.load_state_dict({"state": saved["state"], "param_groups": groups})
        log.info("optimizer moments taken from %s", self.path)


class TrainingClock(TrainerCallback, ExportableState):
    """Wall seconds spent training, summed over every attempt of a run.

    Saved in each checkpoint's ``trainer_state.json`` (``stateful_callbacks``), read back
    by :meth:`resumed_from`, and written into every logged history row as
    ``train_seconds`` (with ``train_attempts``). The final step is always logged.
    """

    def __init__(self, seconds: float = 0.0, attempts: int = 0):
        self.carried, self.attempts = float(seconds), int(attempts) + 1
        self.start = time.perf_counter()

    @classmethod
    def resumed_from(cls, ckpt: Path | None) -> TrainingClock:
        """A clock continuing the count saved in ``ckpt`` (a fresh one for None)."""
        if ckpt is None:
            return cls()
        saved = json.loads((ckpt / TRAINER_STATE).read_text()).get("stateful_callbacks", {})
        if cls.__name__ not in saved:
            log.warning("%s: no training time saved; the time before it is not counted", ckpt)
            return cls()
        return cls(**saved[cls.__name__]["args"])

    def seconds(self) -> float:
        """Wall seconds of the earlier attempts (to the resumed checkpoint) and this one."""
        return self.carried + time.perf_counter() - self.start

    def state(self) -> dict:
        return {"args": {"seconds": self.seconds(), "attempts": self.attempts}, "attributes": {}}

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_log = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        state.log_history[-1].update(train_seconds=self.seconds(), train_attempts=self.attempts)


def grpo_config(settings: dict, state_dir: Path, seed: int, threads: int):
    from trl import GRPOConfig

    return GRPOConfig(
        output_dir=str(state_dir),
        max_steps=settings["steps"],
        save_strategy="steps",
        save_steps=settings["save_every"],
        per_device_train_batch_size=settings["prompts_per_step"] * settings["num_generations"],
        gradient_accumulation_steps=1,
        num_generations=settings["num_generations"],
        max_completion_length=settings["max_completion_length"],
        temperature=settings["temperature"],
        learning_rate=settings["lr"],
        lr_scheduler_type=settings["lr_schedule"],
        warmup_steps=settings.get("warmup_steps", 0),
        optim=settings["optimizer"],
        weight_decay=0.0,
        beta=settings["kl_beta"],
        loss_type=settings["loss_type"],
        seed=seed,
        data_seed=seed,
        use_cpu=not torch.cuda.is_available(),
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        logging_steps=settings["log_every"],
        report_to=[],
        disable_tqdm=False,
        dataloader_num_workers=0,
        torch_empty_cache_steps=None,
    )


def train_grpo(
    base_dir: str | Path,
    train_rows: list[dict],
    state_dir: str | Path,
    settings: dict,
    seed: int,
    threads: int = 1,
    task: str = "arithmetic",
    *,
    lr_schedule: LRSchedule | None = None,
    lr_offset: int = 0,
    optimizer_state: str | Path | None = None,
) -> list[dict]:
    """Run (or resume, from the newest complete checkpoint in ``state_dir``) GRPO on task
    ``task``'s split rows from the HF dir ``base_dir``; returns the trainer's log history,
    each row with ``train_seconds``: wall seconds of training to that step, summed over
    every attempt.

    ``settings["steps"]`` optimizer steps are taken. By default the lr follows TRL's own
    schedule (``settings["lr_schedule"]`` over those steps); ``lr_schedule`` replaces it,
    step ``s`` using ``lr_schedule(lr_offset + s)`` (a re-grounding segment continuing the
    chain's schedule). ``optimizer_state`` (an ``optimizer.pt`` of an earlier run) starts
    the optimizer from that state instead of a fresh one; default: fresh.
    """
    from datasets import Dataset
    from trl import GRPOTrainer

    torch.set_num_threads(threads)
    state_dir = Path(state_dir)
    fingerprint = {
        "base_dir": str(base_dir),
        "base_weights": weight_files_stamp(Path(base_dir)),
        "settings": settings,
        "seed": seed,
    }
    if task != "arithmetic":
        fingerprint["task"] = task
    if lr_schedule is not None:
        fingerprint["lr_schedule"] = {**vars(lr_schedule), "offset": lr_offset}
    if optimizer_state is not None:
        fingerprint["optimizer_state"] = str(optimizer_state)
    resume_from = prepare_state_dir(state_dir, fingerprint)
    callbacks = [KeepOnlyLatestOptimizer(), TrainingClock.resumed_from(resume_from)]
    if lr_schedule is not None:
        callbacks.append(SegmentSchedule(lr_schedule, lr_offset))
    if optimizer_state is not None and resume_from is None:
        callbacks.append(StartOptimizerState(optimizer_state))
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    dataset = Dataset.from_list(training_rows(train_rows, task))
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=make_reward(tokenizer, task),
        args=grpo_config(settings, state_dir, seed, threads),
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    if resume_from is not None:
        log.info("resuming from %s", resume_from)
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    return trainer.state.log_history


def _copy_model_files(source: Path, target: Path) -> Path:
    """The model files of an HF or TRL checkpoint dir (config, tokenizer, weight shards; no
    optimizer or trainer state) copied, as saved, into a new dir ``target``, atomically."""
    with atomic_output_dir(target, inputs=[source]) as tmp:
        files = [source / name for name in MODEL_FILES] + sorted(source.glob(SHARD_GLOB))
        for src in files:
            if src.exists():
                shutil.copy2(src, tmp / src.name)
    return target


def export_checkpoints(
    state_dir: str | Path, base_dir: str | Path, out_dir: str | Path, steps: list[int]
) -> dict[int, Path]:
    """Model-only HF dirs ``step_{N}`` (fp32 weights as saved), step_0 being the base."""
    state_dir, out_dir = Path(state_dir), Path(out_dir)
    sources = {0: Path(base_dir)}
    sources.update({int(c.name.split("-")[1]): c for c in sorted_checkpoints(state_dir)})
    missing = [s for s in steps if s not in sources]
    if missing:
        raise FileNotFoundError(f"{state_dir}: no checkpoint for steps {missing}")
    exported = {}
    for step in steps:
        target = out_dir / f"step_{step}"
        exported[step] = _copy_model_files(sources[step], target)
    return exported


def export_segment(
    state_dir: str | Path, steps: int, model_out: str | Path, optimizer_out: str | Path | None
) -> Path:
    """The model-only fp32 HF dir of a finished run's checkpoint at ``steps`` (a re-grounding
    segment's end), and, when ``optimizer_out`` is given, its optimizer state (for a next
    segment that keeps it). Raises FileNotFoundError naming the state dir when the run has
    no complete checkpoint at ``steps``."""
    ckpt = Path(state_dir) / f"checkpoint-{steps}"
    problem = checkpoint_problem(ckpt) if ckpt.is_dir() else "not written"
    if problem:
        raise FileNotFoundError(f"{ckpt}: {problem}")
    model_out = _copy_model_files(ckpt, Path(model_out))
    if optimizer_out is not None:
        with atomic_output_file(optimizer_out, inputs=[ckpt]) as tmp:
            shutil.copy2(ckpt / "optimizer.pt", tmp)
    return model_out
