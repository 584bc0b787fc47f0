import _rlpredict  # noqa: F401

from rlpredict.atomic import atomic_output_file
from rlpredict.train.verl_run import train_with_verl
from rlpredict.workflow import run_script


def main(smk):
    history = train_with_verl(
        smk.params.config,
        model_path=smk.input.base,
        train_files=smk.input.train,
        val_files=smk.input.get("val"),
        verl_dir=smk.params.verl_dir,
        steps=smk.params.steps,
        threads=smk.threads,
        log_file=smk.log[0],
    )
    with atomic_output_file(smk.output.history) as tmp:
        history.to_csv(tmp, index=False)


run_script(main, snakemake)  # noqa: F821
