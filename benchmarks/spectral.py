"""Top-1 SVD of ΔW: exact torch.linalg.svd vs torch.svd_lowrank vs rlpredict.spectral.top_k_svd.

Synthetic ΔW shaped like Qwen2.5-1.5B's projections (down_proj 1536×8960, gate/up_proj
8960×1536, q/o_proj 1536×1536, k/v_proj 256×1536) with a planted top gap σ_1/σ_2 = 1.05 on
three spectra: "noise" (the singular values of a Gaussian matrix: flat, the hardest case),
"power+noise" (a σ_i ∝ i^-1/2 signal on a noise floor holding 30 % of ‖ΔW‖_F²) and
"power0.3" (σ_i ∝ i^-0.3, slow decay). With --run, also the real ΔW of a pipeline run (its
last checkpoint minus step_0). Accuracy is measured against the exact SVD of the same fp32
matrix. Times are medians over repeats: wall (perf_counter) and CPU (process_time; the
machine may be shared). The second table sums the medians over the 196 matrices of
Qwen2.5-1.5B (28 layers × 7 projections).

    python benchmarks/spectral.py --threads 1           # synthetic, ~5 min on one core
    python benchmarks/spectral.py --run results/smoke   # + the run's real ΔW
"""

from __future__ import annotations

import argparse
import logging
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from rlpredict import spectral
from rlpredict.checkpoints import ModelReader, discover_run

SHAPES = {
    "down_proj": (1536, 8960),
    "gate/up_proj": (8960, 1536),
    "q/o_proj": (1536, 1536),
    "k/v_proj": (256, 1536),
}
PER_LAYER = {"down_proj": 1, "gate/up_proj": 2, "q/o_proj": 2, "k/v_proj": 2}
LAYERS = 28
GAP = 1.05
EXACT = "exact torch.linalg.svd"


