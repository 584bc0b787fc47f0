import logging

import _rlpredict  # noqa: F401

from rlpredict.tasks.export import export_verl
from rlpredict.workflow import run_script


def main(smk):
    data = smk.params.data
    for split, out in smk.output.items():
        source = smk.input.get(split) or data[split]  # a hub dataset is not an input file
        rows = export_verl(
            source,
            out,
            prompt_format=smk.params.formats[split],
            split=split,
            data_source=data["data_source"],
            limit=data[f"{split}_limit"],
        )
        logging.getLogger("rlpredict").info("%s: %d rows from %s", out, rows, source)


run_script(main, snakemake)  # noqa: F821
