"""Every CUDA path of rlpredict against the same computation on the CPU, in one table.

For a machine with a CUDA GPU, torch and transformers (lm_eval for the last row; verl, vLLM
and network are not needed). It builds its own tiny random Qwen2 models as HF dirs in a
temporary directory and checks, each against the CPU in fp32:

    top_k_svd         rlpredict.spectral.top_k_svd (randomized and exact) of a ΔW-like matrix
    spectrum          rlpredict.spectral.spectrum_table of a checkpoint against its base
    ablate            rlpredict.ablate.ablate_model, rank 1 and full
    extrapolate       each weight method's per-tensor operator (rlpredict.methods registry)
    alpharl           rlpredict.alpharl.alpharl_update (AlphaRL's per-tensor operator)
    logits score      rlpredict.logits.score_extrapolated (fp32 and bf16)
    logits generate   rlpredict.logits.generate_extrapolated, greedy (fp32 and bf16)
    evaluate          rlpredict.evaluate.evaluate_model, lm-eval's HF backend, on a tiny
                      generated arithmetic task

    python benchmarks/gpu_check.py                      # on the GPU machine, < 5 min
    python benchmarks/gpu_check.py --device cpu --quick # CPU against CPU: a dry run

The exit status is 1 when a check fails or raises, 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:  # runs from a checkout without installing rlpredict
    sys.path.insert(0, str(REPO / "src"))

from rlpredict import spectral  # noqa: E402
from rlpredict.ablate import ablate_model  # noqa: E402
from rlpredict.alpharl import alpharl_update  # noqa: E402
from rlpredict.checkpoints import ModelReader  # noqa: E402
from rlpredict.extrapolate import BASE, plan_extrapolation  # noqa: E402
from rlpredict.logits import generate_extrapolated, mix_logits, score_extrapolated  # noqa: E402
from rlpredict.methods import REGISTRY  # noqa: E402

TASK = REPO / "workflow" / "tasks" / "arithmetic"

# Sizes: --quick keeps the CPU dry run of the test suite within seconds.
SIZES = {
    "full": dict(matrix=(2048, 1536), hidden=256, inter=704, layers=4, heads=4, vocab=1024,
                 batch=8, prompt=24, new_tokens=32, problems=64),
    "quick": dict(matrix=(192, 128), hidden=32, inter=64, layers=2, heads=4, vocab=64,
                  batch=3, prompt=6, new_tokens=4, problems=4),
}  # fmt: skip

# Tolerances: fp32 against fp32 (different kernels and summation order), bf16 against fp32.
TOL_FP32 = 1e-4
TOL_BF16 = 0.15  # nats: bf16 keeps 8 bits of mantissa


@dataclass
class Row:
    check: str
    metric: str
    value: float | None
    tolerance: str
    passed: bool | None
    device_s: float
    cpu_s: float
    note: str = ""


# ---- helpers ------------------------------------------------------------------------------


def timed(fn: Callable, device: str):
    """(result, seconds) of ``fn()``, with CUDA synchronized around it."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖_F / ‖b‖_F in float64 on the CPU (0 when both are 0)."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    denom = float(torch.linalg.vector_norm(b))
    diff = float(torch.linalg.vector_norm(a - b))
    return diff / denom if denom > 0 else diff


