"""Decoding speed of logits extrapolation, side by side in one run.

(a) one HF model's ``generate`` (greedy, KV cache), (b) two models in lockstep with a KV cache
each (``rlpredict.logits.generate_extrapolated``), (c) the same two-model decoding recomputing the
whole prefix at every step (no cache). Same random prompts, every row decodes exactly
``--new-tokens`` tokens (no EOS in the config). Prints a markdown table.

    .venv/bin/python benchmarks/logits.py                       # defaults: hidden 512, 4 layers
    .venv/bin/python benchmarks/logits.py --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from rlpredict.logits import generate_extrapolated, mix_logits


def build_model(args, seed: int) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 8 // 3,
        num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 64,
        num_key_value_heads=max(args.hidden // 128, 1),
        max_position_embeddings=args.prompt_len + args.new_tokens + 8,
        eos_token_id=None,
        bos_token_id=None,
        pad_token_id=0,
        tie_word_embeddings=True,
    )
    model = Qwen2ForCausalLM(config).to(device=args.device, dtype=getattr(torch, args.dtype))
    model.generation_config.eos_token_id = None
    return model.eval()


@torch.inference_mode()
def recompute_prefix(models, ids, mask, alpha: float, new_tokens: int) -> torch.Tensor:
    """Reference decoding without a cache: every step runs both models on the whole prefix."""
    out = []
    for _ in range(new_tokens):
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = [
            m(
                input_ids=ids,
                attention_mask=mask,
                position_ids=pos,
                use_cache=False,
                logits_to_keep=1,
            ).logits[:, -1]
            for m in models
        ]
        token = mix_logits(logits[0], logits[1], alpha).argmax(-1)
        out.append(token)
        ids = torch.cat([ids, token[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    return torch.stack(out, dim=1)


def timed(fn, device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=128, help="longest prompt (others shorter)")
    p.add_argument(
        "--new-tokens",
        type=int,
        default=128,
        help="tokens decoded per prompt; recomputing the prefix costs O(n^2), caches O(n)",
    )
    p.add_argument("--alpha", type=float, default=1.5)
    p.add_argument("--repeats", type=int, default=3, help="timed runs of (a) and (b); median")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    m0, m1 = build_model(args, 0), build_model(args, 1)
    g = torch.Generator().manual_seed(0)
    # left-padded batch of prompts with lengths from prompt_len / 2 to prompt_len
    lengths = torch.linspace(args.prompt_len // 2, args.prompt_len, args.batch).long()
    ids = torch.randint(1, args.vocab, (args.batch, args.prompt_len), generator=g)
    mask = (torch.arange(args.prompt_len) >= args.prompt_len - lengths[:, None]).long()
    ids = (ids * mask).to(args.device)
    mask = mask.to(args.device)
    n_tokens = args.batch * args.new_tokens

    def hf():
        out = m1.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=args.new_tokens,
            min_new_tokens=args.new_tokens,
            do_sample=False,
            pad_token_id=0,
        )
        return out[:, ids.shape[1] :]

    def lockstep():
        return generate_extrapolated(
            [m0, m1], ids, mask, alpha=args.alpha, max_new_tokens=args.new_tokens
        )

    def recompute():
        return recompute_prefix([m0, m1], ids, mask, args.alpha, args.new_tokens)

    rows = {}
    for name, fn, repeats in (("hf", hf, args.repeats), ("lockstep", lockstep, args.repeats)):
        fn()  # warm-up
        runs = [timed(fn, args.device) for _ in range(repeats)]
        wall = statistics.median(r[1] for r in runs)
        cpu = statistics.median(r[2] for r in runs)
        rows[name] = (runs[0][0], wall, cpu)
    rows["recompute"] = timed(recompute, args.device)
    assert rows["hf"][0].shape == rows["lockstep"][0].shape == (args.batch, args.new_tokens)
    same = torch.equal(rows["lockstep"][0], rows["recompute"][0])

    print(
        f"model: Qwen2 hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}, "
        f"{sum(p.numel() for p in m1.parameters()) / 1e6:.1f}M params, {args.dtype} on "
        f"{args.device} ({torch.get_num_threads()} threads); batch {args.batch}, prompts "
        f"{int(lengths.min())}-{args.prompt_len} tokens (left-padded), {args.new_tokens} new "
        f"tokens, alpha {args.alpha}; median of {args.repeats} runs for (a), (b); one for (c)\n"
    )
    print("| decoding | wall s | CPU s | tokens/s | vs (a) | (b) vs this |")
    print("|---|---:|---:|---:|---:|---:|")
    labels = {
        "hf": "(a) one model, HF generate, KV cache",
        "lockstep": "(b) two models in lockstep, KV caches",
        "recompute": "(c) two models, prefix recomputed each step",
    }
    base_tps = n_tokens / rows["hf"][1]
    ours_tps = n_tokens / rows["lockstep"][1]
    for name, (_, wall, cpu) in rows.items():
        tps = n_tokens / wall
        print(
            f"| {labels[name]} | {wall:.2f} | {cpu:.2f} | {tps:.0f} | {tps / base_tps:.2f}x | "
            f"{ours_tps / tps:.2f}x |"
        )
    print(f"\n(b) and (c) produce identical tokens: {same}")
    print(f"targets: (b) >= 0.4x (a): {ours_tps / base_tps >= 0.4}; ", end="")
    print(f"(b) >= 10x (c): {ours_tps / (n_tokens / rows['recompute'][1]) >= 10}")


if __name__ == "__main__":
    main()
