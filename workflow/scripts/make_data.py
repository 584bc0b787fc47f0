import _rlpredict  # noqa: F401

from rlpredict.tasks import arithmetic, chat_arithmetic
from rlpredict.tasks.arithmetic import write_jsonl
from rlpredict.workflow import run_script


def main(smk):
    task = smk.params.task
    sizes = {name: task[f"{name}_size"] for name in ("train", "dev", "test")}
    if task["name"] == chat_arithmetic.TASK_NAME:
        splits = chat_arithmetic.generate_splits(sizes, task["family"], seed=smk.params.seed)
    else:
        splits = arithmetic.generate_splits(sizes, digits=task["digits"], seed=smk.params.seed)
    for name, rows in splits.items():
        write_jsonl(rows, smk.output[name])


run_script(main, snakemake)  # noqa: F821
