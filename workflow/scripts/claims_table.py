import _rlpredict  # noqa: F401

from rlpredict.claims import INPUTS, claims_table
from rlpredict.figures import save_table_html
from rlpredict.tables import write_table
from rlpredict.workflow import run_script


def main(smk):
    files = {name: smk.input.get(name) for name in INPUTS}
    table = claims_table(files)
    write_table(table, smk.output.csv, smk.output.md)
    save_table_html(table, f"{smk.params.run}: the papers' claims", smk.output.html)


run_script(main, snakemake)  # noqa: F821
