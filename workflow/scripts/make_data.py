import _rlpredict  # noqa: F401

from rlpredict.tasks.arithmetic import generate_splits, write_jsonl
from rlpredict.workflow import run_script


def main(smk):
    task = smk.params.task
    sizes = {name: task[f"{name}_size"] for name in ("train", "dev", "test")}
    splits = generate_splits(sizes, digits=task["digits"], seed=smk.params.seed)
    for name, rows in splits.items():
        write_jsonl(rows, smk.output[name])


run_script(main, snakemake)  # noqa: F821
