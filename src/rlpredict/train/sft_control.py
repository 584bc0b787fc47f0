"""The supervised control run: fine-tune the same base on the train split's correct answers,
for the same number of steps, saving checkpoints at the same steps as the RL run. Its update
is the contrast for Rank-1 Dominance (AlphaRL reports rank-1 keeping ~2.5 % for SFT)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlpredict.model import save_model_dir, sft_batch
from rlpredict.tasks.prompts import is_chat_task, render_prompt

log = logging.getLogger(__name__)


def train_sft_control(
    base_dir: str | Path,
    train_rows: list[dict],
    out_dirs: dict[int, str | Path],
    settings: dict,
    seed: int,
    task: str = "arithmetic",
) -> list[dict]:
    """Train ``max(out_dirs)`` steps; write an fp32 HF dir at every step in ``out_dirs``.

    A chat task's prompt is rendered with the chat template (:func:`render_prompt`, as RL
    training and evaluation see it) and the target reply is the bare answer ending with the
    end-of-turn (EOS) token; the loss sees the reply only."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    chat = is_chat_task(task)
    train_rows = [
        {"prompt": render_prompt(tokenizer, r["prompt"], chat), "answer": r["answer"]}
        for r in train_rows
    ]
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings["lr"], betas=(0.9, 0.999), weight_decay=0.0
    )
    model.train()
    history = []
    if 0 in out_dirs:
        save_model_dir(model, tokenizer, out_dirs[0])
    for step in tqdm(range(1, max(out_dirs) + 1), desc="sft control", mininterval=2):
        idx = torch.randint(len(train_rows), (settings["batch_size"],), generator=generator)
        loss = model(**sft_batch(tokenizer, [train_rows[i] for i in idx.tolist()])).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history.append({"step": step, "loss": loss.item()})
        if step in out_dirs:
            log.info("sft control step %d loss %.4f", step, loss.item())
            save_model_dir(model, tokenizer, out_dirs[step])
    return history
