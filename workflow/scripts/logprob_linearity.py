import _rlpredict  # noqa: F401

from rlpredict.evaluate import write_json
from rlpredict.linearity import generate_probe_responses, logprob_linearity, save_probes
from rlpredict.tasks.arithmetic import load_split
from rlpredict.workflow import run_script, write_parquet


def main(smk):
    settings = smk.params.settings
    prompts = [row["prompt"] for row in load_split(smk.input.dev)[: settings["probes"]]]
    probes = generate_probe_responses(
        smk.input.checkpoints[0],
        prompts,
        max_new_tokens=smk.params.max_new_tokens,
        do_sample=settings["probe_temperature"] > 0,
        temperature=settings["probe_temperature"] or 1.0,
        seed=smk.params.seed,
    )
    save_probes(probes, smk.output.probes)
    table, summary = logprob_linearity(
        dict(zip(smk.params.steps, smk.input.checkpoints, strict=True)),
        probes,
        min_change=settings["logprob_min_change"],
    )
    write_parquet(table, smk.output.table)
    write_json(summary, smk.output.summary)


run_script(main, snakemake)  # noqa: F821
