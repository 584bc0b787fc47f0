"""Peak memory of `rlpredict ablate` against model size.

Builds random Qwen2-shaped fp32 base/checkpoint pairs of the requested sizes (same tensor
shapes, more layers for a bigger model) in a tmp dir, or takes --base/--checkpoint, runs
`rlpredict ablate` in a subprocess for each and reads the child's peak RSS from wait4().
The fixed overhead (interpreter, torch, libraries) is the peak RSS of the same command on a
tiny model. Target: peak RSS < 0.5·S + overhead, S = bytes of one model's weights.

    python benchmarks/ablate_memory.py                      # 0.5 GB and 1 GB models
    python benchmarks/ablate_memory.py --sizes-gb 2
    python benchmarks/ablate_memory.py --base DIR --checkpoint DIR
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from model_shapes import QWEN25_05B
from transformers import Qwen2Config

from rlpredict.checkpoints import ModelReader, ModelWriter

SHAPE = QWEN25_05B
TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=128,
    max_position_embeddings=64,
    tie_word_embeddings=True,
    num_hidden_layers=2,
)


def qwen2_shapes(config: Qwen2Config) -> dict[str, tuple[int, ...]]:
    h, i, v = config.hidden_size, config.intermediate_size, config.vocab_size
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, h)}
    for n in range(config.num_hidden_layers):
        p = f"model.layers.{n}."
        shapes |= {
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (h, h),
            p + "self_attn.q_proj.bias": (h,),
            p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.k_proj.bias": (kv,),
            p + "self_attn.v_proj.weight": (kv, h),
            p + "self_attn.v_proj.bias": (kv,),
            p + "self_attn.o_proj.weight": (h, h),
            p + "mlp.gate_proj.weight": (i, h),
            p + "mlp.up_proj.weight": (i, h),
            p + "mlp.down_proj.weight": (h, i),
        }
    shapes["model.norm.weight"] = (h,)
    return shapes


def layers_for(size_bytes: float) -> int:
    one = qwen2_shapes(Qwen2Config(**SHAPE, num_hidden_layers=1))
    two = qwen2_shapes(Qwen2Config(**SHAPE, num_hidden_layers=2))
    per_layer = 4 * (sum(_numel(s) for s in two.values()) - sum(_numel(s) for s in one.values()))
    fixed = 4 * sum(_numel(s) for s in one.values()) - per_layer
    return max(1, round((size_bytes - fixed) / per_layer))


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def make_pair(root: Path, sizes: dict, seed: int = 0) -> tuple[Path, Path]:
    """Random base and 'trained' dirs (base + noise + a rank-1 term), one tensor at a time."""
    config = Qwen2Config(**sizes)
    template = root / "template"
    template.mkdir(parents=True)
    config.save_pretrained(template)
    gen = torch.Generator().manual_seed(seed)
    base_dir, ckpt_dir = root / "base", root / "ckpt"
    with ModelWriter(base_dir, template) as base, ModelWriter(ckpt_dir, template) as ckpt:
        for name, shape in qwen2_shapes(config).items():
            w0 = torch.randn(shape, generator=gen).mul_(0.02)
            base.add(name, w0)
            w0.add_(torch.randn(shape, generator=gen), alpha=1e-3)
            if len(shape) == 2:
                # A dominant direction over the noise, as RL updates have (σ₁ ≈ 5σ_noise).
                u = torch.nn.functional.normalize(torch.randn(shape[0], 1, generator=gen), dim=0)
                v = torch.nn.functional.normalize(torch.randn(1, shape[1], generator=gen), dim=1)
                w0.addmm_(u, v, alpha=0.5)
            ckpt.add(name, w0)
        base.finish()
        ckpt.finish()
    return base_dir, ckpt_dir


def weights_bytes(model_dir: Path) -> int:
    with ModelReader(model_dir) as reader:
        return sum(_numel(reader.shape(n)) * reader.dtype(n).itemsize for n in reader.names())


# A fork of this (large) process would start with its RSS, and Linux carries that high-water
# mark across exec: run the command from a small launcher and read its child's wait4() rusage.
LAUNCHER = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(proc.pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss, usage.ru_utime + usage.ru_stime)
"""


def run_ablate(base: Path, ckpt: Path, out: Path, rank: str) -> tuple[int, float, float]:
    """Peak RSS (bytes), wall and CPU seconds of one `rlpredict ablate` process."""
    cmd = [sys.executable, "-m", "rlpredict.cli", "ablate", "--base", str(base),
           "--checkpoint", str(ckpt), "--rank", rank, "--out", str(out)]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", LAUNCHER, *cmd], capture_output=True, text=True, check=True
    )
    wall = time.perf_counter() - start
    code, maxrss_kb, cpu = proc.stdout.split()
    if code != "0":
        sys.exit(f"rlpredict ablate failed:\n{proc.stderr[-2000:]}")
    return int(maxrss_kb) * 1024, wall, float(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes-gb", default="0.5,1.0", help="model sizes S to generate")
    parser.add_argument("--base", type=Path, help="use this base dir instead of generating")
    parser.add_argument("--checkpoint", type=Path, help="with --base")
    parser.add_argument("--rank", default="1")
    parser.add_argument("--tmp", type=Path, default=None, help="where to write models")
    args = parser.parse_args()

    gb = 1e9
    if args.tmp is not None:
        args.tmp.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.tmp, prefix="ablate-memory-") as tmp:
        root = Path(tmp)
        tiny_base, tiny_ckpt = make_pair(root / "tiny", TINY)
        overhead, _, _ = run_ablate(tiny_base, tiny_ckpt, root / "tiny" / "out", args.rank)
        if args.base:
            pairs = [(args.base, args.checkpoint)]
        else:
            pairs = []
            for s in args.sizes_gb.split(","):
                sizes = {**SHAPE, "num_hidden_layers": layers_for(float(s) * gb)}
                pairs.append(make_pair(root / f"s{s}", sizes))
        print(f"rank {args.rank}; fixed overhead (tiny model): {overhead / gb:.3f} GB")
        print("| S (GB) | peak RSS (GB) | peak − overhead (GB) | ratio to S | wall (s) | CPU (s) |")
        print("|---:|---:|---:|---:|---:|---:|")
        ok = True
        for base, ckpt in pairs:
            size = weights_bytes(base)
            out = root / "out"
            peak, wall, cpu = run_ablate(base, ckpt, out, args.rank)
            extra = peak - overhead
            ok &= peak < 0.5 * size + overhead
            print(
                f"| {size / gb:.3f} | {peak / gb:.3f} | {extra / gb:.3f} | {extra / size:.3f} "
                f"| {wall:.1f} | {cpu:.1f} |"
            )
            shutil.rmtree(out)
        print(f"target peak < 0.5·S + overhead: {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
