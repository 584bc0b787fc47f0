"""Logits extrapolation: exactness at alpha 0/1, KV cache vs recompute, batching, lm-eval."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

import rlpredict.lm_eval_models  # noqa: F401  registers rlpredict-logit-extrap
from rlpredict.decoding import generate_tokens, load_models, load_tokenizer, sample_next_token
from rlpredict.logits import generate_extrapolated, mix_logits, score_extrapolated
from rlpredict.model import build_tokenizer

PROMPTS = ["1+2=", "123+456=", "9=", "55+5=", "7+70=", "314+1="]
EOS, PAD = 1, 0


def build_model(seed: int, vocab_size: int) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=128,
        pad_token_id=PAD,
        eos_token_id=EOS,
        bos_token_id=None,
        tie_word_embeddings=True,
        # a wide init gives peaked, varied next-token distributions (EOS appears, few ties)
        initializer_range=0.3,
    )
    return Qwen2ForCausalLM(config).eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # tiny models gain nothing from threads, and on a busy machine thread sync dominates
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Two saved random models (earlier, later) sharing one tokenizer."""
    root = tmp_path_factory.mktemp("logits")
    tok = build_tokenizer()
    dirs = []
    for seed in (0, 1):
        d = root / f"model{seed}"
        build_model(seed, len(tok)).save_pretrained(d)
        tok.save_pretrained(d)
        dirs.append(d)
    m0, m1 = load_models(dirs)
    return {"dirs": dirs, "m0": m0, "m1": m1, "tok": load_tokenizer(dirs[1]), "root": root}


def encode(tok, prompts):
    enc = tok(prompts, padding=True, return_tensors="pt")
    return enc.input_ids, enc.attention_mask


def hf_greedy(model, ids, mask, n):
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=n,
        do_sample=False,
        pad_token_id=PAD,
        eos_token_id=EOS,
    )
    return out[:, ids.shape[1] :]


def own_logprobs(model, ctx, cont):
    ids = torch.tensor([list(ctx) + list(cont)])[:, :-1]
    with torch.no_grad():
        logprobs = model(ids).logits.float().log_softmax(-1)[0, -len(cont) :]
    return logprobs.gather(-1, torch.tensor(cont)[:, None]).squeeze(-1)


def test_mix_logits_formula_and_exact_end_points():
    g = torch.Generator().manual_seed(0)
    l0, l1 = torch.randn(3, 50, generator=g), torch.randn(3, 50, generator=g)
    torch.testing.assert_close(mix_logits(l0, l1, 1.5), l0 + 1.5 * (l1 - l0))
    assert torch.equal(mix_logits(l0, l1, 1.0), l1)
    assert torch.equal(mix_logits(l0, l1, 0.0), l0)
    assert mix_logits(l0.half(), l1.half(), 2.0).dtype == torch.float32


def test_alpha_one_and_zero_reproduce_each_models_greedy_generate(pair):
    ids, mask = encode(pair["tok"], PROMPTS)
    assert (mask == 0).any(), "the batch must contain left padding"
    for alpha, model in ((1.0, pair["m1"]), (0.0, pair["m0"])):
        ours = generate_extrapolated(
            [pair["m0"], pair["m1"]], ids, mask, alpha=alpha, max_new_tokens=12, eos_token_id=EOS
        )
        assert torch.equal(ours, hf_greedy(model, ids, mask, 12))
    assert (ours == EOS).any(), "some row should finish with EOS"


def test_alpha_one_and_zero_reproduce_each_models_loglikelihoods(pair):
    tok = pair["tok"]
    reqs = [(tok.encode(c), tok.encode(x)) for c, x in [("12+34=", "46"), ("9=", "9+1=10")]]
    for alpha, model in ((1.0, pair["m1"]), (0.0, pair["m0"])):
        scored = score_extrapolated([pair["m0"], pair["m1"]], reqs, alpha=alpha, batch_size=1)
        for (ctx, cont), (lp, greedy) in zip(reqs, scored, strict=True):
            assert torch.equal(lp, own_logprobs(model, ctx, cont))
            assert greedy.dtype == torch.bool and greedy.shape == lp.shape


