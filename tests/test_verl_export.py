"""verl parquet export, scored by verl's own scorers and read by verl's own dataset class.

The scoring runs in the separate verl environment (``make verl-env``); run as a script
(``python tests/test_verl_export.py score DIR``) there, this file scores every exported row
with a correct and a wrong response and writes the counts to ``DIR/scores.json``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import verl_python

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "resources" / "benchmarks"
REWARD_FILE = REPO / "src" / "rlpredict" / "train" / "verl_reward.py"
# export name -> (source file or None for the generated task, prompt format, data_source)
EXPORTS = {
    "arithmetic": (None, "arithmetic", "rlpredict/arithmetic"),
    "gsm8k": ("gsm8k.jsonl", "gsm8k", "openai/gsm8k"),
    "math": ("math.jsonl", "math", "HuggingFaceH4/MATH-500"),
    "aime24": ("aime24.jsonl", "math", "aime24"),
    "minerva": ("minerva.jsonl", "math", "minerva_math"),
}
OURS_LIMIT = 60  # rows per export scored with rlpredict's reward (all rows with verl's)
CHAT_TEMPLATE = "{% for message in messages %}{{ message['content'] }}{% endfor %}"


def responses(data_source: str, truth: str, other: str) -> tuple[str, str]:
    """A correct and a wrong response in the format the row's prompt asks for."""
    if data_source == "rlpredict/arithmetic":
        return truth, str(int(truth) + 1)
    if data_source == "openai/gsm8k":
        return f"So 3 + 4 = 7 apples.\n#### {truth}", f"So 3 + 4 = 7 apples.\n#### {other}"
    return f"Therefore the answer is $\\boxed{{{truth}}}$.", f"So it is $\\boxed{{{other}}}$."


def _plain(answer: str) -> str:
    """Answer without spacing, percent signs or a leading "x=", which scorers ignore."""
    return re.sub(r"^[A-Za-z]\w*=", "", re.sub(r"[\s$]|\\left|\\right|\\!|\\%|%", "", answer))


# ---------------------------------------------------------------------------------------
# Scoring side: runs in the verl environment.


def score_exports(folder: Path) -> None:
    import pandas as pd
    from omegaconf import OmegaConf
    from verl.trainer.ppo.reward import get_custom_reward_fn
    from verl.utils.reward_score import default_compute_score

    config = OmegaConf.create(
        {"reward": {"custom_reward_function": {"path": str(REWARD_FILE), "name": "compute_score"}}}
    )
    ours = get_custom_reward_fn(config)  # loaded from the file path, as verl's trainer does
    report = {}
    for name in EXPORTS:
        rows = pd.read_parquet(folder / f"{name}.parquet").to_dict("records")
        truths = [r["reward_model"]["ground_truth"] for r in rows]
        counts = dict.fromkeys(["verl_right", "verl_wrong", "ours_right", "ours_wrong"], 0)
        for i, row in enumerate(rows):
            source, truth = row["data_source"], truths[i]
            other = next(t for t in truths[i + 1 :] + truths[:i] if _plain(t) != _plain(truth))
            right, wrong = responses(source, truth, other)
            if source in ("openai/gsm8k", "HuggingFaceH4/MATH-500", "aime24"):
                scored = [default_compute_score(source, r, truth) for r in (right, wrong)]
                # verl's DAPO scorer (aime*) returns a dict with score +1 / -1 and "acc".
                ok = [s["acc"] if isinstance(s, dict) else s == 1.0 for s in scored]
                counts["verl_right"] += ok[0] is True
                counts["verl_wrong"] += ok[1] is False
            if i < OURS_LIMIT:
                counts["ours_right"] += ours(source, right, truth, row["extra_info"]) == 1.0
                counts["ours_wrong"] += ours(source, wrong, truth, row["extra_info"]) == 0.0
        report[name] = {"rows": len(rows), **counts}
    report["dataset_prompt"] = rlhf_dataset_prompt(folder / "arithmetic.parquet")
    (folder / "scores.json").write_text(json.dumps(report, indent=2))


