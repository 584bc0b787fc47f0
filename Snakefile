# rlpredict: RLVR training → checkpoints → analyses → evaluation → tables and figures.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/base.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/control.smk"
include: "workflow/rules/ablate.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/extrapolate.smk"


rule all:
    default_target: True
    input:
        all_outputs(),
