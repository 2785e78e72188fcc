# The per-exposure lists of the survey-wide steps (noise_survey, train, report), written
# to argument files that the `astrodenoise` command reads as "@FILE".


rule argument_list:
    output:
        "results/lists/{survey}/{name}.args",
    params:
        # The list itself is the parameter: adding or removing an exposure rewrites the
        # file, and every step that reads it runs again.
        arguments=lambda wildcards: ARGUMENT_LISTS[wildcards.name],
    localrule: True
    run:
        write_argument_file(output[0], params.arguments)