def rlhf_dataset_prompt(parquet: Path) -> str:
    """The first prompt as verl's RLHFDataset tokenizes it, decoded back to text."""
    from omegaconf import OmegaConf
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from verl.utils.dataset.rl_dataset import RLHFDataset

    vocab = ["<pad>", "<eos>", "<unk>", *"0123456789+="]
    tokenizer = Tokenizer(models.WordLevel({t: i for i, t in enumerate(vocab)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )
    tok.chat_template = CHAT_TEMPLATE  # what actor_rollout_ref.model.custom_chat_template sets
    config = OmegaConf.create(
        {"max_prompt_length": 16, "filter_overlong_prompts": True, "cache_dir": str(parquet.parent)}
    )
    item = RLHFDataset([str(parquet)], tok, config)[0]
    if "input_ids" in item:
        return tok.decode(item["input_ids"], skip_special_tokens=True).replace(" ", "")
    return tok.apply_chat_template(list(item["raw_prompt"]), tokenize=False)


# ---------------------------------------------------------------------------------------
# Tests: run in the project environment.


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    from rlpredict.tasks.arithmetic import generate_splits, write_jsonl
    from rlpredict.tasks.export import export_verl

    folder = tmp_path_factory.mktemp("verl_data")
    write_jsonl(generate_splits({"train": 50, "dev": 0, "test": 0})["train"], folder / "a.jsonl")
    for name, (source, prompt_format, data_source) in EXPORTS.items():
        path = folder / "a.jsonl" if source is None else BENCHMARKS / source
        n = export_verl(path, folder / f"{name}.parquet", prompt_format, "train", data_source)
        assert n > 0
    return folder


def test_rows_have_verls_fields(exported):
    import pandas as pd

    gsm8k = pd.read_parquet(exported / "gsm8k.parquet")
    assert len(gsm8k) == 1319
    assert list(gsm8k.columns) == ["data_source", "prompt", "ability", "reward_model", "extra_info"]
    row = gsm8k.iloc[7]
    assert row["data_source"] == "openai/gsm8k" and row["ability"] == "math"
    assert [m["role"] for m in row["prompt"]] == ["user"]
    assert row["prompt"][0]["content"].endswith('output the final answer after "####".')
    assert row["reward_model"]["style"] == "rule"
    assert "," not in "".join(gsm8k["reward_model"].map(lambda r: r["ground_truth"]))
    math = pd.read_parquet(exported / "math.parquet").iloc[0]
    assert math["prompt"][0]["content"].endswith("within \\boxed{}.")
    assert math["extra_info"]["index"] == 0 and math["extra_info"]["split"] == "train"
    arithmetic = pd.read_parquet(exported / "arithmetic.parquet").iloc[0]
    assert re.fullmatch(r"\d{3}\+\d{3}=", arithmetic["prompt"][0]["content"])


def test_verl_scorers_accept_right_and_reject_wrong_answers(exported):
    result = subprocess.run(
        [str(verl_python()), __file__, "score", str(exported)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads((exported / "scores.json").read_text())
    print(json.dumps(report, indent=1))
    for name in ("gsm8k", "math", "aime24"):
        rows = report[name]["rows"]
        assert report[name]["verl_right"] == rows, name
        assert report[name]["verl_wrong"] == rows, name
    for name in EXPORTS:
        scored = min(OURS_LIMIT, report[name]["rows"])
        assert report[name]["ours_right"] == scored, name
        assert report[name]["ours_wrong"] == scored, name
    first = json.loads((exported / "a.jsonl").read_text().splitlines()[0])["prompt"]
    assert report["dataset_prompt"] == first


def test_verl_format_rows_pass_through(tmp_path):
    import pandas as pd

    from rlpredict.tasks.export import export_verl

    row = {
        "data_source": "math_dapo",
        "prompt": [{"role": "user", "content": "Solve x+1=2. Answer: $Answer"}],
        "ability": "MATH",
        "reward_model": {"style": "rule", "ground_truth": "1"},
        "extra_info": {"index": "a1"},
    }
    pd.DataFrame([row]).to_parquet(tmp_path / "dapo.parquet")
    assert export_verl(tmp_path / "dapo.parquet", tmp_path / "out.parquet") == 1
    out = pd.read_parquet(tmp_path / "out.parquet").iloc[0]
    assert out["data_source"] == "math_dapo" and out["reward_model"]["ground_truth"] == "1"


def test_bad_inputs_name_the_problem(tmp_path):
    from rlpredict.tasks.export import export_verl

    (tmp_path / "bad.jsonl").write_text('{"problem": "1+1?"}\n')
    with pytest.raises(ValueError, match="row 0 has no 'answer'"):
        export_verl(tmp_path / "bad.jsonl", tmp_path / "out.parquet")
    with pytest.raises(ValueError, match="unknown prompt format"):
        export_verl(BENCHMARKS / "aime25.jsonl", tmp_path / "out.parquet", "chat")
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        export_verl(tmp_path / "missing.jsonl", tmp_path / "out.parquet")
    assert not (tmp_path / "out.parquet").exists()


if __name__ == "__main__" and sys.argv[1:2] == ["score"]:
    score_exports(Path(sys.argv[2]))
