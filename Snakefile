# rlpredict: RLVR training → checkpoints → analyses → evaluation → tables and figures.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


# workflow/rules/common.smk validates the config (schema, defaults, meaning) first of all.
report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"


# The base model, RL training and evaluation each have a CPU-scale and a paper-scale
# backend (config: model.source, train.backend, eval.backend); everything else is shared.
if config["model"]["source"] == "scratch":

    include: "workflow/rules/base.smk"

else:

    include: "workflow/rules/pretrained.smk"


if config["train"]["backend"] == "trl":

    include: "workflow/rules/train.smk"

else:

    include: "workflow/rules/verl.smk"


include: "workflow/rules/control.smk"
include: "workflow/rules/ablate.smk"


if config["eval"]["backend"] == "hf":

    include: "workflow/rules/evaluate.smk"

else:

    include: "workflow/rules/vllm.smk"


include: "workflow/rules/report.smk"
include: "workflow/rules/extrapolate.smk"
include: "workflow/rules/linearity.smk"
include: "workflow/rules/claims.smk"


rule all:
    default_target: True
    input:
        all_outputs(),
