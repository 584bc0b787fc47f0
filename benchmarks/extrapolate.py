"""Benchmark: weight extrapolation W_a + α (W_b − W_a) of two fp32 checkpoints of S bytes each,
rlpredict (streaming, tensor at a time) vs mergekit's task_arithmetic (base a, model b with
weight α), side by side in one run.

Each tool runs in its own child process; we record wall time, CPU time (user + system, from
wait4), peak RSS (ru_maxrss) and the peak anonymous RSS (sampled from /proc every 20 ms; file
pages mapped by mmap count in RSS but not here), then compare the outputs tensor by tensor with
each other and with the formula evaluated in fp64.

    python benchmarks/extrapolate.py                      # generate a ~1 GB Qwen2-shaped pair
    python benchmarks/extrapolate.py --a DIR --b DIR      # use your own pair
    python benchmarks/extrapolate.py --mergekit /tmp/mergekit-venv/bin/mergekit-yaml

mergekit is not a dependency of rlpredict: install it into a separate venv, e.g.
    python3 -m venv /tmp/mergekit-venv
    /tmp/mergekit-venv/bin/pip install torch==2.13.0 mergekit
Without it the comparison is skipped with a message.

Target: our peak RSS below 0.5·S plus a fixed overhead (the RSS of a process that only imports
rlpredict), and our wall time no longer than mergekit's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from rlpredict.checkpoints import ModelReader, ModelWriter

DEFAULT_MERGEKIT = "/tmp/mergekit-venv/bin/mergekit-yaml"

OURS = """
import sys
from rlpredict.extrapolate import extrapolate_weights
a, b, out, alpha = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
extrapolate_weights("two-point", {0: a, 1: b}, None, out, alpha=alpha, copy_norms=False,
                    progress=False)
"""

BASELINE = "import rlpredict.extrapolate, rlpredict.checkpoints"

MERGEKIT_CONFIG = """merge_method: task_arithmetic
base_model: {a}
models:
  - model: {b}
    parameters:
      weight: {alpha}
parameters:
  normalize: false