def noise_spectrum(m: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """Singular values of an m×n Gaussian matrix (Marchenko–Pastur)."""
    return torch.linalg.svdvals(torch.randn(max(m, n), min(m, n), generator=gen))


def spectrum(kind: str, m: int, n: int, gen: torch.Generator) -> torch.Tensor:
    i = torch.arange(1, min(m, n) + 1, dtype=torch.float32)
    if kind == "noise":
        s = noise_spectrum(m, n, gen)
    elif kind == "power0.3":
        s = i**-0.3
    elif kind == "power+noise":
        floor = noise_spectrum(m, n, gen)
        signal = i**-0.5
        s = torch.sqrt(0.7 * signal**2 / (signal**2).sum() + 0.3 * floor**2 / (floor**2).sum())
    else:
        raise ValueError(f"unknown spectrum {kind!r}")
    s = s / s[1]
    s[0] = GAP
    return s


def synthetic_delta(kind: str, shape: tuple[int, int], seed: int) -> torch.Tensor:
    m, n = shape
    gen = torch.Generator().manual_seed(seed)
    s = spectrum(kind, m, n, gen)
    u = torch.linalg.qr(torch.randn(m, len(s), generator=gen)).Q
    v = torch.linalg.qr(torch.randn(n, len(s), generator=gen)).Q
    return (u * (s * 1e-3)) @ v.T  # ΔW-like scale


class IterationCounter(logging.Handler):
    """Reads the iteration count from top_k_svd's debug log."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.last: int | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if "power iterations" in str(record.msg):
            self.last = record.args[-1]


def timed(fn: Callable, repeats: int):
    walls, cpus, out = [], [], None
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        cpus.append(time.process_time() - c)
        walls.append(time.perf_counter() - w)
    return out, statistics.median(walls), statistics.median(cpus)


def compare(case: str, a: torch.Tensor, args, counter: IterationCounter) -> list[dict]:
    k = args.k
    oversample = 3  # top_k_svd's default

    def exact():
        U, S, _ = torch.linalg.svd(a, full_matrices=False)
        return U[:, 0], S[:k]

    def ours(**kw):
        U, S, _ = spectral.top_k_svd(a, k, **kw)
        return U[:, 0], S

    def lowrank(q, niter):
        torch.manual_seed(0)
        U, S, _ = torch.svd_lowrank(a, q=q, niter=niter)
        return U[:, 0], S[:k]

    results = {}
    results[EXACT] = (*timed(exact, args.exact_repeats), "")
    runs = [
        ("rlpredict randomized (block Krylov, default)", dict(method="randomized")),
        ("rlpredict randomized, krylov=False", dict(method="randomized", krylov=False)),
    ]
    if args.auto_row:
        runs.append(("rlpredict auto", dict(method="auto")))
    for name, kw in runs:
        counter.last = None
        out = timed(lambda kw=kw: ours(**kw), args.repeats)
        # No iteration count logged: the matrix went to the exact SVD (auto or fallback).
        results[name] = (*out, "exact" if counter.last is None else counter.last)
    iters = results[runs[0][0]][3]
    q = max(6, k)
    results[f"torch.svd_lowrank (q={q}, niter=2)"] = (
        *timed(lambda: lowrank(q, 2), args.repeats),
        2,
    )
    if isinstance(iters, int):
        name = f"torch.svd_lowrank (q={k + oversample}, niter=ours)"
        results[name] = (*timed(lambda: lowrank(k + oversample, iters), args.repeats), iters)
    if args.exact_tall and a.shape[0] < a.shape[1]:
        name = "rlpredict exact (svd of the transpose)"
        results[name] = (*timed(lambda: ours(method="exact"), args.exact_repeats), "")

    (u_ref, s_ref), wall_x, cpu_x, _ = results[EXACT]
    order = [EXACT] + sorted(set(results) - {EXACT}, key=lambda n: (n.startswith("rl"), n))
    rows = []
    for name in order:
        (u, s), wall, cpu, iters = results[name]
        rows.append(
            {
                "case": case,
                "shape": "×".join(map(str, a.shape)),
                "method": name,
                "iters": iters,
                "wall_s": wall,
                "cpu_s": cpu,
                "speedup_wall": wall_x / wall,
                "speedup_cpu": cpu_x / cpu,
                "sigma_rel_err": float(((s - s_ref).abs() / s_ref).max()),
                "abs_cos_u1": abs(float(u @ u_ref)),
            }
        )
    return rows


def real_deltas(run_dir: Path, max_per_kind: int):
    steps = discover_run(run_dir / "checkpoints")
    first, last = steps[min(steps)], steps[max(steps)]
    pattern = re.compile(spectral.DEFAULT_MODULE_REGEX)
    seen: dict[str, int] = {}
    with ModelReader(first) as base, ModelReader(last) as ckpt:
        for name in base.names():
            _, kind = spectral.parse_module_name(name)
            if not pattern.search(name) or seen.get(kind, 0) >= max_per_kind:
                continue
            seen[kind] = seen.get(kind, 0) + 1
            yield f"{run_dir.name} {last.name} {name}", ckpt.get(name) - base.get(name)


def markdown(rows: list[dict]) -> str:
    lines = [
        "| case | shape | method | iters | wall s | CPU s | × exact (wall) | × exact (CPU) "
        "| max σᵢ rel. err (i ≤ k) | \\|cos(u₁, u₁_exact)\\| |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['shape']} | {r['method']} | {r['iters']} | {r['wall_s']:.4f} "
            f"| {r['cpu_s']:.4f} | {r['speedup_wall']:.1f} | {r['speedup_cpu']:.1f} "
            f"| {r['sigma_rel_err']:.1e} | {r['abs_cos_u1']:.6f} |"
        )
    return "\n".join(lines)


def model_totals(rows: list[dict], spectra: list[str]) -> str:
    """Sum of median times over the 196 projection matrices of Qwen2.5-1.5B, per spectrum."""
    lines = [
        "| spectrum | method | model wall s | model CPU s | × exact (wall) | × exact (CPU) "
        "| worst σᵢ rel. err | worst \\|cos(u₁, u₁_exact)\\| |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for kind in spectra:
        mine = [r for r in rows if r["case"].startswith(f"{kind},")]
        totals = {}
        for method in {r["method"] for r in mine}:
            sel = [r for r in mine if r["method"] == method]
            if len(sel) != len(SHAPES):
                continue  # a row that only some shapes have
            weight = {r["case"]: LAYERS * PER_LAYER[r["case"].split("(")[1][:-1]] for r in sel}
            wall = sum(weight[r["case"]] * r["wall_s"] for r in sel)
            cpu = sum(weight[r["case"]] * r["cpu_s"] for r in sel)
            err = max(r["sigma_rel_err"] for r in sel)
            cos = min(r["abs_cos_u1"] for r in sel)
            totals[method] = (wall, cpu, err, cos)
        wall_x, cpu_x, _, _ = totals[EXACT]
        for method, (wall, cpu, err, cos) in sorted(totals.items(), key=lambda kv: -kv[1][1]):
            lines.append(
                f"| {kind} | {method} | {wall:.1f} | {cpu:.1f} | {wall_x / wall:.1f} "
                f"| {cpu_x / cpu:.1f} | {err:.1e} | {cos:.6f} |"
            )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spectra", nargs="+", default=["noise", "power+noise", "power0.3"])
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--exact-repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--k", type=int, default=1, help="singular triplets (accuracy: σ_1..σ_k, u_1)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--run", type=Path, help="a pipeline run dir (results/NAME) for real ΔW")
    p.add_argument("--max-per-kind", type=int, default=2, help="real matrices per module kind")
    p.add_argument("--no-synthetic", action="store_true")
    p.add_argument("--no-exact-tall", dest="exact_tall", action="store_false")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    counter = IterationCounter()
    logger = logging.getLogger("rlpredict.spectral")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(counter)

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, k={args.k}",
        flush=True,
    )
    rows: list[dict] = []
    if not args.no_synthetic:
        args.auto_row = False  # auto = randomized at these sizes
        for kind in args.spectra:
            for shape_name in args.shapes:
                a = synthetic_delta(kind, SHAPES[shape_name], args.seed)
                new = compare(f"{kind}, σ₁/σ₂={GAP} ({shape_name})", a, args, counter)
                print("\n".join(markdown(new).splitlines()[2:]), flush=True)
                rows += new
    real: list[dict] = []
    if args.run:
        args.auto_row = True
        for case, a in real_deltas(args.run, args.max_per_kind):
            new = compare(case, a, args, counter)
            print("\n".join(markdown(new).splitlines()[2:]), flush=True)
            real += new
    print()
    print(markdown(rows + real))
    if rows and set(args.shapes) == set(SHAPES):
        print()
        print(model_totals(rows, args.spectra))


if __name__ == "__main__":
    main()
