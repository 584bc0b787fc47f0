import json
from pathlib import Path

import _rlpredict  # noqa: F401
import pandas as pd

from rlpredict.figures import linearity, save_figure, save_table_html
from rlpredict.tables import linearity_summary, write_table
from rlpredict.workflow import run_script


def main(smk):
    weights = pd.read_parquet(smk.input.weights)
    logprobs = pd.read_parquet(smk.input.logprobs)
    rank1 = pd.read_parquet(smk.input.rank1)
    summary = linearity_summary(
        json.loads(Path(smk.input.weights_summary).read_text()),
        json.loads(Path(smk.input.logprobs_summary).read_text()),
        rank1,
    )
    write_table(summary, smk.output.csv, smk.output.md)
    save_table_html(summary, f"{smk.params.run}: linearity diagnostics", smk.output.html)
    save_figure(linearity(weights, logprobs, rank1, smk.params.run), smk.output.png, smk.output.pdf)


run_script(main, snakemake)  # noqa: F821
