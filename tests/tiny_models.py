"""Tiny random Qwen2 models shared by the tests."""

import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import Qwen2Config, Qwen2ForCausalLM

TINY_SIZES = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=48,
    max_position_embeddings=32,
    tie_word_embeddings=True,
)


# Smaller still, with an untied output embedding (lm_head.weight a tensor of its own).
UNTIED_SIZES = dict(
    vocab_size=40,
    hidden_size=16,
    intermediate_size=32,
    num_attention_heads=2,
    num_key_value_heads=1,
    tie_word_embeddings=False,
)


def tiny_config(**overrides) -> Qwen2Config:
    return Qwen2Config(**{**TINY_SIZES, **overrides})


def tiny_model(seed: int = 0, **overrides) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(tiny_config(**overrides))


def save_state(model_dir: Path, template: Path, state: dict[str, torch.Tensor]) -> Path:
    """An HF dir holding ``state``, with config files copied from ``template``."""
    model_dir.mkdir(parents=True)
    for name in ("config.json", "generation_config.json"):
        shutil.copyfile(template / name, model_dir / name)
    save_file(
        {k: v.contiguous() for k, v in state.items()},
        model_dir / "model.safetensors",
        metadata={"format": "pt"},
    )
    return model_dir


# Sizes of rlpredict.model's toy model (build_model) for fast TRL runs.
TOY_SIZES = dict(
    hidden_size=16,
    intermediate_size=32,
    num_layers=1,
    num_heads=2,
    num_kv_heads=1,
    max_positions=32,
)


def save_toy_base(out: Path, sizes: dict = TOY_SIZES, seed: int = 0) -> Path:
    """rlpredict.model's toy model (random weights, its arithmetic tokenizer) as an HF dir."""
    from rlpredict.model import build_model, build_tokenizer, save_model_dir

    tokenizer = build_tokenizer()
    return save_model_dir(build_model(tokenizer, sizes, seed=seed), tokenizer, out)


def toy_train_rows() -> list[dict]:
    """64 two-digit addition prompts of the toy task's train split."""
    from rlpredict.tasks.arithmetic import generate_splits

    return generate_splits({"train": 64, "dev": 1, "test": 1}, digits=2, seed=0)["train"]


def trl_settings(**overrides) -> dict:
    """``train`` settings for rlpredict.train.trl_backend.train_grpo on a tiny run: GRPO
    without KL, DAPO loss, 2 prompts × 2 completions of ≤ 4 tokens a step, Adam at 1e-3."""
    settings = dict(
        steps=4,
        save_every=2,
        prompts_per_step=2,
        num_generations=2,
        max_completion_length=4,
        temperature=1.0,
        lr=1e-3,
        lr_schedule="constant",
        warmup_steps=0,
        optimizer="adamw_torch",
        kl_beta=0.0,
        loss_type="dapo",
        log_every=1,
    )
    return {**settings, **overrides}
