import _rlpredict  # noqa: F401
import torch

from rlpredict.evaluate import write_json
from rlpredict.linearity import (
    generate_probe_responses,
    logprob_linearity,
    read_probe_prompts,
    save_probes,
)
from rlpredict.workflow import run_script, write_parquet


def main(smk):
    torch.set_num_threads(smk.threads)
    settings, params = smk.params.settings, smk.params
    prompts = read_probe_prompts(smk.input.dev, settings["probes"])
    probes = generate_probe_responses(
        smk.input.checkpoints[0],
        prompts,
        chat=params.chat,
        max_new_tokens=params.max_new_tokens,
        do_sample=settings["probe_temperature"] > 0,
        temperature=settings["probe_temperature"] or 1.0,
        seed=params.seed,
        batch_size=params.batch_size,
        device=params.device,
    )
    table, summary = logprob_linearity(
        dict(zip(params.steps, smk.input.checkpoints, strict=True)),
        probes,
        min_change=settings["logprob_min_change"],
        batch_size=params.batch_size,
        device=params.device,
    )
    save_probes(probes, smk.output.probes)
    write_parquet(table, smk.output.table)
    write_json(summary, smk.output.summary)


run_script(main, snakemake)  # noqa: F821
