# RL training with verl on GPUs (train.backend verl), or the checkpoints of a run trained
# elsewhere (train.backend existing). Either way checkpoints/step_{N} become fp32 HF dirs,
# one job per step, and every analysis downstream reads them as it reads TRL's.
from rlpredict.backends import (
    GENERATED,
    VERL_DIR,
    checkpoint_inputs,
    checkpoint_source,
    data_format,
    train_gpus,
)
from rlpredict.train.verl_run import DONE_FILE

TRAIN = config["train"]
# Our own runs are read with the torch that wrote them; runs made elsewhere with the newest.
CONVERT_ENV = (
    "../envs/verl.yaml" if TRAIN["backend"] == "verl" else "../envs/analysis.yaml"
)

if TRAIN["backend"] == "verl":
    DATA = config["data"]
    GENERATED_SPLITS = {"train": "train", "val": "dev"}
    VERL_DATA = {"train": f"{OUT}/data/train.parquet"}
    if DATA["val"]:
        VERL_DATA["val"] = f"{OUT}/data/val.parquet"
    # Local files and the generated splits are inputs; hub datasets are fetched by the job.
    VERL_DATA_SOURCES = {
        split: (
            getattr(rules.make_data.output, GENERATED_SPLITS[split])
            if DATA[split] == GENERATED
            else DATA[split]
        )
        for split in VERL_DATA
        if not DATA[split].startswith("hub:")
    }
    TRAIN_RESOURCES = TRAIN["resources"]

    rule export_verl_data:
        input:
            **VERL_DATA_SOURCES,
        output:
            **VERL_DATA,
        log:
            f"{OUT}/logs/export_verl_data.log",
        benchmark:
            f"{OUT}/benchmarks/export_verl_data.tsv"
        conda:
            "../envs/verl.yaml"
        params:
            data=DATA,
            formats={split: data_format(DATA, split) for split in VERL_DATA},
        script:
            "../scripts/export_verl_data.py"

    # verl's checkpoint dir (results/{run}/verl) is not an output, so that a rerun after an
    # interruption resumes it; the run fingerprint there keeps a changed config from
    # resuming a different run.
    rule train_rl:
        input:
            **VERL_DATA,
            base=rules.base_model.output.model,
        output:
            done=f"{OUT}/{VERL_DIR}/{DONE_FILE}",
            history=f"{OUT}/analysis/train_history.csv",
        log:
            f"{OUT}/logs/train_rl.log",
        benchmark:
            f"{OUT}/benchmarks/train_rl.tsv"
        conda:
            "../envs/verl.yaml"
        threads: train_gpus(config) * TRAIN_RESOURCES["cpus_per_gpu"]
        resources:
            # one node: without it SLURM may spread the GPUs over nodes (nnodes is 1)
            nodes=1,
            gpu=train_gpus(config),
            gpu_model=TRAIN_RESOURCES["gpu_model"],
            mem_mb=TRAIN_RESOURCES["mem_mb"],
            runtime=TRAIN_RESOURCES["runtime"],
            cpus_per_gpu=TRAIN_RESOURCES["cpus_per_gpu"],
        params:
            config={"run": RUN, "seed": config["seed"], "train": TRAIN},
            verl_dir=lambda wildcards, output: Path(output.done).parent,
            steps=STEPS,
        script:
            "../scripts/train_verl.py"

else:

    # No training: the run exists. Records its history where one was kept.
    rule train_rl:
        output:
            history=f"{OUT}/analysis/train_history.csv",
        log:
            f"{OUT}/logs/train_rl.log",
        benchmark:
            f"{OUT}/benchmarks/train_rl.tsv"
        conda:
            "../envs/analysis.yaml"
        params:
            existing=TRAIN["existing"],
            steps=STEPS,
        script:
            "../scripts/existing_run.py"


rule convert_checkpoint:
    input:
        unpack(lambda wildcards: checkpoint_inputs(config, int(wildcards.step), OUT)),
    output:
        directory(f"{OUT}/checkpoints/step_{{step}}"),
    log:
        f"{OUT}/logs/convert_checkpoint/step_{{step}}.log",
    benchmark:
        f"{OUT}/benchmarks/convert_checkpoint/step_{{step}}.tsv"
    conda:
        CONVERT_ENV
    threads: 1
    resources:
        mem_mb=32000,
        runtime=120,
    params:
        source=lambda wildcards: checkpoint_source(config, int(wildcards.step), OUT)[0],
        kind=lambda wildcards: checkpoint_source(config, int(wildcards.step), OUT)[1],
    script:
        "../scripts/convert_checkpoint.py"
