# The base model from the Hugging Face hub or a local dir (model.source hub | local), copied
# to an fp32 HF dir: ΔW = W_t − W_0 is taken against exactly the weights training starts from.
# A local dir is an input (so a change to it reruns what depends on it); a hub model is
# downloaded by the job, which then needs network access.
PRETRAINED_INPUT = (
    {"source": config["model"]["path"]} if config["model"]["source"] == "local" else {}
)


rule base_model:
    input:
        **PRETRAINED_INPUT,
    output:
        model=directory(f"{OUT}/base"),
    log:
        f"{OUT}/logs/base_model.log",
    benchmark:
        f"{OUT}/benchmarks/base_model.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 2
    resources:
        mem_mb=32000,
        runtime=240,
    params:
        model=config["model"],
    script:
        "../scripts/pretrained_base.py"
