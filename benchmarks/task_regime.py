"""Which chat arithmetic family puts a pretrained chat model in the sharpening regime?

For each family, a seeded sample of problems is asked in the model's chat template (the text
``render_prompt`` gives, as training and evaluation see it) and answered in free form; the
last number of each response is scored by the task verifier. Printed per family: greedy
accuracy, sampled accuracy avg@k at temperature T (mean over k samples), pass@k (any of the k
right), mean response length in tokens (sampled) and the seconds it took.

    .venv/bin/python benchmarks/task_regime.py --model results/pretrained/base \
        --families add_1d add_2d_1d add_three_1d --problems 64 --samples 8
"""

from __future__ import annotations

import argparse
import random
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlpredict.tasks.chat_arithmetic import FAMILIES, family_problems, verify
from rlpredict.tasks.prompts import render_prompt


def generate(model, tokenizer, prompts: list[str], max_new_tokens: int, **sampling):
    """Responses (text, token count) for ``prompts``; stops at EOS."""
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **sampling,
        )
    texts, lengths = [], []
    for ids in out[:, batch["input_ids"].shape[1] :].tolist():
        if tokenizer.eos_token_id in ids:
            ids = ids[: ids.index(tokenizer.eos_token_id) + 1]
        lengths.append(len([i for i in ids if i != tokenizer.pad_token_id]))
        texts.append(tokenizer.decode(ids, skip_special_tokens=True))
    return texts, lengths


def measure(model, tokenizer, rows, samples: int, temperature: float, max_new_tokens: int):
    """One table row for the problems ``rows``."""
    start = time.perf_counter()
    prompts = [render_prompt(tokenizer, r["prompt"], chat=True) for r in rows]
    answers = [r["answer"] for r in rows]
    greedy, _ = generate(model, tokenizer, prompts, max_new_tokens, do_sample=False)
    greedy_acc = sum(map(verify, greedy, answers)) / len(rows)
    scores, lengths = [], []
    per_batch = max(1, 64 // samples)
    for i in range(0, len(rows), per_batch):
        texts, lens = generate(
            model,
            tokenizer,
            prompts[i : i + per_batch],
            max_new_tokens,
            do_sample=True,
            temperature=temperature,
            top_p=1.0,
            top_k=0,
            num_return_sequences=samples,
        )
        lengths += lens
        for j, answer in enumerate(answers[i : i + per_batch]):
            scores.append([verify(t, answer) for t in texts[j * samples : (j + 1) * samples]])
    return {
        "greedy": greedy_acc,
        "avg@k": sum(sum(s) / samples for s in scores) / len(rows),
        "pass@k": sum(max(s) for s in scores) / len(rows),
        "mean_len": sum(lengths) / len(lengths),
        "seconds": time.perf_counter() - start,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="fp32 HF dir of the chat model")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--problems", type=int, default=64)
    parser.add_argument("--samples", type=int, default=8, help="k of avg@k and pass@k")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.model, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    k = args.samples
    print(
        f"| family | distinct | greedy | avg@{k} (T={args.temperature:g}) | pass@{k} "
        "| mean tokens | seconds |"
    )
    print("|---|---|---|---|---|---|---|")
    for family in args.families:
        problems = family_problems(family)
        rows = random.Random(args.seed).sample(problems, min(args.problems, len(problems)))
        torch.manual_seed(args.seed)
        r = measure(model, tokenizer, rows, k, args.temperature, args.max_new_tokens)
        print(
            f"| {family} | {len(problems)} | {r['greedy']:.2f} | {r['avg@k']:.2f} "
            f"| {r['pass@k']:.2f} | {r['mean_len']:.0f} | {r['seconds']:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
