"""Tiny random Qwen2 models shared by the tests."""

import torch
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
