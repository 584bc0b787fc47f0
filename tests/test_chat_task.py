"""The chat arithmetic task: its verifier, its disjoint splits, and its evaluation through
lm-eval on the real SmolLM2 base (chat template, greedy and avg@k in one call)."""

import json

import pytest
import torch
from conftest import REPO
from snakemake.utils import validate
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlpredict.backends import check_config
from rlpredict.evaluate import evaluate_model
from rlpredict.tasks import chat_arithmetic
from rlpredict.tasks.arithmetic import SPLITS, load_split, write_jsonl
from rlpredict.tasks.chat_arithmetic import FAMILIES, family_problems, generate_splits, verify
from rlpredict.tasks.prompts import is_chat_task, render_prompt
from rlpredict.tasks.registry import eval_max_tokens, verifier
from rlpredict.train.trl_backend import make_reward, reply_text

TASK_FILES = [
    REPO / "workflow/tasks/chat_arithmetic/chat_arithmetic.yaml",
    REPO / "workflow/tasks/chat_arithmetic/utils.py",
]
MAX_TOKENS = 48


@pytest.mark.parametrize(
    ("response", "answer", "score"),
    [
        ("3+5=8", "8", 1.0),
        ("The answer is 8.", "8", 1.0),
        ("8.0", "8", 1.0),
        ("**8**", "8", 1.0),
        ("-3", "-3", 1.0),
        ("−3", "-3", 1.0),
        ("1,000", "1000", 1.0),
        ("What is 23 + 7? 23 + 7 = 30", "30", 1.0),
        ("What is 23 + 7?", "30", 0.0),  # only the echoed question: its last number is 7
        ("30, or maybe 31", "30", 0.0),  # the LAST number counts
        ("3-5", "5", 1.0),  # a hyphen after a digit is not a sign
        ("no number here", "8", 0.0),
        ("", "8", 0.0),
        ("8.5", "8", 0.0),
    ],
)
def test_verifier_scores_the_last_number(response, answer, score):
    assert verify(response, answer) == score


def test_one_verifier_for_reward_and_evaluation():
    """TRL's reward, the lm-eval hook and the registry all use chat_arithmetic.verify."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("chat_utils", TASK_FILES[1])
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    assert utils.verify is verify
    assert verifier("chat_arithmetic") is verify
    assert is_chat_task("chat_arithmetic")
    reward = make_reward(tokenizer=None, task="chat_arithmetic")
    completions = [[{"role": "assistant", "content": "2 + 3 = 5."}], "It is 6"]
    assert reward(completions=completions, answer=["5", "5"]) == [1.0, 0.0]
    assert reply_text(completions[0]) == "2 + 3 = 5."
    assert eval_max_tokens({"name": "chat_arithmetic", "max_new_tokens": 32}) == 32
    assert eval_max_tokens({"name": "arithmetic", "digits": 3}) == 6


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_problems_are_distinct_and_right(family):
    problems = family_problems(family)
    prompts = [p["prompt"] for p in problems]
    assert len(set(prompts)) == len(prompts)
    for p in problems[:50]:
        expression = p["prompt"].removeprefix("What is ").removesuffix("?")
        assert eval(expression) == int(p["answer"])  # noqa: S307 - our own generated text


def test_splits_are_disjoint_and_deterministic():
    sizes = {"train": 1000, "dev": 100, "test": 200}
    splits = generate_splits(sizes, "add_2d_1d", seed=3)
    assert {name: len(rows) for name, rows in splits.items()} == sizes
    prompts = [{r["prompt"] for r in splits[name]} for name in SPLITS]
    assert sum(map(len, prompts)) == sum(sizes.values())
    assert not (prompts[0] & prompts[1] or prompts[0] & prompts[2] or prompts[1] & prompts[2])
    assert generate_splits(sizes, "add_2d_1d", seed=3) == splits
    assert generate_splits(sizes, "add_2d_1d", seed=4) != splits


def test_a_family_too_small_for_the_splits_is_refused():
    with pytest.raises(ValueError, match=r"'add_1d' has 100 distinct problems.*asks? for 101"):
        generate_splits({"train": 80, "dev": 10, "test": 11}, "add_1d")
    with pytest.raises(ValueError, match="task.family: 'nope' is unknown"):
        generate_splits({"train": 1, "dev": 1, "test": 1}, "nope")


# ---- evaluation on the real base ------------------------------------------------------


@pytest.fixture(scope="module")
def base(smollm2_base):
    return smollm2_base


@pytest.fixture(scope="module")
def test_file(tmp_path_factory):
    rows = generate_splits({"train": 1, "dev": 1, "test": 8}, "add_2d_1d", seed=0)["test"]
    path = tmp_path_factory.mktemp("data") / "test.jsonl"
    write_jsonl(rows, path)
    return path


def direct_greedy(base, rows) -> list[str]:
    """Greedy replies decoded one problem at a time from render_prompt's text."""
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    replies = []
    for row in rows:
        text = render_prompt(tokenizer, row["prompt"], chat=True)
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=MAX_TOKENS, do_sample=False)
        replies.append(
            tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
        )
    return replies