dtype: float32
"""


# ---------------------------------------------------------------------------------------------
# Inputs


def qwen2_config(size_bytes: float) -> Qwen2Config:
    """Qwen2 shapes (hidden 1024, MLP 2816, GQA 16/2, vocab 32000, untied) with as many layers
    as fit in ``size_bytes`` of fp32."""
    base = dict(
        vocab_size=32000,
        hidden_size=1024,
        intermediate_size=2816,
        num_attention_heads=16,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
    )
    per_layer = _n_params(Qwen2Config(**base, num_hidden_layers=2)) - _n_params(
        Qwen2Config(**base, num_hidden_layers=1)
    )
    fixed = _n_params(Qwen2Config(**base, num_hidden_layers=1)) - per_layer
    layers = max(1, round((size_bytes / 4 - fixed) / per_layer))
    return Qwen2Config(**base, num_hidden_layers=layers, architectures=["Qwen2ForCausalLM"])


def _n_params(config: Qwen2Config) -> int:
    with torch.device("meta"):
        model = Qwen2ForCausalLM(config)
    return sum(p.numel() for p in model.state_dict().values())


def generate_pair(root: Path, size_bytes: float, seed: int = 0) -> tuple[Path, Path]:
    """Write a random fp32 pair a, b = a + small update, streamed tensor by tensor."""
    config = qwen2_config(size_bytes)
    template = root / "template"
    template.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(template)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in Qwen2ForCausalLM(config).state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    with (
        ModelWriter(root / "a", template) as wa,
        ModelWriter(root / "b", template) as wb,
    ):
        for name, shape in shapes.items():
            a = 0.02 * torch.randn(shape, generator=g)
            wa.add(name, a)
            wb.add(name, a.add_(torch.randn(shape, generator=g), alpha=1e-3))
            del a
        wa.finish()
        wb.finish()
    shutil.rmtree(template)
    return root / "a", root / "b"


def model_bytes(model_dir: Path) -> int:
    return sum(p.stat().st_size for p in Path(model_dir).glob("*.safetensors"))


def warm_cache(*dirs: Path) -> None:
    """Read the inputs once so every run starts with them in the page cache."""
    for d in dirs:
        for p in Path(d).glob("*.safetensors"):
            with p.open("rb") as f:
                while f.read(64 * 2**20):
                    pass


# ---------------------------------------------------------------------------------------------
# Measurement


# A tiny launcher: a child forked (or vforked) by this big process would report this process's
# peak RSS as its own ru_maxrss (Linux keeps the high-water mark across exec), so the command
# is started by a small `python -S` that reports the command's own rusage.
LAUNCHER = """
import json, os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, ru = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    json.dump({"cpu_s": ru.ru_utime + ru.ru_stime, "maxrss_kb": ru.ru_maxrss}, f)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def _tree(pid: int) -> list[int]:
    """pid and its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError):
            pass
    return out


def _anon_kb(pid: int) -> int:
    total = 0
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                total += sum(int(line.split()[1]) for line in f if line.startswith("RssAnon:"))
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def measure(cmd: list[str], log_path: Path) -> dict:
    """Run ``cmd`` as a child; wall, CPU (user + sys) and peak RSS / anonymous RSS."""
    usage_path = log_path.with_suffix(".usage.json")
    launcher = [sys.executable, "-S", "-c", LAUNCHER, str(usage_path), *cmd]
    with log_path.open("w") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(launcher, stdout=log, stderr=subprocess.STDOUT)
        peak_anon = 0
        stop = threading.Event()

        def sample():
            nonlocal peak_anon
            while not stop.is_set():
                peak_anon = max(peak_anon, _anon_kb(proc.pid))
                stop.wait(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        proc.wait()
        wall = time.perf_counter() - start
        stop.set()
        sampler.join()
    if proc.returncode != 0:
        tail = log_path.read_text()[-3000:]
        raise RuntimeError(f"{cmd[0]} failed with exit code {proc.returncode}:\n{tail}")
    usage = json.loads(usage_path.read_text())
    return {
        "wall_s": wall,
        "cpu_s": usage["cpu_s"],
        "peak_rss_gb": usage["maxrss_kb"] * 1024 / 1e9,
        "peak_anon_gb": peak_anon * 1024 / 1e9,
    }


def max_abs_diffs(a: Path, b: Path, alpha: float, outputs: dict[str, Path]) -> dict[str, float]:
    """max |output − fp64 formula| per output, and max |first output − second output|."""
    readers = {k: ModelReader(p) for k, p in outputs.items()}
    ra, rb = ModelReader(a), ModelReader(b)
    diffs = dict.fromkeys([*outputs, "pair"], 0.0)
    keys = list(outputs)
    try:
        for name in ra.names():
            wa, wb = ra.get(name).double(), rb.get(name).double()
            ref = wa + alpha * (wb - wa)
            del wa, wb
            got = {k: r.get(name) for k, r in readers.items()}
            for k, t in got.items():
                diffs[k] = max(diffs[k], float((t.double() - ref).abs().max()))
            if len(keys) == 2:
                pair = (got[keys[0]] - got[keys[1]]).abs().max()
                diffs["pair"] = max(diffs["pair"], float(pair))
    finally:
        for r in [ra, rb, *readers.values()]:
            r.close()
    return diffs


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", type=Path, help="model a (the base); generated when omitted")
    parser.add_argument("--b", type=Path, help="model b; generated when omitted")
    parser.add_argument("--size-gb", type=float, default=1.0, help="size of each generated model")
    parser.add_argument("--alpha", type=float, default=2.5)
    parser.add_argument("--repeats", type=int, default=3, help="runs per tool (median reported)")
    parser.add_argument("--mergekit", default=DEFAULT_MERGEKIT, help="path to mergekit-yaml")
    parser.add_argument(
        "--mergekit-args",
        default="--no-copy-tokenizer --no-write-model-card --quiet",
        help="extra mergekit-yaml options",
    )
    parser.add_argument("--workdir", type=Path, help="where inputs/outputs go (default: tmp)")
    parser.add_argument("--json", type=Path, help="also write the measurements as JSON here")
    args = parser.parse_args(argv)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="rlpredict-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return _run(args, work)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


def _run(args, work: Path) -> int:
    if (args.a is None) != (args.b is None):
        sys.exit("give both --a and --b, or neither")
    if args.a is None:
        t0 = time.perf_counter()
        a, b = generate_pair(work / "inputs", args.size_gb * 1e9)
        print(f"generated a Qwen2-shaped fp32 pair in {time.perf_counter() - t0:.1f} s")
    else:
        a, b = args.a, args.b
    size = model_bytes(a)
    with ModelReader(a) as r:
        largest = max(4 * torch.Size(r.shape(n)).numel() for n in r.names())
        n_tensors = len(r.names())
    print(f"S = {size / 1e9:.3f} GB per model, {n_tensors} tensors, largest {largest / 1e6:.0f} MB")

    tools = {
        "rlpredict": lambda out: [
            sys.executable,
            "-c",
            OURS,
            str(a),
            str(b),
            str(out),
            str(args.alpha),
        ]
    }
    mergekit = Path(args.mergekit) if args.mergekit else None
    if mergekit is not None and os.access(mergekit, os.X_OK):
        config = work / "mergekit.yml"
        config.write_text(MERGEKIT_CONFIG.format(a=a, b=b, alpha=args.alpha))
        extra = args.mergekit_args.split()
        tools["mergekit task_arithmetic"] = lambda out: [
            str(mergekit),
            str(config),
            str(out),
            *extra,
        ]
    else:
        print(
            f"mergekit not found at {args.mergekit!r}: skipping the comparison "
            f"(install it in a separate venv and pass --mergekit PATH)"
        )

    baseline = measure([sys.executable, "-c", BASELINE], work / "baseline.log")
    runs: dict[str, list[dict]] = {k: [] for k in tools}
    outputs = {k: work / f"out-{i}" for i, k in enumerate(tools)}
    for rep in range(args.repeats):
        order = list(tools) if rep % 2 == 0 else list(reversed(tools))
        for name in order:
            shutil.rmtree(outputs[name], ignore_errors=True)
            warm_cache(a, b)
            runs[name].append(measure(tools[name](outputs[name]), work / f"{name[:9]}.log"))
            print(
                f"  run {rep + 1} {name}: "
                + ", ".join(f"{k} {v:.2f}" for k, v in runs[name][-1].items())
            )

    diffs = max_abs_diffs(a, b, args.alpha, outputs)
    med = {k: {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in runs.items()}
    print()
    print(
        f"W_a + {args.alpha} (W_b − W_a), fp32, S = {size / 1e9:.2f} GB per model, "
        f"median of {args.repeats}, inputs in page cache, {os.cpu_count()} CPUs"
    )
    print()
    print(
        "| tool | wall s | CPU s | peak RSS GB | peak anon RSS GB | peak RSS / S | "
        "max abs diff vs fp64 formula |"
    )
    print("|---|---|---|---|---|---|---|")
    for k, m in med.items():
        print(
            f"| {k} | {m['wall_s']:.1f} | {m['cpu_s']:.1f} | {m['peak_rss_gb']:.2f} | "
            f"{m['peak_anon_gb']:.2f} | {m['peak_rss_gb'] * 1e9 / size:.2f} | "
            f"{diffs[k]:.2e} |"
        )
    print()
    ours = med["rlpredict"]
    print(
        f"fixed overhead (a process importing rlpredict): {baseline['peak_rss_gb']:.2f} GB peak RSS"
    )
    over = ours["peak_rss_gb"] - baseline["peak_rss_gb"]
    mem_ok = over * 1e9 < 0.5 * size
    print(
        f"rlpredict peak RSS above that overhead: {over:.2f} GB = {over * 1e9 / size:.2f}·S "
        f"(target < 0.5·S): {'met' if mem_ok else 'NOT met'}"
    )
    speed_ok = None
    if len(med) == 2:
        mk = med["mergekit task_arithmetic"]
        speed_ok = ours["wall_s"] <= mk["wall_s"]
        print(f"max |rlpredict − mergekit| = {diffs['pair']:.2e}")
        print(
            f"wall time rlpredict / mergekit = {ours['wall_s'] / mk['wall_s']:.2f} "
            f"(target <= 1): {'met' if speed_ok else 'NOT met'}"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "size_bytes": size,
                    "alpha": args.alpha,
                    "repeats": args.repeats,
                    "runs": runs,
                    "median": med,
                    "baseline": baseline,
                    "max_abs_diff": diffs,
                    "memory_target_met": mem_ok,
                    "speed_target_met": speed_ok,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
