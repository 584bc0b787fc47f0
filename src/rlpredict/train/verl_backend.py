"""verl training: compose ``python -m verl.trainer.main_ppo`` overrides from the config.

The config is a plain dict (``config["train"]`` with ``config["train"]["verl"]``); see
:data:`DEFAULTS` for every ``train.verl`` key, its default and meaning. Two presets follow
the papers' training setups:

- ``grpo``: GRPO without KL, symmetric clip 0.2, token-mean loss (RLVR-linearity paper);
- ``dapo``: DAPO, i.e. GRPO with clip-higher (0.2 / 0.28), token-level loss aggregation,
  dynamic sampling (groups whose responses are all right or all wrong are dropped and
  refilled) and the overlong reward shaping of verl's ``dapo`` reward manager (AlphaRL
  paper).

Resuming: verl's ``trainer.resume_mode=auto`` silently continues from whatever checkpoint
sits in ``default_local_dir``. :func:`prepare_run_dir` writes a fingerprint of the composed
overrides next to the checkpoints and returns ``auto`` only when the dir holds checkpoints
of the same run; a fresh run into a dir with checkpoints of another (or an unknown) run
stops with an error instead of resuming them. verl resumes from the step named in
``latest_checkpointed_iteration.txt``; :func:`resume_step` points it at the newest
*complete* checkpoint (:func:`verl_checkpoint_problem`), so a tracker cut short or naming a
checkpoint that is not all there does not fail every rerun.

Attention: verl 0.9.1 builds the actor with ``flash_attention_2`` unless
``actor_rollout_ref.model.override_config.attn_implementation`` says otherwise
(``verl/workers/config/model.py``, ``HFModelConfig.__post_init__``), and its remove-padding
patch replaces only the flash-attention forward (``verl/models/transformers/monkey_patch.py``,
``apply_monkey_patch``). ``train.verl.attention: sdpa`` therefore also turns remove-padding
off, so that sequences are never packed into one row for an attention that would not see
their boundaries.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

from rlpredict.atomic import atomic_write_text

log = logging.getLogger(__name__)
TRACKER_FILE = "latest_checkpointed_iteration.txt"
# Per-rank files of verl's FSDP checkpoint manager, by save_contents entry.
RANK_FILES = {"model": "model", "optimizer": "optim", "extra": "extra_state"}

FINGERPRINT_FILE = "rlpredict_run.json"
RUN_ENTRY = "verl.trainer.main_ppo"
# Overrides that may change between a run and its resumption.
NOT_FINGERPRINTED = (
    "trainer.resume_mode",
    "trainer.logger",
    "trainer.total_training_steps",
    "trainer.test_freq",
    "trainer.val_before_train",
    "data.val_files",
    "data.val_max_samples",
    "ray_kwargs.ray_init.num_cpus",
)
# verl's ResourcePoolManager reserves max_colocate_count = 3 CPUs with every GPU
# (verl/single_controller/ray/base.py); the task runner and the other Ray actors need one
# more CPU free to be scheduled.
RAY_CPUS_PER_GPU = 3
ATTENTION = ("sdpa", "flash_attention_2")
# Keys verl 0.9.1 reads nowhere: a config that sets them gets this explanation.
REMOVED_KEYS = {
    "max_num_gen_batches": (
        "verl 0.9.1's trainer ignores algorithm.filter_groups.max_num_gen_batches (it only "
        "warns) and refills until the batch is full; max_inflight_gen_batches bounds how many "
        "prompt batches are generated at once"
    ),
}
# Used when the model ships no chat template: the prompt text exactly as exported.
PLAIN_CHAT_TEMPLATE = "{% for message in messages %}{{ message['content'] }}{% endfor %}"

DEFAULTS: dict[str, object] = {
    "algorithm": "grpo",  # grpo | dapo: preset for the keys marked (preset) below
    "nnodes": 1,  # trainer.nnodes
    "gpus_per_node": 1,  # trainer.n_gpus_per_node
    "attention": "sdpa",  # sdpa (remove-padding off) | flash_attention_2 (needs flash-attn)
    "train_batch_size": 128,  # prompts per RL step (data.train_batch_size)
    "ppo_mini_batch_size": 32,  # prompts per optimizer update within a step
    "micro_batch_size_per_gpu": 4,  # sequences per forward/backward pass and per log-prob pass
    "use_dynamic_bsz": True,  # pack micro-batches by token count instead
    "max_token_len_per_gpu": None,  # token budget per GPU pass; None: 2 x (prompt + response)
    "max_prompt_length": 1024,  # tokens; longer prompts are filtered out
    "max_response_length": 4096,  # tokens generated per rollout
    "rollout_n": 8,  # responses sampled per prompt (group size)
    "lr": 1.0e-6,  # actor learning rate (constant after warm-up)
    "lr_warmup_steps": 0,  # linear warm-up steps
    "weight_decay": 0.01,  # AdamW weight decay
    "grad_clip": 1.0,  # gradient-norm clip (actor.optim.clip_grad)
    "temperature": 1.0,  # rollout sampling temperature
    "top_p": 1.0,  # rollout nucleus sampling
    "kl_coef": 0.0,  # KL loss coefficient; 0 disables KL and the reference model
    "entropy_coeff": 0.0,  # entropy bonus
    "clip_ratio_low": 0.2,  # PPO clip below 1 (preset)
    "clip_ratio_high": 0.2,  # PPO clip above 1; DAPO's clip-higher is 0.28 (preset)
    "loss_agg_mode": "token-mean",  # token-mean (token-level, DAPO) | seq-mean-token-mean (preset)
    "dynamic_sampling": False,  # drop and refill all-right / all-wrong groups (preset)
    "max_inflight_gen_batches": 1,  # dynamic sampling: prompt batches generated at once
    "overlong_buffer": False,  # DAPO overlong reward shaping (preset)
    "overlong_buffer_len": None,  # tokens before the limit where the penalty ramps; None: 20 %
    "overlong_penalty_factor": 1.0,  # penalty at the length limit
    "rollout_tp": 1,  # vLLM tensor parallel size per rollout replica
    "gpu_memory_utilization": 0.6,  # vLLM share of GPU memory during rollout
    "strategy": "fsdp2",  # fsdp2 | fsdp: actor sharding
    "param_offload": False,  # FSDP parameter offload to CPU
    "optimizer_offload": False,  # FSDP optimizer-state offload to CPU
    "gradient_checkpointing": True,  # activation checkpointing
    "save_contents": ["model", "optimizer", "extra", "hf_model"],  # what each checkpoint holds
    "chat_template": "auto",  # auto | a Jinja template; auto: plain template if model has none
    "project_name": "rlpredict",  # trainer.project_name
    "experiment_name": None,  # trainer.experiment_name; None: the run name
    "test_freq": None,  # validation every N steps when val files are given; None: save_every
    "extra_overrides": [],  # raw "key=value" overrides appended last (expert use)
}

PRESETS: dict[str, dict[str, object]] = {
    "grpo": {
        "clip_ratio_low": 0.2,
        "clip_ratio_high": 0.2,
        "loss_agg_mode": "token-mean",
        "dynamic_sampling": False,
        "overlong_buffer": False,
    },
    "dapo": {
        "clip_ratio_low": 0.2,
        "clip_ratio_high": 0.28,
        "loss_agg_mode": "token-mean",
        "dynamic_sampling": True,
        "overlong_buffer": True,
        "weight_decay": 0.1,
    },
}
SAVE_CONTENTS = ("model", "optimizer", "extra", "hf_model")


class VerlConfigError(ValueError):
    """An invalid ``train.verl`` setting; the message names the key."""


def verl_settings(train: dict) -> dict:
    """``train.verl`` merged over the algorithm preset and :data:`DEFAULTS`."""
    given = dict(train.get("verl") or {})
    removed = sorted(set(given) & set(REMOVED_KEYS))
    if removed:
        raise VerlConfigError(f"train.verl.{removed[0]}: {REMOVED_KEYS[removed[0]]}")
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise VerlConfigError(f"train.verl: unknown key(s) {', '.join(unknown)}")
    algorithm = given.get("algorithm", DEFAULTS["algorithm"])
    if algorithm not in PRESETS:
        raise VerlConfigError(
            f"train.verl.algorithm: {algorithm!r} is not one of {', '.join(PRESETS)}"
        )
    settings = {**DEFAULTS, **PRESETS[algorithm], **given}
    bad = [c for c in settings["save_contents"] if c not in SAVE_CONTENTS]
    if bad or "model" not in settings["save_contents"]:
        raise VerlConfigError(
            f"train.verl.save_contents: {settings['save_contents']} must include 'model' and "
            f"only use {', '.join(SAVE_CONTENTS)}"
        )
    if settings["attention"] not in ATTENTION:
        raise VerlConfigError(
            f"train.verl.attention: {settings['attention']!r} is not one of {', '.join(ATTENTION)}"
        )
    positive = ("nnodes", "gpus_per_node", "train_batch_size", "ppo_mini_batch_size", "rollout_n")
    for key in (*positive, "max_inflight_gen_batches"):
        if not isinstance(settings[key], int) or settings[key] < 1:
            raise VerlConfigError(f"train.verl.{key}: must be a positive integer")
    if settings["ppo_mini_batch_size"] > settings["train_batch_size"]:
        raise VerlConfigError(
            "train.verl.ppo_mini_batch_size: must not exceed train.verl.train_batch_size"
        )
    return settings


def has_chat_template(model_path: str | Path) -> bool | None:
    """Whether a local model dir ships a chat template; None when it is not a local dir."""
    path = Path(model_path)
    if not path.is_dir():
        return None
    if any(path.glob("chat_template*")):
        return True
    tokenizer_config = path / "tokenizer_config.json"
    if tokenizer_config.is_file():
        return bool(json.loads(tokenizer_config.read_text()).get("chat_template"))
    return False


_SAFE = re.compile(r"[A-Za-z0-9_./:@+-]*")


def format_value(value: object) -> str:
    """A value in Hydra's override grammar."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    text = str(value)
    if text and _SAFE.fullmatch(text) and text.lower() not in ("null", "true", "false"):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _files(paths: str | Path | list) -> list[str]:
    items = paths if isinstance(paths, list | tuple) else [paths]
    return [str(Path(p).resolve()) for p in items]


