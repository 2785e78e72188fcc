# astrodenoise: self-supervised denoising of astronomical survey images.
#
#   snakemake --cores all                      # the demo survey, end to end
#   snakemake --cores all --configfile my.yaml # your own FITS files (see config/config.yaml)
#   snakemake -n                               # show the chain without running it
#
# Every rule calls the `astrodenoise` command; the science lives in src/astrodenoise.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/simulate.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/noise.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/predict.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        get_final_outputs(),
    default_target: True