def planted_matrix(shape: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """A ΔW-like fp32 matrix: a decaying spectrum σ_i = 0.7^i (clear gaps) on a weak noise
    floor, so the leading singular vectors are well defined."""
    gen = torch.Generator().manual_seed(seed)
    m, n = shape
    r = 16
    u, _ = torch.linalg.qr(torch.randn(m, r, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, r, generator=gen, dtype=torch.float64))
    s = 0.7 ** torch.arange(r, dtype=torch.float64)
    noise = 1e-3 * torch.randn(m, n, generator=gen, dtype=torch.float64) / math.sqrt(max(m, n))
    return ((u * s) @ v.T + noise).float()


def build_models(root: Path, size: dict) -> dict[str, Path]:
    """Base, two window checkpoints and a final checkpoint of a tiny random Qwen2, as HF
    dirs; each checkpoint is the base plus a growing planted low-rank update."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=size["vocab"],
        hidden_size=size["hidden"],
        intermediate_size=size["inter"],
        num_hidden_layers=size["layers"],
        num_attention_heads=size["heads"],
        num_key_value_heads=size["heads"] // 2,
        max_position_embeddings=size["prompt"] + size["new_tokens"] + 8,
        tie_word_embeddings=False,
        eos_token_id=1,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    base = Qwen2ForCausalLM(config).float()
    paths = {}
    state = {k: v.clone() for k, v in base.state_dict().items()}
    gen = torch.Generator().manual_seed(1)
    direction = {
        k: torch.randn(v.shape[0], 1, generator=gen) @ torch.randn(1, v.shape[1], generator=gen)
        for k, v in state.items()
        if v.ndim == 2
    }
    for step in (0, 10, 20, 40):
        model = Qwen2ForCausalLM(config)
        model.load_state_dict(
            {
                k: v
                + (0.002 * step * direction[k] / math.sqrt(v.numel()) if k in direction else 0)
                + (0.001 * torch.randn(v.shape, generator=gen) if step and v.ndim == 2 else 0)
                for k, v in state.items()
            }
        )
        paths[step] = root / f"step_{step}"
        model.save_pretrained(paths[step], safe_serialization=True)
    return paths


def load_pair(paths: dict, dtype: str, device: str):
    from rlpredict.decoding import load_models

    return load_models([paths[10], paths[20]], dtype=dtype, device=device)


# ---- the checks: each returns (metric name, value, tolerance text, passed, device s, cpu s) ----


def check_svd(device: str, size: dict, method: str):
    a = planted_matrix(size["matrix"])
    k = 8

    def run(dev):
        U, S, Vh = spectral.top_k_svd(a.to(dev), k, method=method)
        return spectral.rank_k_approx(U, S, Vh), S

    (approx, s_dev), t_dev = timed(lambda: run(device), device)
    (ref, s_cpu), t_cpu = timed(lambda: spectral_exact_reference(a, k), "cpu")
    err = max(rel_err(approx, ref), float(((s_dev.cpu() - s_cpu).abs() / s_cpu[0]).max()))
    return (
        "max rel. err of rank-8 approx. and σ",
        err,
        f"≤ {TOL_FP32:g}",
        err <= TOL_FP32,
        t_dev,
        t_cpu,
    )


def spectral_exact_reference(a: torch.Tensor, k: int):
    U, S, Vh = spectral.top_k_svd(a, k, method="exact")
    return spectral.rank_k_approx(U, S, Vh), S


def check_spectrum(device: str, paths: dict):
    def run(dev):
        return spectral.spectrum_table(paths[0], paths[40], k=4, device=dev, progress=False)

    table, t_dev = timed(lambda: run(device), device)
    ref, t_cpu = timed(lambda: run("cpu"), "cpu")
    cols = [c for c in ref.columns if c.startswith(("sigma_", "energy_share", "fro_norm"))]
    a = torch.tensor(table[cols].to_numpy(dtype=float))
    b = torch.tensor(ref[cols].to_numpy(dtype=float))
    err = float(((a - b).abs() / b.abs().clamp_min(1e-12)).nan_to_num(0.0).max())
    return (
        "max rel. err over σ_1..4, ‖ΔW‖_F, energy shares",
        err,
        f"≤ {TOL_FP32:g}",
        err <= TOL_FP32,
        t_dev,
        t_cpu,
    )


def read_all(model_dir: Path) -> dict[str, torch.Tensor]:
    with ModelReader(model_dir) as reader:
        return {name: reader.get(name) for name in reader.names()}


def check_ablate(device: str, paths: dict, tmp: Path, rank: str):
    def run(dev, tag):
        out = tmp / f"ablate_{rank}_{tag}"
        ablate_model(paths[0], paths[40], out, rank=rank, device=dev, progress=False)
        return read_all(out)

    got, t_dev = timed(lambda: run(device, "device"), device)
    ref, t_cpu = timed(lambda: run("cpu", "reference"), "cpu")
    err = max(rel_err(got[n], ref[n]) for n in ref)
    return (
        "max rel. err over the written tensors",
        err,
        f"≤ {TOL_FP32:g}",
        err <= TOL_FP32,
        t_dev,
        t_cpu,
    )


def weight_methods() -> list[str]:
    """The registry's weight-space methods with a per-tensor operator, AlphaRL aside."""
    return [
        m.name for m in REGISTRY if m.operator and m.operator.startswith("rlpredict.extrapolate:")
    ]


def check_extrapolate(device: str, method: str):
    steps = {0: 0, 10: 1, 20: 2, 30: 3}
    plan = plan_extrapolation(method, [0, 10, 20, 30], 100, base_given=True)
    operator = plan.spec.tensor_operator()
    shape = (256, 192)
    gen = torch.Generator().manual_seed(2)
    w0 = torch.randn(shape, generator=gen)
    update = torch.randn(shape, generator=gen) * 1e-3
    tensors = {
        s: w0 + i * update + 1e-5 * torch.randn(shape, generator=gen) for s, i in steps.items()
    }
    tensors[BASE] = tensors[0]

    def run(dev):
        return operator.tensor(plan, lambda key: tensors[key].to(dev, copy=True))

    out, t_dev = timed(lambda: run(device), device)
    ref, t_cpu = timed(lambda: run("cpu"), "cpu")
    err = rel_err(out, ref)
    return (
        "rel. err of the extrapolated tensor",
        err,
        f"≤ {TOL_FP32:g}",
        err <= TOL_FP32,
        t_dev,
        t_cpu,
    )


def check_alpharl(device: str):
    gen = torch.Generator().manual_seed(3)
    v = torch.randn(128, generator=gen)
    u = torch.randn(256, generator=gen)
    deltas = [
        t * torch.outer(u, v) + 1e-4 * torch.randn(256, 128, generator=gen) for t in (1, 2, 3)
    ]
    labels = [0.2, 0.3, 0.4]

    def run(dev):
        update, _ = alpharl_update((d.to(dev) for d in deltas), labels, 0.6)
        return update

    out, t_dev = timed(lambda: run(device), device)
    ref, t_cpu = timed(lambda: run("cpu"), "cpu")
    err = rel_err(out, ref)
    return "rel. err of the predicted ΔW*", err, f"≤ {TOL_FP32:g}", err <= TOL_FP32, t_dev, t_cpu


def random_prompts(size: dict, seed: int = 4) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(2, size["vocab"], (size["batch"], size["prompt"]), generator=gen)


def check_score(device: str, paths: dict, size: dict, dtype: str):
    prompts = random_prompts(size)
    cut = size["prompt"] // 2
    requests = [(row[:cut].tolist(), row[cut:].tolist()) for row in prompts]

    def run(dev, dt):
        models = load_pair(paths, dt, dev)
        return score_extrapolated(models, requests, alpha=1.5)

    got, t_dev = timed(lambda: run(device, dtype), device)
    ref, t_cpu = timed(lambda: run("cpu", "float32"), "cpu")
    err = max(float((g[0] - r[0]).abs().max()) for g, r in zip(got, ref, strict=True))
    tol = TOL_FP32 if dtype == "float32" else TOL_BF16
    return (
        "max abs. Δ log-prob (nats) against CPU fp32",
        err,
        f"≤ {tol:g}",
        err <= tol,
        t_dev,
        t_cpu,
    )


def check_generate(device: str, paths: dict, size: dict, dtype: str):
    """Greedy tokens may differ where two logits tie within rounding; what must hold is that
    each token the device picks is (nearly) the best under the CPU's fp32 mixed logits."""
    prompts = random_prompts(size)
    alpha = 1.5

    def run(dev, dt):
        models = load_pair(paths, dt, dev)
        return generate_extrapolated(
            models, prompts, alpha=alpha, max_new_tokens=size["new_tokens"], eos_token_id=None
        ).cpu()

    tokens, t_dev = timed(lambda: run(device, dtype), device)
    ref_tokens, t_cpu = timed(lambda: run("cpu", "float32"), "cpu")
    cpu_models = load_pair(paths, "float32", "cpu")
    full = torch.cat([prompts, tokens], dim=1)
    with torch.no_grad():
        logits = mix_logits(*(m(input_ids=full).logits for m in cpu_models), alpha)
    logprobs = torch.log_softmax(logits[:, size["prompt"] - 1 : -1], dim=-1)
    chosen = logprobs.gather(-1, tokens[..., None]).squeeze(-1)
    gap = float((logprobs.max(dim=-1).values - chosen).max())
    same = float((tokens == ref_tokens).float().mean())
    tol = TOL_FP32 if dtype == "float32" else TOL_BF16
    return ("max gap to the CPU's greedy log-prob (nats)", gap, f"≤ {tol:g}", gap <= tol,
            t_dev, t_cpu, f"{same:.0%} tokens identical")  # fmt: skip


def check_evaluate(device: str, tmp: Path, size: dict):
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        return None
    from rlpredict.evaluate import evaluate_model
    from rlpredict.model import build_model, build_tokenizer, save_model_dir

    tok = build_tokenizer()
    sizes = dict(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                 num_kv_heads=2, max_positions=48)  # fmt: skip
    model_dir = save_model_dir(build_model(tok, sizes, seed=0), tok, tmp / "arith_model")
    data = tmp / "arith.jsonl"
    rows = [{"prompt": f"{a}+{a + 3}=", "answer": str(2 * a + 3)} for a in range(size["problems"])]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    files = [TASK / "arithmetic.yaml", TASK / "utils.py"]

    def run(dev):
        settings = {"device": dev, "batch_size": 16, "max_gen_toks": 6}
        out = tmp / f"eval_{dev.replace(':', '')}_{time.perf_counter_ns()}.json"
        result = evaluate_model(model_dir, files, data, "arithmetic", out, settings, "check",
                                log_samples=True)  # fmt: skip
        return [
            s["resps"] for s in sorted(result["samples"]["arithmetic"], key=lambda s: s["doc_id"])
        ], result

    (resps, res), t_dev = timed(lambda: run(device), device)
    (ref_resps, ref), t_cpu = timed(lambda: run("cpu"), "cpu")
    same = sum(a == b for a, b in zip(resps, ref_resps, strict=True)) / len(ref_resps)
    ok = same >= 0.9 and abs(res["accuracy"] - ref["accuracy"]) <= 0.1
    note = f"accuracy {res['accuracy']:.3f} vs {ref['accuracy']:.3f} (CPU)"
    return "share of identical responses", same, "≥ 0.9", ok, t_dev, t_cpu, note


# ---- the table ----------------------------------------------------------------------------


def run_check(name: str, fn: Callable) -> Row:
    try:
        out = fn()
    except Exception as exc:  # a failing path is a row of the table, not the end of the run
        logging.getLogger(__name__).debug("%s", traceback.format_exc())
        return Row(
            name,
            "",
            None,
            "",
            False,
            float("nan"),
            float("nan"),
            f"ERROR {type(exc).__name__}: {exc}"[:160],
        )
    if out is None:
        return Row(
            name, "", None, "", None, float("nan"), float("nan"), "skipped: lm_eval not installed"
        )
    metric, value, tol, passed, t_dev, t_cpu, *note = out
    return Row(name, metric, value, tol, bool(passed), t_dev, t_cpu, note[0] if note else "")


def all_checks(device: str, size: dict, tmp: Path) -> list[tuple[str, Callable]]:
    paths = build_models(tmp / "models", size)
    checks = [
        ("top_k_svd randomized", lambda: check_svd(device, size, "randomized")),
        ("top_k_svd exact", lambda: check_svd(device, size, "exact")),
        ("spectrum", lambda: check_spectrum(device, paths)),
        ("ablate rank 1", lambda: check_ablate(device, paths, tmp, "1")),
        ("ablate full", lambda: check_ablate(device, paths, tmp, "full")),
    ]
    for method in weight_methods():
        checks.append((f"extrapolate {method}", lambda m=method: check_extrapolate(device, m)))
    checks.append(("alpharl", lambda: check_alpharl(device)))
    for dtype in ("float32", "bfloat16"):
        short = "fp32" if dtype == "float32" else "bf16"
        checks.append(
            (f"logits score {short}", lambda d=dtype: check_score(device, paths, size, d))
        )
        checks.append(
            (f"logits generate {short}", lambda d=dtype: check_generate(device, paths, size, d))
        )
    checks.append(("evaluate (lm-eval hf)", lambda: check_evaluate(device, tmp, size)))
    return checks


def format_table(rows: list[Row], device: str) -> str:
    head = f"| check | metric | value | tolerance | result | {device} s | cpu s | note |"
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        result = "skip" if r.passed is None else ("PASS" if r.passed else "FAIL")
        value = "" if r.value is None else f"{r.value:.3g}"
        lines.append(
            f"| {r.check} | {r.metric} | {value} | {r.tolerance} | {result} | "
            f"{r.device_s:.3f} | {r.cpu_s:.3f} | {r.note} |"
        )
    return "\n".join(lines)


def environment(device: str) -> str:
    import transformers

    text = f"torch {torch.__version__} (CUDA {torch.version.cuda})"
    text += f", transformers {transformers.__version__}"
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        text += f", {props.name} (compute capability {props.major}.{props.minor})"
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="device to check against the CPU (cuda)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (the CPU dry run)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("no CUDA device visible to torch; use --device cpu for a dry run")
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("transformers", "lm_eval"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    os.environ["TQDM_DISABLE"] = "1"  # progress bars of the library and of lm-eval
    size = SIZES["quick" if args.quick else "full"]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rlpredict-gpu-check-") as tmp:
        rows = [run_check(name, fn) for name, fn in all_checks(args.device, size, Path(tmp))]
    print(environment(args.device))
    print(format_table(rows, args.device))
    failed = [r.check for r in rows if r.passed is False]
    print(f"{len(rows) - len(failed)} of {len(rows)} checks passed or skipped, "
          f"{len(failed)} failed; {time.perf_counter() - start:.1f} s")  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
