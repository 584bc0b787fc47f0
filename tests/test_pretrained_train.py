"""TRL GRPO on the real SmolLM2 base with the chat arithmetic task: the prompts TRL feeds the
model are render_prompt's text, a few real steps move the weights, and the exported
checkpoints are fp32 HF dirs the analyses read."""

import pandas as pd
import pytest
import torch
from tiny_models import trl_settings
from transformers import AutoTokenizer

from rlpredict.checkpoints import ModelReader
from rlpredict.tasks.chat_arithmetic import generate_splits
from rlpredict.tasks.prompts import render_prompt
from rlpredict.train.trl_backend import export_checkpoints, train_grpo, training_rows

SETTINGS = trl_settings(steps=2, save_every=1, num_generations=4, max_completion_length=16, lr=1e-5)


@pytest.fixture(scope="module")
def base(smollm2_base):
    return smollm2_base


@pytest.fixture(scope="module")
def rows():
    return generate_splits({"train": 16, "dev": 1, "test": 1}, "add_upto_20", seed=0)["train"]


def test_trl_feeds_the_model_render_prompts_text(base, rows):
    """TRL renders the conversational rows with the chat template exactly as evaluation does
    (apply_chat_template, add_generation_prompt, no added special tokens)."""
    from trl.data_utils import is_conversational

    tokenizer = AutoTokenizer.from_pretrained(base)
    for row, example in zip(rows[:4], training_rows(rows[:4], "chat_arithmetic"), strict=True):
        assert is_conversational(example)
        trl_ids = tokenizer.apply_chat_template(
            [example["prompt"]], add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"][0]
        text = render_prompt(tokenizer, row["prompt"], chat=True)
        assert list(trl_ids) == tokenizer(text, add_special_tokens=False)["input_ids"]
        assert text.endswith("<|im_start|>assistant\n") and row["prompt"] in text


def test_grpo_steps_on_the_real_base_write_fp32_checkpoints_that_moved(base, rows, tmp_path):
    torch.manual_seed(0)
    history = train_grpo(
        base, rows, tmp_path / "state", SETTINGS, seed=0, threads=2, task="chat_arithmetic"
    )
    logged = pd.DataFrame([row for row in history if "reward" in row])
    assert list(logged["step"]) == [1, 2]
    assert logged["reward"].between(0, 1).all()
    assert "rewards/chat_arithmetic_reward/mean" in logged
    # some group had replies scored differently, so the step had a gradient to follow
    assert (logged["reward_std"] > 0).any(), logged[["reward", "reward_std"]]
    exported = export_checkpoints(tmp_path / "state", base, tmp_path / "checkpoints", [0, 1, 2])
    with ModelReader(base) as reader0, ModelReader(exported[2]) as reader2:
        assert sorted(reader2.names()) == sorted(reader0.names())
        changed = 0
        for name in reader0.names():
            assert reader2.dtype(name) == torch.float32, name
            changed += not torch.equal(reader0.get(name), reader2.get(name))
        assert changed > len(reader0.names()) // 2
    assert (exported[2] / "chat_template.jinja").is_file()
