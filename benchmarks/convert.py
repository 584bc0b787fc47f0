"""Peak memory and time of `rlpredict convert` against the size of a verl checkpoint.

Writes two-rank verl checkpoints the way tests/test_verl_checkpoints.py does (a random fp32
Qwen2 wrapped with FSDP2 ``fully_shard`` on two CPU ranks, saved by verl's own
FSDPCheckpointManager, ``save_contents: [model]``) in the verl environment (``make
verl-env``), at several layer counts, then runs ``rlpredict convert --prefer shards`` on
each in a subprocess and reads its peak RSS from wait4(). The fixed overhead is the peak RSS
of a process that only imports the converter. Target: peak RSS − overhead well below S,
S = bytes of one full fp32 model (the converter holds one tensor's pieces and its merged
copy; the rank files are memory-mapped).

    python benchmarks/convert.py                 # 2 and 8 layers (~0.2 and ~0.6 GB)
    python benchmarks/convert.py --layers 4 16
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from model_shapes import QWEN25_05B

REPO = Path(__file__).resolve().parents[1]
VERL_PYTHON = Path(os.environ.get("RLPREDICT_VERL_PYTHON", REPO / ".venv-verl" / "bin" / "python"))
SHAPE = {**QWEN25_05B, "architectures": ["Qwen2ForCausalLM"]}


# ---------------------------------------------------------------------------------------
# Writer side: runs in the verl environment.


def _save_rank(rank: int, world: int, out: str, layers: int, port: int) -> None:
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM
    from verl.utils.checkpoint.fsdp_checkpoint_manager import FSDPCheckpointManager

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(num_hidden_layers=layers, **SHAPE)).float()
    tokenizer = AutoTokenizer.from_pretrained(Path(out) / "tokenizer")
    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("fsdp",))
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    manager = FSDPCheckpointManager(
        model, None, None, processing_class=tokenizer,
        checkpoint_config={"save_contents": ["model"], "load_contents": ["model"]},
    )  # fmt: skip
    run = Path(out) / "verl"
    manager.save_checkpoint(str(run / "global_step_1" / "actor"), None, 1)
    if rank == 0:
        (run / "latest_checkpointed_iteration.txt").write_text("1")
    dist.destroy_process_group()


def save_run(out: Path, layers: int) -> None:
    """A one-step, two-rank verl run at out/verl (verl environment)."""
    import torch.multiprocessing as mp
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
        pad_token="<pad>",
        eos_token="<eos>",
        unk_token="<unk>",
    )
    tok.save_pretrained(out / "tokenizer")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_save_rank, args=(2, str(out), layers, port), nprocs=2, start_method="fork")


# ---------------------------------------------------------------------------------------
# Measuring side: runs in the project environment.


# The conversion, in a child that samples its own anonymous and file-backed resident memory
# (/proc/self/status RssAnon, RssFile) every 5 ms: mapped rank-file pages count in the RSS
# but are page cache the kernel reclaims under pressure; anonymous memory is what it holds.
CHILD = """
import sys, threading, time
from rlpredict.cli import main

peak = {"RssAnon": 0, "RssFile": 0}
def sample():
    while True:
        for line in open("/proc/self/status"):
            key, _, value = line.partition(":")
            if key in peak:
                peak[key] = max(peak[key], int(value.split()[0]) * 1024)
        time.sleep(0.005)
threading.Thread(target=sample, daemon=True).start()
time.sleep(0.05)
base = dict(peak)
code = main(sys.argv[1:])
time.sleep(0.05)
print(base["RssAnon"], peak["RssAnon"], peak["RssFile"])
sys.exit(code)
"""


def peak_rss(argv: list[str]) -> tuple[int, float, str]:
    """Peak RSS (bytes), wall time (s) and stdout of a child process; raises if it fails."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    out, err = proc.stdout.read().decode(), proc.stderr.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {err[-2000:]}")
    return usage.ru_maxrss * 1024, seconds, out


def measure(layers: int, work: Path) -> dict:
    out = work / f"layers{layers}"
    out.mkdir()
    start = time.perf_counter()
    save = [str(VERL_PYTHON), __file__, "save", str(out), str(layers)]
    subprocess.run(save, check=True, capture_output=True)
    save_s = time.perf_counter() - start
    actor = out / "verl" / "global_step_1" / "actor"
    shards = sum(p.stat().st_size for p in actor.glob("model_world_size_*_rank_*.pt"))
    convert = [sys.executable, "-c", CHILD, "convert", str(out / "verl"), "--prefer", "shards"]
    rss, seconds, printed = peak_rss([*convert, "--out", str(out / "fp32")])
    anon_before, anon, file_backed = (int(x) for x in printed.split()[-3:])
    model = sum(p.stat().st_size for p in (out / "fp32" / "step_1").glob("*.safetensors"))
    shutil.rmtree(out)
    return {"layers": layers, "shards": shards, "model": model, "rss": rss, "s": seconds,
            "anon": anon - anon_before, "file": file_backed, "save_s": save_s}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 8])
    args = parser.parse_args()
    if not VERL_PYTHON.exists():
        sys.exit(f"{VERL_PYTHON}: the verl environment is missing; create it with make verl-env")
    overhead, _, _ = peak_rss([sys.executable, "-c", "import rlpredict.cli, "
                               "rlpredict.train.verl_checkpoints"])  # fmt: skip
    gb = 1e9
    print(f"fixed overhead (interpreter, torch, converter imported): {overhead / gb:.2f} GB")
    print(
        "| layers | rank shards S (GB) | peak RSS (GB) | RSS − overhead (GB) | of which "
        "mapped shard pages (GB) | anonymous growth (GB) | anonymous / S | convert (s) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="rlpredict_convert_") as tmp:
        for layers in args.layers:
            r = measure(layers, Path(tmp))
            extra = r["rss"] - overhead
            print(
                f"| {r['layers']} | {r['shards'] / gb:.2f} | {r['rss'] / gb:.2f} | "
                f"{extra / gb:.2f} | {r['file'] / gb:.2f} | {r['anon'] / gb:.2f} | "
                f"{r['anon'] / r['shards']:.2f} | {r['s']:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    if sys.argv[1:2] == ["save"]:
        save_run(Path(sys.argv[2]), int(sys.argv[3]))
    else:
        main()