def compose_overrides(
    config: dict,
    *,
    model_path: str | Path,
    train_files: str | Path | list,
    checkpoint_dir: str | Path,
    val_files: str | Path | list | None = None,
    reward_path: str | Path | None = None,
    ray_cpus: int | None = None,
) -> list[str]:
    """The ``key=value`` overrides for ``python -m verl.trainer.main_ppo``.

    ``ray_cpus``: the CPUs Ray may schedule on (``ray_kwargs.ray_init.num_cpus``; see
    :func:`ray_num_cpus`); None leaves Ray to count the machine's CPUs. Raises VerlConfigError
    naming the ``train.verl`` key of an invalid setting.
    """
    train = config["train"]
    s = verl_settings(train)
    steps, save_every = int(train["steps"]), int(train["save_every"])
    if steps < 1 or save_every < 1:
        raise VerlConfigError("train.steps and train.save_every must be positive integers")
    seed = int(train.get("seed", config.get("seed", 0)))
    response = int(s["max_response_length"])
    prompt = int(s["max_prompt_length"])
    token_budget = s["max_token_len_per_gpu"] or 2 * (prompt + response)
    micro = int(s["micro_batch_size_per_gpu"])
    validate = bool(val_files)
    reward_path = reward_path or Path(__file__).with_name("verl_reward.py")

    o: dict[str, object] = {
        "algorithm.adv_estimator": "grpo",
        "algorithm.use_kl_in_reward": False,
        "algorithm.kl_ctrl.kl_coef": 0.0,
        "data.train_files": _files(train_files),
        "data.val_files": _files(val_files) if validate else _files(train_files),
        "data.train_batch_size": s["train_batch_size"],
        "data.max_prompt_length": prompt,
        "data.max_response_length": response,
        "data.filter_overlong_prompts": True,
        "data.truncation": "error",
        "data.seed": seed,
        "actor_rollout_ref.model.path": str(model_path),
        "actor_rollout_ref.model.enable_gradient_checkpointing": s["gradient_checkpointing"],
        # Packed (padding-free) micro-batches need the flash-attention forward verl patches.
        "actor_rollout_ref.model.use_remove_padding": s["attention"] == "flash_attention_2",
        "actor_rollout_ref.actor.strategy": s["strategy"],
        "actor_rollout_ref.actor.optim.lr": float(s["lr"]),
        "actor_rollout_ref.actor.optim.lr_warmup_steps": int(s["lr_warmup_steps"]),
        "actor_rollout_ref.actor.optim.weight_decay": float(s["weight_decay"]),
        "actor_rollout_ref.actor.optim.clip_grad": float(s["grad_clip"]),
        "actor_rollout_ref.actor.ppo_mini_batch_size": s["ppo_mini_batch_size"],
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": micro,
        "actor_rollout_ref.actor.use_dynamic_bsz": s["use_dynamic_bsz"],
        "actor_rollout_ref.actor.ppo_max_token_len_per_gpu": token_budget,
        "actor_rollout_ref.actor.clip_ratio_low": float(s["clip_ratio_low"]),
        "actor_rollout_ref.actor.clip_ratio_high": float(s["clip_ratio_high"]),
        "actor_rollout_ref.actor.loss_agg_mode": s["loss_agg_mode"],
        "actor_rollout_ref.actor.entropy_coeff": float(s["entropy_coeff"]),
        "actor_rollout_ref.actor.use_kl_loss": float(s["kl_coef"]) > 0,
        "actor_rollout_ref.actor.kl_loss_coef": float(s["kl_coef"]),
        # fp32 master weights: RL updates at lr ~1e-6 vanish in bf16 checkpoints.
        "actor_rollout_ref.actor.fsdp_config.model_dtype": "fp32",
        "actor_rollout_ref.actor.fsdp_config.param_offload": s["param_offload"],
        "actor_rollout_ref.actor.fsdp_config.optimizer_offload": s["optimizer_offload"],
        "actor_rollout_ref.actor.checkpoint.save_contents": list(s["save_contents"]),
        "actor_rollout_ref.rollout.name": "vllm",
        "actor_rollout_ref.rollout.n": s["rollout_n"],
        "actor_rollout_ref.rollout.temperature": float(s["temperature"]),
        "actor_rollout_ref.rollout.top_p": float(s["top_p"]),
        "actor_rollout_ref.rollout.seed": seed,
        "actor_rollout_ref.rollout.tensor_model_parallel_size": s["rollout_tp"],
        "actor_rollout_ref.rollout.gpu_memory_utilization": float(s["gpu_memory_utilization"]),
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu": micro,
        "actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu": token_budget,
        "reward.custom_reward_function.path": str(Path(reward_path).resolve()),
        "reward.custom_reward_function.name": "compute_score",
        "reward.reward_manager.name": "dapo" if s["overlong_buffer"] else "naive",
        "trainer.nnodes": s["nnodes"],
        "trainer.n_gpus_per_node": s["gpus_per_node"],
        "trainer.logger": ["console"],
        "trainer.project_name": s["project_name"],
        "trainer.experiment_name": s["experiment_name"] or config.get("run", "rlpredict"),
        "trainer.total_training_steps": steps,
        "trainer.save_freq": save_every,
        "trainer.test_freq": int(s["test_freq"] or save_every) if validate else -1,
        "trainer.val_before_train": validate,
        "trainer.default_local_dir": str(Path(checkpoint_dir).resolve()),
        "trainer.max_actor_ckpt_to_keep": None,
    }
    if not validate:  # verl builds a validation set regardless; keep it tiny
        o["data.val_max_samples"] = 8
    if float(s["kl_coef"]) > 0:
        o["actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu"] = micro
    template = s["chat_template"]
    if template == "auto":
        template = PLAIN_CHAT_TEMPLATE if has_chat_template(model_path) is False else None
    if template:
        o["actor_rollout_ref.model.custom_chat_template"] = template
    if s["dynamic_sampling"]:
        o["algorithm.filter_groups.enable"] = True
        o["algorithm.filter_groups.metric"] = "acc"  # the reward managers record acc = score
        o["algorithm.filter_groups.max_inflight_gen_batches"] = int(s["max_inflight_gen_batches"])
    if ray_cpus is not None:
        o["ray_kwargs.ray_init.num_cpus"] = int(ray_cpus)
    overrides = [f"{k}={format_value(v)}" for k, v in o.items()]
    # Not in verl's config schema (override_config is an open dict): "+" adds the key.
    overrides.append(
        "+actor_rollout_ref.model.override_config.attn_implementation=" + s["attention"]
    )
    if s["overlong_buffer"]:
        buffer = s["overlong_buffer_len"] or max(1, response // 5)
        if buffer >= response:
            raise VerlConfigError(
                "train.verl.overlong_buffer_len: must be below max_response_length"
            )
        # Not in verl's config schema: "+" adds the keys its dapo reward manager reads.
        overrides += [
            "+reward.reward_kwargs.overlong_buffer_cfg.enable=True",
            f"+reward.reward_kwargs.overlong_buffer_cfg.len={int(buffer)}",
            "+reward.reward_kwargs.overlong_buffer_cfg.penalty_factor="
            + format_value(float(s["overlong_penalty_factor"])),
            "+reward.reward_kwargs.overlong_buffer_cfg.log=False",
            f"+reward.reward_kwargs.max_resp_len={response}",
        ]
    overrides += [str(x) for x in s["extra_overrides"]]
    return overrides


def ray_num_cpus(threads: int, gpus: int, environ: Mapping[str, str]) -> int:
    """CPUs for Ray's ``num_cpus`` from the job's allocation, as verl's config asks under SLURM.

    The allocation is ``SLURM_CPUS_ON_NODE`` inside a SLURM job (the CPUs of this node's job
    step), else ``threads`` (the rule's threads, scaled to ``--cores``). Left alone, Ray counts
    every CPU of the node, and on a shared SLURM node starts workers for CPUs the job does not
    hold. Raised to ``3 × gpus + 1`` when lower (with a warning): verl reserves 3 CPUs per GPU
    for its worker groups and needs one more free for its other actors, so fewer would leave
    its placement groups waiting for ever; Ray's count is for scheduling, not a hard limit.
    """
    slurm = environ.get("SLURM_CPUS_ON_NODE", "").strip()
    allocated = int(slurm) if slurm.isdigit() and int(slurm) > 0 else int(threads)
    needed = RAY_CPUS_PER_GPU * int(gpus) + 1
    if allocated < needed:
        log.warning(
            "the job has %d CPUs; verl's %d GPU worker(s) need %d in Ray: raising num_cpus to %d "
            "(give the job more with train.resources.cpus_per_gpu)",
            allocated,
            gpus,
            needed,
            needed,
        )
    return max(allocated, needed)


def reward_meaning(train: dict) -> str:
    """What verl's ``critic/score/mean`` (the training history's ``reward``) measures under
    these settings: the verifier's 0/1 score averaged over the step's responses, which is the
    training accuracy only without DAPO's overlong penalty and group filtering."""
    s = verl_settings(train)
    parts = ["critic/score/mean: mean verifier score"]
    if s["overlong_buffer"]:
        parts.append("incl. overlong penalty")
    if s["dynamic_sampling"]:
        parts.append("over the groups kept by dynamic sampling only")
    else:
        parts.append("over all responses of the step")
    if s["overlong_buffer"] or s["dynamic_sampling"]:
        parts.append("(not accuracy)")
    return " ".join(parts)


def fingerprint(overrides: list[str]) -> str:
    """Hash of the overrides that define a run (not those that may change on resume)."""
    kept = sorted(o for o in overrides if o.lstrip("+").partition("=")[0] not in NOT_FINGERPRINTED)
    return hashlib.sha256("\n".join(kept).encode()).hexdigest()


def has_checkpoints(checkpoint_dir: Path) -> bool:
    return (checkpoint_dir / TRACKER_FILE).exists() or any(checkpoint_dir.glob("global_step_*"))


def _is_torch_archive(path: Path) -> bool:
    return path.is_file() and zipfile.is_zipfile(path)


def verl_checkpoint_problem(step_dir: str | Path, save_contents: list[str]) -> str | None:
    """Why verl cannot resume from ``global_step_N`` as saved, or None when it is complete:
    ``actor/`` holds every rank's model file (and optimizer and extra-state files when
    ``save_contents`` has them), and ``data.pt`` (the dataloader state, written last before
    the tracker) is there; each a torch archive written to the end."""
    step_dir = Path(step_dir)
    actor = step_dir / "actor"
    worlds = {
        int(m.group(1))
        for p in (actor.glob("model_world_size_*_rank_*.pt") if actor.is_dir() else [])
        if (m := re.fullmatch(r"model_world_size_(\d+)_rank_\d+\.pt", p.name))
    }
    if len(worlds) != 1:
        return "actor/ has no model shards" if not worlds else "actor/ mixes world sizes"
    world = worlds.pop()
    for content, prefix in RANK_FILES.items():
        if content not in save_contents:
            continue
        for rank in range(world):
            name = f"{prefix}_world_size_{world}_rank_{rank}.pt"
            if not _is_torch_archive(actor / name):
                return f"actor/{name} missing or truncated"
    if not _is_torch_archive(step_dir / "data.pt"):
        return "data.pt missing or truncated"
    return None


def resume_step(checkpoint_dir: str | Path, save_contents: list[str]) -> int | None:
    """Point verl's tracker at the newest complete checkpoint and return its step (None,
    tracker removed, if there is none). Newer incomplete checkpoints are logged; verl writes
    them again."""
    checkpoint_dir = Path(checkpoint_dir)
    steps = sorted(
        (int(m.group(1)), p)
        for p in checkpoint_dir.glob("global_step_*")
        if (m := re.fullmatch(r"global_step_(\d+)", p.name))
    )
    tracker = checkpoint_dir / TRACKER_FILE
    for step, path in reversed(steps):
        problem = verl_checkpoint_problem(path, save_contents)
        if problem is None:
            if not tracker.is_file() or tracker.read_text().strip() != str(step):
                atomic_write_text(tracker, str(step))
            return step
        log.warning(
            "skipping incomplete checkpoint %s (%s); it will be written again", path, problem
        )
    tracker.unlink(missing_ok=True)
    return None


def _save_contents(overrides: list[str]) -> list[str]:
    key = "actor_rollout_ref.actor.checkpoint.save_contents="
    value = next((o[len(key) :] for o in overrides if o.startswith(key)), "[]")
    return [v.strip(" '") for v in value.strip("[]").split(",") if v.strip()]


def prepare_run_dir(checkpoint_dir: str | Path, overrides: list[str]) -> str:
    """Record this run's fingerprint in checkpoint_dir and return verl's resume_mode.

    ``auto`` when the dir already holds a complete checkpoint of this very run (the tracker
    then names the newest, see :func:`resume_step`), ``disable`` for a fresh dir or one with
    only incomplete checkpoints. Checkpoints of another run, or of a run without a
    fingerprint, raise RuntimeError.
    """
    checkpoint_dir = Path(checkpoint_dir)
    record = checkpoint_dir / FINGERPRINT_FILE
    fp = fingerprint(overrides)
    if has_checkpoints(checkpoint_dir):
        if not record.is_file():
            raise RuntimeError(
                f"{checkpoint_dir}: holds verl checkpoints without {FINGERPRINT_FILE}, so they "
                "cannot be matched to this config; move them away or delete them to start over"
            )
        previous = json.loads(record.read_text()).get("fingerprint")
        if previous != fp:
            raise RuntimeError(
                f"{checkpoint_dir}: holds checkpoints of a different run (fingerprint "
                f"{str(previous)[:12]} in {FINGERPRINT_FILE}, this config gives {fp[:12]}); "
                "restore that config to resume it, or delete the dir to start a new run"
            )
        step = resume_step(checkpoint_dir, _save_contents(overrides))
        return "disable" if step is None else "auto"
    atomic_write_text(
        record, json.dumps({"fingerprint": fp, "overrides": overrides}, indent=2) + "\n"
    )
    return "disable"


def launch_command(
    config: dict,
    *,
    model_path: str | Path,
    train_files: str | Path | list,
    checkpoint_dir: str | Path,
    val_files: str | Path | list | None = None,
    python: str = "python",
    ray_cpus: int | None = None,
) -> list[str]:
    """The full verl command line. Also records the run fingerprint (see prepare_run_dir)."""
    overrides = compose_overrides(
        config,
        model_path=model_path,
        train_files=train_files,
        checkpoint_dir=checkpoint_dir,
        val_files=val_files,
        ray_cpus=ray_cpus,
    )
    mode = prepare_run_dir(checkpoint_dir, overrides)
    return [python, "-m", RUN_ENTRY, *overrides, f"trainer.resume_mode={mode}"]
