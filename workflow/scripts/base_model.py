import _rlpredict  # noqa: F401
import pandas as pd
import torch

from rlpredict.atomic import atomic_output_file
from rlpredict.model import build_model, build_tokenizer, save_model_dir, warm_up
from rlpredict.tasks.arithmetic import load_split, max_answer_chars
from rlpredict.workflow import run_script


def main(smk):
    torch.set_num_threads(smk.threads)
    warmup = smk.params.warmup
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, smk.params.model, seed=smk.params.seed)
    dev = load_split(smk.input.dev)[: warmup["dev_problems"]]
    history = warm_up(
        model,
        tokenizer,
        load_split(smk.input.train),
        dev,
        warmup,
        seed=smk.params.seed,
        max_new_tokens=max_answer_chars(smk.params.digits) + 2,
    )
    with atomic_output_file(smk.output.history) as tmp:
        pd.DataFrame(history).to_csv(tmp, index=False)
    save_model_dir(model, tokenizer, smk.output.model)


run_script(main, snakemake)  # noqa: F821
