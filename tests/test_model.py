import torch

from rlpredict.model import build_model, build_tokenizer, score_completion, sft_batch

SIZES = dict(
    hidden_size=32,
    intermediate_size=64,
    num_layers=1,
    num_heads=2,
    num_kv_heads=1,
    max_positions=32,
)


def test_tokenizer_is_one_token_per_character():
    tok = build_tokenizer()
    ids = tok("123+456=", add_special_tokens=False)["input_ids"]
    assert len(ids) == 8
    assert tok.decode(ids) == "123+456="
    assert tok.padding_side == "left"
    assert tok.decode(ids + [tok.eos_token_id], skip_special_tokens=True) == "123+456="


def test_sft_batch_trains_on_answer_and_eos_only():
    tok = build_tokenizer()
    batch = sft_batch(
        tok, [{"prompt": "1+2=", "answer": "3"}, {"prompt": "10+20=", "answer": "30"}]
    )
    labels = batch["labels"]
    assert labels[0].tolist()[:4] == [-100] * 4
    assert tok.decode([t for t in labels[0].tolist() if t >= 0]) == "3<eos>"
    assert tok.decode([t for t in labels[1].tolist() if t >= 0]) == "30<eos>"
    assert batch["attention_mask"][0].sum() == 6  # "1+2=" + "3" + eos


def test_score_requires_eos_after_the_answer():
    tok = build_tokenizer()
    answer = tok("579", add_special_tokens=False)["input_ids"]
    eos, pad = tok.eos_token_id, tok.pad_token_id
    assert score_completion(tok, answer + [eos, pad], "579") == 1.0
    assert score_completion(tok, answer, "579") == 0.0  # cut off: no EOS
    assert score_completion(tok, answer[:2] + [eos], "579") == 0.0


def test_model_is_seeded_and_fp32():
    tok = build_tokenizer()
    a, b = build_model(tok, SIZES, seed=3), build_model(tok, SIZES, seed=3)
    c = build_model(tok, SIZES, seed=4)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert pa.dtype == torch.float32, name
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight)
    assert a.config.vocab_size == len(tok)