def recompute_greedy(models, ids, mask, alpha, n):
    """Reference: run both models on the whole sequence at every step, no cache."""
    ids, mask = ids.clone(), mask.clone()
    out = []
    for _ in range(n):
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            logits = [
                m(input_ids=ids, attention_mask=mask, position_ids=pos).logits for m in models
            ]
        token = mix_logits(logits[0][:, -1], logits[1][:, -1], alpha).argmax(-1)
        out.append(token)
        ids = torch.cat([ids, token[:, None]], 1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    return torch.stack(out, 1)


def test_kv_cache_decoding_equals_recomputing_the_prefix(pair):
    ids, mask = encode(pair["tok"], PROMPTS)
    models = [pair["m0"], pair["m1"]]
    ours = generate_extrapolated(models, ids, mask, alpha=1.5, max_new_tokens=10)
    assert ours.shape == (len(PROMPTS), 10)
    assert torch.equal(ours, recompute_greedy(models, ids, mask, 1.5, 10))


def test_batched_with_left_padding_equals_unbatched(pair):
    tok, models = pair["tok"], [pair["m0"], pair["m1"]]
    ids, mask = encode(tok, PROMPTS)
    batched = generate_extrapolated(
        models, ids, mask, alpha=1.5, max_new_tokens=10, eos_token_id=EOS
    )
    for row, prompt in enumerate(PROMPTS):
        one = generate_extrapolated(
            models, *encode(tok, [prompt]), alpha=1.5, max_new_tokens=10, eos_token_id=EOS
        )[0]
        assert batched[row, : len(one)].tolist() == one.tolist()
        assert (batched[row, len(one) :] == PAD).all()
    reqs = [(tok.encode(p), tok.encode("12=3")) for p in PROMPTS]
    together = score_extrapolated(models, reqs, alpha=1.5, batch_size=len(reqs))
    alone = score_extrapolated(models, reqs, alpha=1.5, batch_size=1)
    for (a, ga), (b, gb) in zip(together, alone, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        assert torch.equal(ga, gb)


def test_stop_strings_end_each_row_where_the_text_appears(pair):
    tok, models = pair["tok"], [pair["m0"], pair["m1"]]
    ids, mask = encode(tok, PROMPTS)
    free = generate_extrapolated(models, ids, mask, alpha=1.5, max_new_tokens=12)
    texts = tok.batch_decode(free, skip_special_tokens=True)
    stop = texts[0][3:5]  # a two-character string the first row produces
    cut = generate_extrapolated(
        models, ids, mask, alpha=1.5, max_new_tokens=12, stop_strings=[stop], tokenizer=tok
    )
    for row, text in enumerate(texts):
        if stop in text:
            n = text.index(stop) + len(stop)  # one character per token
            assert cut[row, :n].tolist() == free[row, :n].tolist()
            assert (cut[row, n:] == PAD).all()
        else:
            assert cut[row].tolist() == free[row, : cut.shape[1]].tolist()


def test_sampling_order_and_seeding():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(4000, 1)
    g = torch.Generator().manual_seed(0)
    drawn = sample_next_token(logits, temperature=1.0, top_p=0.6, generator=g)
    assert set(drawn.tolist()) == {0, 1}  # 0.5 < top_p, so token 1 completes the nucleus
    assert abs((drawn == 0).float().mean().item() - 0.5 / 0.8) < 0.03
    hot = sample_next_token(logits, temperature=100.0, generator=g)
    assert (hot == 3).float().mean() > 0.2  # high temperature flattens before sampling
    assert (sample_next_token(logits, temperature=0.0) == 0).all()
    assert (sample_next_token(logits, temperature=1.0, do_sample=False) == 0).all()
    assert set(sample_next_token(logits, temperature=1.0, top_k=1, generator=g).tolist()) == {0}
    a = sample_next_token(logits, temperature=1.0, generator=torch.Generator().manual_seed(3))
    b = sample_next_token(logits, temperature=1.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_sampled_decoding_is_seeded_and_matches_recompute_at_top_p_near_zero(pair):
    ids, mask = encode(pair["tok"], PROMPTS)
    models = [pair["m0"], pair["m1"]]
    kw = dict(alpha=1.5, max_new_tokens=8, temperature=0.7, do_sample=True)
    a = generate_extrapolated(models, ids, mask, generator=torch.Generator().manual_seed(1), **kw)
    b = generate_extrapolated(models, ids, mask, generator=torch.Generator().manual_seed(1), **kw)
    assert torch.equal(a, b)
    nucleus_of_one = generate_extrapolated(models, ids, mask, top_p=1e-6, **kw)
    assert torch.equal(nucleus_of_one, recompute_greedy(models, ids, mask, 1.5, 8))


def write_tasks(root):
    rows = [{"q": p, "a": "5", "choices": ["1", "22"], "label": 0} for p in PROMPTS]
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = (
        f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
    )
    tasks = {
        "toy_gen": "output_type: generate_until\ndoc_to_text: '{{q}}'\ndoc_to_target: '{{a}}'\n"
        "generation_kwargs:\n  until: ['+']\n  max_gen_toks: 6\n  do_sample: false\n"
        "  temperature: 0.0\nmetric_list:\n  - metric: exact_match\n",
        "toy_mc": "output_type: multiple_choice\ndoc_to_text: '{{q}}'\ndoc_to_choice: choices\n"
        "doc_to_target: label\nmetric_list:\n  - metric: acc\n",
        "toy_ppl": "output_type: loglikelihood_rolling\ndoc_to_text: ''\n"
        "doc_to_target: '{{q}}'\nmetric_list:\n  - metric: word_perplexity\n",
    }
    task_dir = root / "tasks"
    task_dir.mkdir(exist_ok=True)
    for name, body in tasks.items():
        (task_dir / f"{name}.yaml").write_text(f"task: {name}\n{common}{body}")
    return task_dir, sorted(tasks)


def run_eval(model, model_args, task_dir, tasks):
    import lm_eval
    from lm_eval.tasks import TaskManager

    res = lm_eval.simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=tasks,
        task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
        log_samples=True,
    )
    return {t: [s["resps"] for s in res["samples"][t]] for t in tasks}


def test_lm_eval_model_at_alpha_one_matches_the_hf_backend(pair, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from lm_eval.api.registry import get_model

    import rlpredict.lm_eval_models as lm_eval_models

    assert get_model("rlpredict-logit-extrap") is lm_eval_models.LogitExtrapolationLM
    d0, d1 = pair["dirs"]
    task_dir, tasks = write_tasks(pair["root"])
    ours = run_eval(
        "rlpredict-logit-extrap",
        f"pretrained0={d0},pretrained1={d1},alpha=1,batch_size=4,dtype=float32,device=cpu",
        task_dir,
        tasks,
    )
    hf = run_eval("hf", f"pretrained={d1},dtype=float32,device=cpu", task_dir, tasks)
    assert ours["toy_gen"] == hf["toy_gen"]
    assert all("+" not in r[0] and len(r[0]) <= 6 for r in ours["toy_gen"])
    # lm-eval's HF backend pads on the right and batches differently: equal up to fp32 rounding
    for task in ("toy_mc", "toy_ppl"):
        a = torch.tensor([[float(x) for x in flatten(r)] for r in ours[task]], dtype=torch.float64)
        b = torch.tensor([[float(x) for x in flatten(r)] for r in hf[task]], dtype=torch.float64)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def flatten(resp):
    if isinstance(resp, (list, tuple)):
        return [x for item in resp for x in flatten(item)]
    return [resp]


def test_lm_eval_model_args_and_requests_at_alpha_one_and_a_half(pair):
    from lm_eval.api.instance import Instance
    from lm_eval.api.registry import get_model

    d0, d1 = pair["dirs"]
    lm = get_model("rlpredict-logit-extrap").create_from_arg_string(
        f"pretrained0={d0},pretrained1={d1},alpha=1.5,batch_size=64,dtype=float32,device=cpu",
        {"batch_size": None, "device": None},
    )
    assert (lm.alpha, lm.batch_size, lm.max_length) == (1.5, 64, 128)
    tok, models = pair["tok"], [pair["m0"], pair["m1"]]

    def req(kind, args):
        return Instance(request_type=kind, doc={}, arguments=args, idx=0)

    ((ll, greedy),) = lm.loglikelihood([req("loglikelihood", ("12+34=", "46"))])
    ((lp, g),) = score_extrapolated(models, [(tok.encode("12+34="), tok.encode("46"))], alpha=1.5)
    assert ll == pytest.approx(float(lp.double().sum()), abs=1e-6) and greedy == bool(g.all())
    (rolling,) = lm.loglikelihood_rolling([req("loglikelihood_rolling", ("123+4=",))])
    ((lp, _),) = score_extrapolated(models, [([EOS], tok.encode("123+4="))], alpha=1.5)
    assert rolling == pytest.approx(float(lp.double().sum()), abs=1e-6)
    gen_kwargs = {"until": ["5"], "max_gen_toks": 8, "do_sample": False}
    texts = lm.generate_until([req("generate_until", (p, gen_kwargs)) for p in PROMPTS])
    free = generate_extrapolated(
        models, *encode(tok, PROMPTS), alpha=1.5, max_new_tokens=8, eos_token_id=EOS
    )
    for text, row in zip(texts, free.tolist(), strict=True):
        row = row[: row.index(EOS)] if EOS in row else row
        assert text == tok.decode(row, skip_special_tokens=True).split("5")[0]
    with pytest.raises(ValueError, match="gen_kwargs"):
        lm.generate_until([req("generate_until", ("1=", {"num_beams": 4}))])
    with pytest.raises(TypeError, match="unknown model_args"):
        get_model("rlpredict-logit-extrap").create_from_arg_string(
            f"pretrained0={d0},pretrained1={d1},alhpa=2"
        )


def test_importing_the_lm_eval_models_module_alone_registers_the_model():
    script = (
        "import rlpredict.lm_eval_models as m; "
        "from lm_eval.api.registry import get_model; "
        "assert get_model('rlpredict-logit-extrap') is m.LogitExtrapolationLM; "
        "assert get_model('hf').__name__ == 'HFLM'; print('ok')"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_logits_extrapolation_mixes_exactly_two_models(pair):
    ids, mask = encode(pair["tok"], PROMPTS)
    with pytest.raises(ValueError, match="two models, got 1"):
        generate_extrapolated([pair["m1"]], ids, mask, alpha=1.5, max_new_tokens=2)
    with pytest.raises(ValueError, match="one model, got 2"):
        generate_tokens([pair["m0"], pair["m1"]], ids, mask, max_new_tokens=2)
    plain = generate_tokens([pair["m1"]], ids, mask, max_new_tokens=12, eos_token_id=EOS)
    assert torch.equal(plain, hf_greedy(pair["m1"], ids, mask, 12))
