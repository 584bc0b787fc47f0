"""The embedded default's base model: a character-level tokenizer and a tiny Qwen2, built from
scratch (no downloads) and warmed up with a short supervised phase."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from tqdm.auto import tqdm
from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from rlpredict.tasks.arithmetic import verify

log = logging.getLogger(__name__)

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
CHARACTERS = list("0123456789+=")


def build_tokenizer() -> PreTrainedTokenizerFast:
    """One token per character; pad, eos and unk as special tokens; left padding."""
    vocab = {tok: i for i, tok in enumerate([PAD, EOS, UNK, *CHARACTERS])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        padding_side="left",
        model_max_length=64,
    )


def build_model(tokenizer: PreTrainedTokenizerFast, sizes: dict, seed: int) -> Qwen2ForCausalLM:
    """A randomly initialised Qwen2ForCausalLM with the sizes from config (``model:`` section)."""
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=sizes["hidden_size"],
        intermediate_size=sizes["intermediate_size"],
        num_hidden_layers=sizes["num_layers"],
        num_attention_heads=sizes["num_heads"],
        num_key_value_heads=sizes["num_kv_heads"],
        max_position_embeddings=sizes["max_positions"],
        tie_word_embeddings=sizes.get("tie_embeddings", True),
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        use_cache=True,
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.eos_token_id,
        do_sample=False,
    )
    return model


def sft_batch(tokenizer: PreTrainedTokenizerFast, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
    """Prompt + answer + EOS, right-padded; the loss sees the answer and EOS only."""
    pad = tokenizer.pad_token_id
    sequences, labels = [], []
    for row in rows:
        prompt = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
        answer = tokenizer(row["answer"], add_special_tokens=False)["input_ids"]
        answer = answer + [tokenizer.eos_token_id]
        sequences.append(prompt + answer)
        labels.append([-100] * len(prompt) + answer)
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    label_ids = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (seq, lab) in enumerate(zip(sequences, labels, strict=True)):
        input_ids[i, : len(seq)] = torch.tensor(seq)
        label_ids[i, : len(lab)] = torch.tensor(lab)
        mask[i, : len(seq)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": label_ids}


@torch.no_grad()
def greedy_accuracy(
    model: Qwen2ForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    rows: Sequence[dict],
    max_new_tokens: int,
    batch_size: int = 256,
) -> float:
    """Exact-match accuracy of greedy decoding; the answer must be followed by EOS."""
    was_training = model.training
    model.eval()
    correct = 0.0
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        enc = tokenizer([r["prompt"] for r in chunk], return_tensors="pt", padding=True)
        out = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        for row, ids in zip(chunk, out[:, enc["input_ids"].shape[1] :].tolist(), strict=True):
            correct += score_completion(tokenizer, ids, row["answer"])
    model.train(was_training)
    return correct / max(len(rows), 1)


def score_completion(tokenizer: PreTrainedTokenizerFast, ids: Sequence[int], answer: str) -> float:
    """The shared verifier applied to a completion that must end with EOS."""
    ids = list(ids)
    if tokenizer.eos_token_id not in ids:
        return 0.0
    text = tokenizer.decode(ids[: ids.index(tokenizer.eos_token_id)], skip_special_tokens=True)
    return verify(text, answer)


def warm_up(
    model: Qwen2ForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    train_rows: Sequence[dict],
    dev_rows: Sequence[dict],
    settings: dict,
    seed: int,
    max_new_tokens: int,
) -> list[dict]:
    """Supervised warm-up until greedy dev accuracy first reaches ``target_accuracy``.

    Accuracy jumps steeply at this scale, so checks are sparse (``check_every``) until the
    dev accuracy passes a third of the target, then dense (``dense_check_every``).

    Returns the history of dev checks. Raises if the target is not reached in ``max_steps``.
    """
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings["lr"], betas=(0.9, 0.98), weight_decay=0.0
    )
    model.train()
    history = []
    batch_size, target = settings["batch_size"], settings["target_accuracy"]
    progress = tqdm(range(1, settings["max_steps"] + 1), desc="warm-up", mininterval=2)
    for step in progress:
        idx = torch.randint(len(train_rows), (batch_size,), generator=generator).tolist()
        loss = model(**sft_batch(tokenizer, [train_rows[i] for i in idx])).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        dense = bool(history) and history[-1]["dev_accuracy"] >= target / 3
        if step % (settings["dense_check_every"] if dense else settings["check_every"]) == 0:
            acc = greedy_accuracy(model, tokenizer, dev_rows, max_new_tokens)
            history.append({"step": step, "loss": loss.item(), "dev_accuracy": acc})
            progress.set_postfix(loss=f"{loss.item():.3f}", dev_acc=f"{acc:.3f}")
            log.info("warm-up step %d loss %.4f dev accuracy %.3f", step, loss.item(), acc)
            if acc >= target:
                model.eval()
                return history
    raise RuntimeError(
        f"warm-up did not reach dev accuracy {target} in {settings['max_steps']} steps "
        f"(last {history[-1]['dev_accuracy'] if history else math.nan:.3f}); raise "
        "base.warmup.max_steps or lower base.warmup.target_accuracy"
    )


def save_model_dir(model, tokenizer, out_dir: str | Path) -> Path:
    """Save an fp32 HF dir atomically (temporary name, renamed when complete)."""
    from rlpredict.checkpoints import atomic_output_dir

    with atomic_output_dir(out_dir) as tmp:
        model.to(torch.float32).save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return Path(out_dir)
