rule nerf_train:
    input:
        unpack(nerf_training_inputs),
    output:
        weights="results/{dataset}/{scene}/nerf/nerf.safetensors",
        log="results/{dataset}/{scene}/nerf/nerf_log.parquet",
        plot=report(
            "results/{dataset}/{scene}/nerf/loss.png",
            caption="../workflow/report/nerf_loss.rst",
            category="Novel views",
            subcategory="{scene}",
        ),
    params:
        code=stage_code("nerf-train"),
        inputs=nerf_training_arguments,
        # checkpoints to resume from are not outputs: Snakemake would delete them before a rerun
        checkpoints="results/{dataset}/{scene}/nerf/checkpoints",
        options=nerf_train_flags,
    threads: 2
    resources:
        gpu=1,
        mem_mb=memory_mb(16000),
        runtime=720,
    log:
        "logs/nerf_train/{dataset}/{scene}.log",
    benchmark:
        "benchmarks/nerf_train/{dataset}/{scene}.tsv"
    conda:
        "../envs/torch.yaml"
    shell:
        "python -m pipeline nerf-train {params.inputs} --out {output.weights} --log {output.log} --plot {output.plot}"
        " --checkpoint-dir {params.checkpoints} {params.options} --threads {threads} --quiet > {log} 2>&1"


use rule nerf_train as nerf_train_shared with:
    output:
        weights="results/_all/nerf.safetensors",
        log="results/_all/nerf_log.parquet",
        plot="results/_all/nerf_loss.png",
    params:
        code=stage_code("nerf-train"),
        inputs=nerf_training_arguments,
        checkpoints="results/_all/nerf_checkpoints",
        options=nerf_train_flags,
    log:
        "logs/nerf_train/_all.log",
    benchmark:
        "benchmarks/nerf_train/_all.tsv"


rule nerf_render:
    input:
        unpack(nerf_scene_inputs),
        weights=nerf_weights_for,
    output:
        directory("results/{dataset}/{scene}/nerf/render.zarr"),
    params:
        code=stage_code("nerf-render"),
        options=flags("nerf", "device", "chunk"),
    threads: 2
    resources:
        gpu=1,
        mem_mb=memory_mb(8000),
        runtime=60,
    log:
        "logs/nerf_render/{dataset}/{scene}.log",
    benchmark:
        "benchmarks/nerf_render/{dataset}/{scene}.tsv"
    conda:
        "../envs/torch.yaml"
    shell:
        "python -m pipeline nerf-render --weights {input.weights} --frames {input.frames} --tokens {input.tokens}"
        " --scene-json {input.scene_json} --geometry {input.geometry} --name {wildcards.scene} --out {output}"
        " {params.options} --threads {threads} --quiet > {log} 2>&1"


rule nerf_path:
    input:
        unpack(nerf_scene_inputs),
        weights=nerf_weights_for,
    output:
        "results/{dataset}/{scene}/nerf/path.mp4",
    params:
        code=stage_code("nerf-render"),
        options=flags("nerf", "device", "chunk", "path_frames"),
    threads: 2
    resources:
        gpu=1,
        mem_mb=memory_mb(8000),
        runtime=120,
    log:
        "logs/nerf_path/{dataset}/{scene}.log",
    benchmark:
        "benchmarks/nerf_path/{dataset}/{scene}.tsv"
    conda:
        "../envs/torch.yaml"
    shell:
        "python -m pipeline nerf-render --weights {input.weights} --frames {input.frames} --tokens {input.tokens}"
        " --scene-json {input.scene_json} --geometry {input.geometry} --name {wildcards.scene} --path-video {output}"
        " {params.options} --threads {threads} --quiet > {log} 2>&1"


rule nerf_evaluate:
    input:
        unpack(nerf_scene_inputs),
        render="results/{dataset}/{scene}/nerf/render.zarr",
        weights=nerf_weights_for,
        backbone=checkpoint_input("nerf", "lpips_backbone"),
    output:
        metrics="results/{dataset}/{scene}/nerf/metrics.parquet",
        strip=report(
            "results/{dataset}/{scene}/nerf/strip.png",
            caption="../workflow/report/nerf_strip.rst",
            category="Novel views",
            subcategory="{scene}",
        ),
    params:
        code=stage_code("nerf-evaluate"),
        options=flags("nerf", "lpips_backbone", "strip_frames"),
        max_depth=lookup(dpath="evaluate/max_depth", within=config),
    threads: 1
    resources:
        mem_mb=memory_mb(4000),
        runtime=30,
    log:
        "logs/nerf_evaluate/{dataset}/{scene}.log",
    benchmark:
        "benchmarks/nerf_evaluate/{dataset}/{scene}.tsv"
    conda:
        "../envs/torch.yaml"
    shell:
        "python -m pipeline nerf-evaluate --render {input.render} --weights {input.weights} --frames {input.frames}"
        " --tokens {input.tokens} --scene-json {input.scene_json} --geometry {input.geometry} --name {wildcards.scene}"
        " --dataset {wildcards.dataset} --scene-name {wildcards.scene} --out {output.metrics} --strip {output.strip}"
        " --max-depth {params.max_depth} {params.options} > {log} 2>&1"
