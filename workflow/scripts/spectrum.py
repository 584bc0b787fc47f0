import _rlpredict  # noqa: F401
import torch

from rlpredict.spectral import spectrum_table
from rlpredict.workflow import run_script, write_parquet


def main(smk):
    torch.set_num_threads(smk.threads)
    table = spectrum_table(
        smk.input.base,
        smk.input.checkpoint,
        k=smk.params.k,
        module_regex=smk.params.modules,
        step=int(smk.wildcards.step),
    )
    table.insert(0, "source", smk.wildcards.source)
    write_parquet(table, smk.output[0])


run_script(main, snakemake)  # noqa: F821