def test_lm_eval_matches_a_direct_decode_and_scores_every_sample(base, test_file, tmp_path):
    torch.set_num_threads(2)
    settings = {
        "temperature": 1.0,
        "repeats": 3,
        "accuracy": "sampled",
        "batch_size": 32,
        "max_gen_toks": MAX_TOKENS,
    }
    out = tmp_path / "eval.json"
    summary = evaluate_model(
        base,
        TASK_FILES,
        test_file,
        "chat_arithmetic",
        out,
        settings,
        model_id="step_0",
        log_samples=True,
    )
    rows = load_split(test_file)
    # greedy: the same replies, and so the same accuracy, as a direct decode + verifier
    greedy = sorted(summary["samples"]["chat_arithmetic"], key=lambda s: s["doc_id"])
    replies = direct_greedy(base, rows)
    assert [s["filtered_resps"][0][0] for s in greedy] == replies
    direct_accuracy = sum(map(verify, replies, [r["answer"] for r in rows])) / len(rows)
    assert summary["greedy"]["accuracy"] == pytest.approx(direct_accuracy)
    # sampled: every one of the k replies is scored (avg@k)
    for sample in summary["samples"]["chat_arithmetic_sampled"]:
        replies = sample["filtered_resps"][0]
        assert len(replies) == 3
        expected = sum(verify(r, sample["doc"]["answer"]) for r in replies) / 3
        assert sample["exact_match"] == pytest.approx(expected)
    written = json.loads(out.read_text())
    assert "samples" not in written
    assert written["accuracy"] == written["sampled"]["accuracy"]
    assert written["metric"] == "avg@3 (T=1)"
    assert written["sampled"]["k"] == 3 and written["n"] == len(rows) == 8
    assert 0 <= written["accuracy_stderr"] <= 0.5
    assert written["greedy"]["accuracy_stderr"] >= 0


def test_task_name_is_registered_for_the_workflow():
    assert chat_arithmetic.TASK_NAME == "chat_arithmetic"
    assert TASK_FILES[0].is_file() and TASK_FILES[1].is_file()


def chat_config(**task) -> dict:
    """A validated config (schema defaults filled) with the chat task on the GGUF base."""
    config = {
        "run": "chat",
        "model": {"source": "gguf"},
        "task": {"name": "chat_arithmetic", "train_size": 200, "dev_size": 50, **task},
    }
    validate(config, str(REPO / "workflow" / "schemas" / "config.schema.yaml"))
    return config


def test_config_check_names_a_family_too_small_and_a_scratch_model():
    config = chat_config(test_size=100)
    assert config["task"]["family"] == "add_upto_20" and config["control"]["sft"]["enabled"]
    check_config(config, REPO)  # the SFT control trains on the chat task too
    with pytest.raises(ValueError, match=r"'add_upto_20' has 441 .* ask for 450"):
        check_config(chat_config(test_size=200), REPO)
    scratch = chat_config(test_size=100)
    scratch["model"] = {**scratch["model"], "source": "scratch"}
    with pytest.raises(ValueError, match="task.name: chat_arithmetic .* not scratch"):
        check_config(scratch, REPO)
