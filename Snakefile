# astrodenoise: self-supervised denoising of astronomical survey images.
#
#   snakemake --cores all                      # the demo survey, end to end
#   snakemake --cores all --configfile my.yaml # your own FITS files (see config/config.yaml)
#   snakemake -n                               # show the chain without running it
#
# Every rule calls the `astrodenoise` command; the science lives in src/astrodenoise.

import os

from snakemake.utils import min_version

min_version("9.0")


configfile: os.path.join(workflow.basedir, "config", "config.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/simulate.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/noise.smk"
include: "workflow/rules/register.smk"
include: "workflow/rules/lists.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/predict.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        get_final_outputs(),
    default_target: True


onsuccess:
    print(f"\nastrodenoise: done. Report: {os.path.abspath(f'results/report/{SURVEY}/report.html')}")


onerror:
    print("\nastrodenoise: a step failed. Its log under logs/<step>/ says why; fix it and rerun "
          "the same command: finished steps are kept, the failed step's output was removed.")
