"""Top-1 SVD of ΔW: exact torch.linalg.svd vs torch.svd_lowrank vs rlpredict.spectral.top_k_svd.

Synthetic ΔW shaped like Qwen2.5-1.5B's projections (down_proj 1536×8960, gate/up_proj
8960×1536, q/o_proj 1536×1536, k/v_proj 256×1536) with a planted top gap σ_1/σ_2 = 1.05 on
slowly decaying spectra, and optionally the real ΔW of a pipeline run (last checkpoint minus
step_0). Accuracy is measured against the exact SVD of the same fp32 matrix. Prints one
markdown table; times are medians over repeats, wall (perf_counter) and CPU (process_time).

    python benchmarks/spectral.py                       # synthetic, ~10 min on 2 cores
    python benchmarks/spectral.py --run results/default # + the run's real ΔW
"""

from __future__ import annotations

import argparse
import logging
import re
import statistics
import time
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
GAP = 1.05


def noise_spectrum(m: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """Singular values of an m×n Gaussian matrix (Marchenko–Pastur): flat, the hardest case."""
    g = torch.randn(max(m, n), min(m, n), generator=gen)
    return torch.linalg.svdvals(g)


def spectrum(kind: str, m: int, n: int, gen: torch.Generator) -> torch.Tensor:
    r = min(m, n)
    i = torch.arange(1, r + 1, dtype=torch.float32)
    if kind == "noise":
        s = noise_spectrum(m, n, gen)
    elif kind == "power0.3":
        s = i**-0.3
    elif kind == "power+noise":
        # A power-law signal on a noise floor that holds 30 % of the energy.
        floor = noise_spectrum(m, n, gen)
        signal = i**-0.5
        s = torch.sqrt(0.7 * signal**2 / (signal**2).sum() + 0.3 * floor**2 / (floor**2).sum())
    else:
        raise ValueError(f"unknown spectrum {kind!r}")
    s = s / s[1]
    s[0] = GAP  # σ_1/σ_2 = GAP
    return s


def synthetic_delta(kind: str, shape: tuple[int, int], seed: int) -> torch.Tensor:
    m, n = shape
    gen = torch.Generator().manual_seed(seed)
    s = spectrum(kind, m, n, gen)
    u = torch.linalg.qr(torch.randn(m, len(s), generator=gen)).Q
    v = torch.linalg.qr(torch.randn(n, len(s), generator=gen)).Q
    return (u * (s * 1e-3)) @ v.T  # ΔW-like scale


class IterationCounter(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.last = None

    def emit(self, record):
        if "power iterations" in record.msg:
            self.last = record.args[-1]


def timed(fn, repeats: int):
    walls, cpus, out = [], [], None
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        cpus.append(time.process_time() - c)
        walls.append(time.perf_counter() - w)
    return out, statistics.median(walls), statistics.median(cpus)


def compare(name: str, a: torch.Tensor, repeats: int, exact_repeats: int, counter) -> list[dict]:
    rows = []
    (U, S, _), wall_x, cpu_x = timed(
        lambda: torch.linalg.svd(a, full_matrices=False), exact_repeats
    )
    u_ref, s_ref = U[:, 0], float(S[0])

    def row(method, out, wall, cpu, iters=""):
        u, s = out
        rows.append(
            {
                "case": name,
                "shape": "×".join(map(str, a.shape)),
                "method": method,
                "iters": iters,
                "wall_s": wall,
                "cpu_s": cpu,
                "speedup_wall": wall_x / wall,
                "speedup_cpu": cpu_x / cpu,
                "sigma1_rel_err": abs(s - s_ref) / s_ref,
                "abs_cos_u1": abs(float(u @ u_ref)),
            }
        )

    row("exact torch.linalg.svd", (u_ref, s_ref), wall_x, cpu_x)

    def lowrank(q, niter):
        torch.manual_seed(0)
        U, S, _ = torch.svd_lowrank(a, q=q, niter=niter)
        return U[:, 0], float(S[0])

    def ours():
        U, S, _ = spectral.top_k_svd(a, 1, method="randomized")
        return U[:, 0], float(S[0])

    out, wall, cpu = timed(lambda: lowrank(6, 2), repeats)
    row("torch.svd_lowrank (q=6, niter=2)", out, wall, cpu, 2)
    out, wall, cpu = timed(ours, repeats)
    iters = counter.last
    row("rlpredict top_k_svd", out, wall, cpu, iters)
    q = 1 + 8
    out, wall, cpu = timed(lambda: lowrank(q, iters), repeats)
    row(f"torch.svd_lowrank (q={q}, niter={iters})", out, wall, cpu, iters)
    return rows


def real_deltas(run_dir: Path, max_per_kind: int):
    steps = discover_run(run_dir / "checkpoints")
    first, last = steps[min(steps)], steps[max(steps)]
    pattern = re.compile(spectral.DEFAULT_MODULE_REGEX)
    seen: dict[str, int] = {}
    with ModelReader(first) as base, ModelReader(last) as ckpt:
        for name in base.names():
            if not pattern.search(name):
                continue
            _, kind = spectral.parse_module_name(name)
            if seen.get(kind, 0) >= max_per_kind:
                continue
            seen[kind] = seen.get(kind, 0) + 1
            yield f"real {last.name} {name}", ckpt.get(name) - base.get(name)


def markdown(rows: list[dict]) -> str:
    head = (
        "| case | shape | method | iters | wall s | CPU s | × vs exact (wall) | × vs exact (CPU) "
        "| σ₁ rel. err | \\|cos(u₁, u₁_exact)\\| |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['shape']} | {r['method']} | {r['iters']} | {r['wall_s']:.4f} "
            f"| {r['cpu_s']:.4f} | {r['speedup_wall']:.1f} | {r['speedup_cpu']:.1f} "
            f"| {r['sigma1_rel_err']:.1e} | {r['abs_cos_u1']:.6f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spectra", nargs="+", default=["noise", "power+noise", "power0.3"])
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--exact-repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run", type=Path, help="a pipeline run dir (results/NAME) for real ΔW")
    p.add_argument("--max-per-kind", type=int, default=2, help="real matrices per module kind")
    p.add_argument("--no-synthetic", action="store_true")
    args = p.parse_args()

    counter = IterationCounter()
    logger = logging.getLogger("rlpredict.spectral")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(counter)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, top-1")
    rows: list[dict] = []
    if not args.no_synthetic:
        for kind in args.spectra:
            for shape_name in args.shapes:
                a = synthetic_delta(kind, SHAPES[shape_name], args.seed)
                name = f"{kind}, σ₁/σ₂={GAP} ({shape_name})"
                rows += compare(name, a, args.repeats, args.exact_repeats, counter)
                print("\n".join(markdown(rows[-4:]).splitlines()[2:]), flush=True)
    if args.run:
        for name, a in real_deltas(args.run, args.max_per_kind):
            rows += compare(name, a, args.repeats, args.exact_repeats, counter)
            print("\n".join(markdown(rows[-4:]).splitlines()[2:]), flush=True)
    print()
    print(markdown(rows))


if __name__ == "__main__":
    main()
