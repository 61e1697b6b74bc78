rule demo_scene:
    output:
        directory("resources/demo/{scene}"),
    params:
        code=stage_code("demo-scene"),
        seed=scene_setting("seed"),
        frames=scene_setting("num_frames"),
    log:
        "logs/demo_scene/{scene}.log",
    benchmark:
        "benchmarks/demo_scene/{scene}.tsv"
    conda:
        "../envs/torch.yaml"
    shell:
        "python -m pipeline demo-scene --out {output} --seed {params.seed} --frames {params.frames} > {log} 2>&1"


rule frames:
    input:
        source=frames_source,
    output:
        frames=directory("results/{dataset}/{scene}/frames.zarr"),
        scene="results/{dataset}/{scene}/scene.json",
    params:
        code=stage_code("frames"),
        kind=frames_kind,
        stride=scene_setting("stride"),
        max_frames=optional_flag("--max-frames", "max_frames"),
        max_size=optional_flag("--max-size", "max_size"),
        camera=optional_flag("--camera", "camera"),
        resolution=scene_setting("resolution"),
        fps=optional_flag("--fps", "fps"),
        allow_truncated=optional_flag("--allow-truncated", "allow_truncated"),
    resources:
        mem_mb=4000,
        runtime=30,
    log:
        "logs/frames/{dataset}/{scene}.log",
    benchmark:
        "benchmarks/frames/{dataset}/{scene}.tsv"
    conda:
        "../envs/torch.yaml"
    shell:
        "python -m pipeline frames --source {input.source} --kind {params.kind} --out {output.frames}"
        " --scene-json {output.scene} --scene {wildcards.scene} --dataset {wildcards.dataset}"
        " --stride {params.stride} --resolution {params.resolution} {params.max_frames} {params.max_size}"
        " {params.camera} {params.fps} {params.allow_truncated} --no-progress > {log} 2>&1"
