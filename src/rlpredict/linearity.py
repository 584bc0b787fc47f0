"""How linear are RL trajectories in step? Per-weight and per-token R² of a line vs step.

Both analyses follow "Not All Steps are Informative" (arXiv 2601.04537):

- weight linearity: a seeded sample of 0.1 % of the entries of every ``.weight`` tensor (at
  least 50), read tensor at a time from each checkpoint; entries that move by more than
  ``min_change`` (max − min over the run) and take at least ``min_distinct`` distinct values
  (bf16 quantises trajectories into plateaus) get the R² of a least-squares line against the
  normalised step. ``min_distinct`` is capped at the number of checkpoints (with 3
  checkpoints, all 3 values must differ), so the default works from the minimum of 3.
- log-prob linearity: a fixed probe set of base-model responses, teacher-forced through every
  checkpoint (one model in memory at a time); per response token the log-prob of the actual
  token; tokens whose log-prob moves by more than ``min_change`` between the first and last
  checkpoint get the R² of a line vs step.

When the filters keep nothing, both analyses stop with a ValueError naming the checkpoints and
the filters rather than report statistics of an empty set.

R² of a least-squares line with intercept equals the squared Pearson correlation, which
``r2_vs_step`` computes for many series at once. The PLS R² of rank-1 trajectories per layer ×
module lives in ``rlpredict.alpharl``.
"""

from __future__ import annotations

import json
import math
import re
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from rlpredict.checkpoints import (
    CheckpointError,
    ModelReader,
    atomic_output_file,
    check_compatible,
)
from rlpredict.decoding import (
    cut_at_stop,
    encode_text,
    generate_tokens,
    left_pad,
    load_models,
    load_tokenizer,
    score_tokens,
    stop_token_ids,
)
from rlpredict.tasks.prompts import render_prompt

WEIGHT_REGEX = r"\.weight$"
MIN_CHECKPOINTS = 3
MIN_DISTINCT = 4  # distinct values an entry must take (capped at the number of checkpoints)


def r2_vs_step(steps: Sequence[float] | np.ndarray, values) -> np.ndarray:
    """R² of a least-squares line (with intercept) of each series against ``steps``.

    ``values`` has shape (n_steps,) or (n_series, n_steps) (numpy or torch). Returns a float64
    array of shape () or (n_series,); a constant series gives NaN.
    """
    x = np.asarray(steps, dtype=np.float64)
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    y = np.asarray(values, dtype=np.float64)
    if y.shape[-1] != x.shape[0]:
        raise ValueError(f"values have {y.shape[-1]} steps, steps has {x.shape[0]}")
    xc = x - x.mean()
    yc = y - y.mean(axis=-1, keepdims=True)
    sxx = float(xc @ xc)
    syy = np.einsum("...t,...t->...", yc, yc)
    sxy = yc @ xc
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = sxy**2 / (sxx * syy)
    ok = (syy > 0) & (sxx > 0)
    return np.where(ok, np.clip(r2, 0.0, 1.0), np.nan)


def normalised_steps(steps: Sequence[float]) -> np.ndarray:
    """Steps mapped linearly onto [0, 1] (first → 0, last → 1)."""
    s = np.asarray(steps, dtype=np.float64)
    span = s.max() - s.min()
    return (s - s.min()) / span if span > 0 else s - s.min()


def summarize_r2(r2: Sequence[float] | pd.Series, threshold: float = 0.7) -> dict:
    """Median R² and fraction of series with R² above ``threshold`` (NaNs dropped)."""
    r = np.asarray(r2, dtype=np.float64)
    r = r[~np.isnan(r)]
    return {
        "n": int(r.size),
        "median_r2": float(np.median(r)) if r.size else float("nan"),
        "mean_r2": float(np.mean(r)) if r.size else float("nan"),
        f"frac_r2_gt_{threshold:g}": float(np.mean(r > threshold)) if r.size else float("nan"),
    }


# --------------------------------------------------------------------------------------
# Weight linearity


def sample_indices(name: str, numel: int, fraction: float, min_samples: int, seed: int):
    """Seeded flat indices of the entries sampled from one tensor (sorted, without repeats)."""
    k = min(numel, max(min_samples, int(numel * fraction)))
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    return np.sort(rng.choice(numel, size=k, replace=False))


