# 4D language fields from videos of dynamic scenes: one DAG per scene, rerun only what changed.
# `snakemake --cores 8` runs every configured scene; `snakemake scene_<id>` runs one scene.
from snakemake.utils import min_version

min_version("9.0")


# config.yaml (the demo) is the default; `--configfile other.yaml` replaces it rather than extending it
if not workflow.config_settings.configfiles:

    configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "rules/common.smk"
include: "rules/frames.smk"
include: "rules/segment.smk"
include: "rules/features.smk"
include: "rules/geometry.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"
include: "rules/scene3d.smk"
include: "rules/nerf.smk"


onstart:
    check_writable_folders()


rule all:
    default_target: True
    localrule: True
    input:
        all_targets(),


# one target rule per configured scene: `snakemake scene_demo`
for _scene in SCENES:

    rule:
        name:
            scene_rule_name(_scene)
        localrule: True
        input:
            scene_targets(_scene),
