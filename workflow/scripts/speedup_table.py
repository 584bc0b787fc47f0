import _rlpredict  # noqa: F401
import pandas as pd

from rlpredict.plan import runnable
from rlpredict.tables import speedup_vs_accuracy, write_table
from rlpredict.workflow import run_script


def main(smk):
    jobs = smk.params.jobs
    ran = runnable(jobs)
    evals = dict(zip([job.model_id for job in ran], smk.input.evals, strict=True))
    evals.update({f"step_{job.steps[-1]}": p for job, p in zip(ran, smk.input.stop, strict=True)})
    table = speedup_vs_accuracy(
        jobs,
        evals,
        final=smk.input.final,
        base=smk.input.base,
        history=pd.read_csv(smk.input.history),
        final_step=smk.params.final_step,
        costs=smk.params.costs,
    )
    write_table(table, smk.output.csv, smk.output.md)


run_script(main, snakemake)  # noqa: F821