def sample_weight_trajectories(
    checkpoints: Mapping[int, str | Path],
    *,
    fraction: float = 1e-3,
    min_samples: int = 50,
    seed: int = 0,
    include: str = WEIGHT_REGEX,
) -> tuple[np.ndarray, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Values of sampled entries of every tensor matching ``include`` across checkpoints.

    ``checkpoints`` maps step → HF model dir. Each checkpoint is read tensor at a time. Returns
    the sorted steps and {tensor name: (flat indices [k], values [n_steps, k] float64)}.
    """
    steps = sorted(checkpoints)
    if len(steps) < MIN_CHECKPOINTS:
        raise ValueError(
            f"weight linearity needs at least {MIN_CHECKPOINTS} checkpoints, got {len(steps)}"
        )
    pattern = re.compile(include)
    with ModelReader(checkpoints[steps[0]]) as first:
        names = [n for n in first.names() if pattern.search(n)]
        if not names:
            raise CheckpointError(f"{first.model_dir}: no tensor matches {include!r}")
        indices = {
            n: sample_indices(n, math.prod(first.shape(n)), fraction, min_samples, seed)
            for n in names
        }
        values = {n: np.empty((len(steps), len(indices[n]))) for n in names}
        for t, step in enumerate(tqdm(steps, desc="weight trajectories", unit="ckpt")):
            reader = first if t == 0 else ModelReader(checkpoints[step])
            with reader:
                if t:
                    check_compatible(first, reader)
                for n in names:
                    flat = reader.get(n).reshape(-1)
                    values[n][t] = flat[torch.from_numpy(indices[n])].double().numpy()
    return np.asarray(steps), {n: (indices[n], values[n]) for n in names}


def _count_distinct(values: np.ndarray) -> np.ndarray:
    """Distinct values per column of [n_steps, k]."""
    s = np.sort(values, axis=0)
    return 1 + (np.diff(s, axis=0) != 0).sum(axis=0)


def effective_min_distinct(min_distinct: int, n_checkpoints: int) -> int:
    """Distinct values an entry must take: ``min_distinct``, at most ``n_checkpoints``."""
    if min_distinct < 1:
        raise ValueError(f"min_distinct must be at least 1, got {min_distinct}")
    return min(int(min_distinct), int(n_checkpoints))


def weight_r2_table(
    steps: Sequence[float],
    trajectories: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    min_change: float = 1e-4,
    min_distinct: int = MIN_DISTINCT,
) -> pd.DataFrame:
    """Filter sampled trajectories and fit each kept one: columns tensor, index, change, slope, r2.

    Kept entries move by more than ``min_change`` and take at least
    ``effective_min_distinct(min_distinct, len(steps))`` distinct values. ``slope`` is per
    unit of normalised step (the whole run), in weight units. The table may be empty.
    """
    min_distinct = effective_min_distinct(min_distinct, len(steps))
    x = normalised_steps(steps)
    xc = x - x.mean()
    frames = []
    for name, (idx, vals) in trajectories.items():
        change = vals.max(axis=0) - vals.min(axis=0)
        keep = (change > min_change) & (_count_distinct(vals) >= min_distinct)
        if not keep.any():
            continue
        kept = vals[:, keep]
        slope = (xc @ (kept - kept.mean(axis=0))) / (xc @ xc)
        frames.append(
            pd.DataFrame(
                {
                    "tensor": name,
                    "index": idx[keep],
                    "change": change[keep],
                    "slope": slope,
                    "r2": r2_vs_step(x, kept.T),
                }
            )
        )
    if not frames:
        return pd.DataFrame(
            {
                "tensor": pd.Series(dtype=str),
                "index": pd.Series(dtype=np.int64),
                "change": pd.Series(dtype=float),
                "slope": pd.Series(dtype=float),
                "r2": pd.Series(dtype=float),
            }
        )
    return pd.concat(frames, ignore_index=True)


def weight_linearity(
    checkpoints: Mapping[int, str | Path],
    *,
    fraction: float = 1e-3,
    min_samples: int = 50,
    min_change: float = 1e-4,
    min_distinct: int = MIN_DISTINCT,
    seed: int = 0,
    include: str = WEIGHT_REGEX,
    r2_threshold: float = 0.7,
) -> tuple[pd.DataFrame, dict]:
    """Per-weight R² vs step over a run (defaults as in the paper).

    ``checkpoints`` maps step → HF model dir (at least 3). ``min_distinct`` is capped at the
    number of checkpoints (``effective_min_distinct``). Returns the per-entry table
    (``weight_r2_table``) and a summary: entries sampled and kept, the filters applied, median
    and mean R², fraction with R² > ``r2_threshold``.

    Raises:
        ValueError: fewer than 3 checkpoints, or no sampled entry passes the filters (the
            message names the checkpoints, the filters and how many entries each one kept).
        CheckpointError: unreadable or mismatched checkpoints, or no tensor matches ``include``.
    """
    steps, trajectories = sample_weight_trajectories(
        checkpoints, fraction=fraction, min_samples=min_samples, seed=seed, include=include
    )
    distinct = effective_min_distinct(min_distinct, len(steps))
    table = weight_r2_table(steps, trajectories, min_change=min_change, min_distinct=distinct)
    n_sampled = int(sum(len(idx) for idx, _ in trajectories.values()))
    if table.empty:
        moved = sum(
            int((vals.max(axis=0) - vals.min(axis=0) > min_change).sum())
            for _, vals in trajectories.values()
        )
        raise ValueError(
            f"weight linearity kept no entry over checkpoints {_describe(checkpoints)}: of "
            f"{n_sampled} entries sampled from {len(trajectories)} tensors, {moved} moved by "
            f"more than min_change={min_change:g} and none of those also took at least "
            f"min_distinct={distinct} distinct values; lower min_change or min_distinct, or "
            f"use checkpoints further apart"
        )
    summary = {
        "n_checkpoints": len(steps),
        "n_tensors": len(trajectories),
        "n_sampled": n_sampled,
        "min_change": float(min_change),
        "min_distinct": distinct,
        **summarize_r2(table["r2"], r2_threshold),
    }
    summary["n_kept"] = summary.pop("n")
    return table, summary


def _describe(checkpoints: Mapping[int, str | Path]) -> str:
    """The checkpoints as STEP=DIR pairs in step order, e.g. ``0=base, 10=run/step_10``."""
    return ", ".join(f"{step}={checkpoints[step]}" for step in sorted(checkpoints))


def per_tensor_r2(table: pd.DataFrame) -> pd.DataFrame:
    """Median R² and kept-entry count per tensor, with layer index and module name parsed."""
    out = table.groupby("tensor", sort=False)["r2"].agg(median_r2="median", n="size")
    out = out.reset_index()
    layer = out["tensor"].str.extract(r"layers\.(\d+)\.")[0]
    out["layer"] = pd.to_numeric(layer, errors="coerce").astype("Int64")
    out["module"] = out["tensor"].str.replace(r"^.*layers\.\d+\.", "", regex=True)
    out["module"] = out["module"].str.replace(r"\.weight$", "", regex=True)
    return out


# --------------------------------------------------------------------------------------
# Token log-prob linearity


class Probe(NamedTuple):
    """One prompt and the base model's response to it, as token ids."""

    prompt_ids: list[int]
    response_ids: list[int]


def generate_probe_responses(
    model_dir: str | Path,
    prompts: Sequence[str],
    *,
    chat: bool = False,
    max_new_tokens: int = 64,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 16,
    device: str = "cpu",
    dtype: str = "float32",
) -> list[Probe]:
    """The probe set: the model's responses (greedy, or sampled with ``seed``) to ``prompts``.

    ``prompts`` are the task's problems as the user writes them; each is fed to the model as
    :func:`rlpredict.tasks.prompts.render_prompt` renders it (``chat``: a user message in the
    tokenizer's chat template, ending with the assistant header), encoded as lm-eval's HF
    backend encodes prompts. Batches are left-padded and told apart from the prompt by the
    attention mask, so a pad token that is also the EOS (SmolLM2's ``<|im_end|>``) is never
    confused with the prompt or the response. A response ends with (and includes) the first
    stop token (:func:`rlpredict.decoding.stop_token_ids`: EOS or end-of-turn) when the model
    produced one within ``max_new_tokens``. Empty responses are dropped.

    Raises:
        ValueError: ``chat`` with a tokenizer that has no chat template (names the tokenizer).
    """
    tok = load_tokenizer(model_dir)
    texts = [render_prompt(tok, p, chat) for p in prompts]
    (model,) = load_models([model_dir], dtype=dtype, device=device)
    stops = stop_token_ids(tok, [model])
    generator = torch.Generator(device=device).manual_seed(seed)
    probes = []
    for start in range(0, len(texts), batch_size):
        chunk = [encode_text(tok, t) for t in texts[start : start + batch_size]]
        ids, mask = left_pad(chunk, tok.pad_token_id)
        new = generate_tokens(
            [model],
            ids,
            mask,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature,
            top_p=top_p,
            eos_token_id=stops,
            pad_token_id=tok.pad_token_id,
            generator=generator,
        )
        for prompt_ids, row in zip(chunk, new.tolist(), strict=True):
            response = cut_at_stop(row, stops, keep_stop=True)
            if response:
                probes.append(Probe(prompt_ids, response))
    del model
    _release(device)
    return probes


def read_probe_prompts(path: str | Path, n: int) -> list[str]:
    """The first ``n`` prompts of a task split (jsonl rows ``{"prompt": ..., "answer": ...}``),
    as the user writes them; errors name the file and line."""
    from rlpredict.tasks.arithmetic import load_split

    if n < 1:
        raise ValueError(f"{path}: linearity.probes must be at least 1, got {n}")
    prompts = [str(row["prompt"]) for row in load_split(path)[:n]]
    if not prompts:
        raise ValueError(f"{path}: no prompt to generate probe responses from")
    return prompts


def save_probes(probes: Sequence[Probe], path: str | Path) -> None:
    """Write a probe set as JSON lines ({"prompt_ids": [...], "response_ids": [...]}),
    atomically: ``path`` appears complete or not at all."""
    lines = [json.dumps(p._asdict()) for p in probes]
    with atomic_output_file(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in lines))


