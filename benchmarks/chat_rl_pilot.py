"""A short GRPO run of a pretrained chat model on chat_arithmetic, with its costs.

Trains with the workflow's own TRL backend (full fine-tuning, fp32, Adam, no KL) on the
family's train split, exports the checkpoints, and evaluates the base and every checkpoint on
the held-out test split through the workflow's lm-eval path (chat template, greedy and avg@k
in one call). Prints the seconds per RL step, the seconds per evaluated model and a table of
accuracy (± standard error) per step.

    .venv/bin/python benchmarks/chat_rl_pilot.py --model results/pretrained/base \
        --out /tmp/pilot --family add_2d_1d --steps 20 --save-every 10
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from rlpredict.evaluate import evaluate_model
from rlpredict.tasks.arithmetic import write_jsonl
from rlpredict.tasks.chat_arithmetic import FAMILIES, generate_splits
from rlpredict.train.trl_backend import export_checkpoints, train_grpo

REPO = Path(__file__).resolve().parents[1]
TASK_FILES = [
    REPO / "workflow/tasks/chat_arithmetic/chat_arithmetic.yaml",
    REPO / "workflow/tasks/chat_arithmetic/utils.py",
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="fp32 HF dir of the chat model")
    parser.add_argument("--out", required=True, help="dir for splits, state and checkpoints")
    parser.add_argument("--family", default="add_2d_1d", choices=FAMILIES)
    parser.add_argument("--train-size", type=int, default=1000)
    parser.add_argument("--test-size", type=int, default=100)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--save-every", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step")
    parser.add_argument("--generations", type=int, default=8, help="replies per prompt")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=4, help="k of avg@k at evaluation")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = {"train": args.train_size, "dev": 1, "test": args.test_size}
    splits = generate_splits(sizes, args.family, seed=args.seed)
    write_jsonl(splits["test"], out / "test.jsonl")
    settings = dict(
        steps=args.steps,
        save_every=args.save_every,
        prompts_per_step=args.prompts,
        num_generations=args.generations,
        max_completion_length=args.max_tokens,
        temperature=1.0,
        lr=args.lr,
        lr_schedule="constant",
        warmup_steps=0,
        optimizer="adamw_torch",
        kl_beta=0.0,
        loss_type="dapo",
        log_every=1,
    )
    history = train_grpo(
        args.model,
        splits["train"],
        out / "state",
        settings,
        seed=args.seed,
        threads=args.threads,
        task="chat_arithmetic",
    )
    logged = [row for row in history if "reward" in row]
    seconds = logged[-1]["train_seconds"]
    print(f"RL: {args.steps} steps in {seconds:.0f} s, {seconds / args.steps:.1f} s/step")
    for start in range(0, len(logged), 5):
        chunk = logged[start : start + 5]
        mean = sum(r["reward"] for r in chunk) / len(chunk)
        length = sum(r.get("completions/mean_length", 0) for r in chunk) / len(chunk)
        print(
            f"  steps {chunk[0]['step']}-{chunk[-1]['step']}: mean reward {mean:.2f}, "
            f"mean reply {length:.0f} tokens"
        )
    steps = [0, *range(args.save_every, args.steps + 1, args.save_every)]
    exported = export_checkpoints(out / "state", args.model, out / "checkpoints", steps)
    eval_settings = {
        "temperature": args.temperature,
        "repeats": args.repeats,
        "accuracy": "sampled",
        "batch_size": 64,
        "max_gen_toks": args.max_tokens,
    }
    k = args.repeats
    print(f"| step | greedy | avg@{k} (T={args.temperature:g}) | eval seconds |")
    print("|---|---|---|---|")
    for step, model_dir in exported.items():
        start = time.perf_counter()
        summary = evaluate_model(
            model_dir,
            TASK_FILES,
            out / "test.jsonl",
            "chat_arithmetic",
            out / f"eval_step_{step}.json",
            eval_settings,
            model_id=f"step_{step}",
            seed=args.seed,
        )
        g, s = summary["greedy"], summary["sampled"]
        print(
            f"| {step} | {g['accuracy']:.3f} ± {g['accuracy_stderr']:.3f} "
            f"| {s['accuracy']:.3f} ± {s['accuracy_stderr']:.3f} "
            f"| {time.perf_counter() - start:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
