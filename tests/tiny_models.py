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