def load_probes(path: str | Path) -> list[Probe]:
    """Read a probe set written by ``save_probes``."""
    probes = []
    for n, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            probes.append(Probe(list(row["prompt_ids"]), list(row["response_ids"])))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path}:{n}: not a probe line ({e!r})") from None
    return probes


def _release(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.empty_cache()


def token_logprob_trajectories(
    checkpoints: Mapping[int, str | Path],
    probes: Sequence[Probe],
    *,
    batch_size: int = 16,
    device: str = "cpu",
) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Teacher-forced log-prob of every probe response token at every checkpoint.

    Loads one checkpoint at a time. Returns the sorted steps, log-probs [n_steps, n_tokens]
    (float64) and a token table with columns probe, position, token_id.
    """
    if not probes:
        raise ValueError("the probe set is empty")
    steps = sorted(checkpoints)
    pairs = [(p.prompt_ids, p.response_ids) for p in probes]
    rows = []
    for step in tqdm(steps, desc="token log-probs", unit="ckpt"):
        (model,) = load_models([checkpoints[step]], device=device)
        scored = score_tokens([model], pairs, batch_size=batch_size)
        rows.append(torch.cat([lp for lp, _ in scored]).double().numpy())
        del model  # freed by refcount before the next checkpoint loads
        _release(device)
    tokens = pd.DataFrame(
        {
            "probe": np.repeat(np.arange(len(probes)), [len(p.response_ids) for p in probes]),
            "position": np.concatenate([np.arange(len(p.response_ids)) for p in probes]),
            "token_id": np.concatenate([np.asarray(p.response_ids) for p in probes]),
        }
    )
    return np.asarray(steps), np.stack(rows), tokens


def logprob_r2_table(
    steps: Sequence[float],
    logprobs: np.ndarray,
    tokens: pd.DataFrame,
    *,
    min_change: float = 0.2,
) -> pd.DataFrame:
    """R² vs step of the tokens whose log-prob moves by more than ``min_change`` first → last.

    Adds columns logprob_first, logprob_last, change (last − first) and r2 to ``tokens``.
    """
    change = logprobs[-1] - logprobs[0]
    keep = np.abs(change) > min_change
    out = tokens.loc[keep].reset_index(drop=True)
    out["logprob_first"] = logprobs[0, keep]
    out["logprob_last"] = logprobs[-1, keep]
    out["change"] = change[keep]
    out["r2"] = r2_vs_step(normalised_steps(steps), logprobs[:, keep].T)
    return out


def logprob_linearity(
    checkpoints: Mapping[int, str | Path],
    probes: Sequence[Probe],
    *,
    min_change: float = 0.2,
    batch_size: int = 16,
    device: str = "cpu",
    r2_threshold: float = 0.7,
) -> tuple[pd.DataFrame, dict]:
    """Per-token log-prob R² vs step on a fixed probe set (``generate_probe_responses``).

    Returns the table of kept tokens (``logprob_r2_table``) and a summary: tokens scored and
    kept, the filter applied, median and mean R², fraction with R² > ``r2_threshold``.

    Raises:
        ValueError: fewer than 3 checkpoints, an empty probe set, or no token whose log-prob
            moves by more than ``min_change`` (the message names the checkpoints, the filter and
            the largest move seen).
    """
    if len(checkpoints) < MIN_CHECKPOINTS:
        raise ValueError(
            f"log-prob linearity needs at least {MIN_CHECKPOINTS} checkpoints, "
            f"got {len(checkpoints)}"
        )
    steps, logprobs, tokens = token_logprob_trajectories(
        checkpoints, probes, batch_size=batch_size, device=device
    )
    table = logprob_r2_table(steps, logprobs, tokens, min_change=min_change)
    if table.empty:
        largest = float(np.abs(logprobs[-1] - logprobs[0]).max()) if logprobs.size else 0.0
        raise ValueError(
            f"log-prob linearity kept no token over checkpoints {_describe(checkpoints)}: none "
            f"of the {logprobs.shape[1]} response tokens of {len(probes)} probes moved by more "
            f"than min_change={min_change:g} from the first to the last checkpoint (largest "
            f"move {largest:.3g}); lower min_change or use checkpoints further apart"
        )
    summary = {
        "n_checkpoints": len(steps),
        "n_probes": len(probes),
        "n_tokens": int(logprobs.shape[1]),
        "min_change": float(min_change),
        **summarize_r2(table["r2"], r2_threshold),
    }
    summary["n_kept"] = summary.pop("n")
    return table, summary
