rule clip_features:
    input:
        frames="results/{dataset}/{scene}/frames.zarr",
        masks="results/{dataset}/{scene}/masks.zarr",
        objects="results/{dataset}/{scene}/objects.parquet",
        scene="results/{dataset}/{scene}/scene.json",
        checkpoint=checkpoint_input("features.clip"),
    output:
        directory("results/{dataset}/{scene}/clip_features.zarr"),
    params:
        code=stage_code("clip-features"),
        options=flags("features.clip", "backend", "model", "checkpoint", "embedder", "batch_size", "device"),
    threads: 2
    resources:
        gpu=1,
        mem_mb=memory_mb(8000),
        runtime=60,
    log:
        "logs/clip_features/{dataset}/{scene}.log",
    benchmark:
        "benchmarks/clip_features/{dataset}/{scene}.tsv"
    conda:
        "../envs/vlm.yaml"
    shell:
        "python -m pipeline clip-features --frames {input.frames} --masks {input.masks} --objects {input.objects}"
        " --scene-json {input.scene} --out {output} {params.options} --threads {threads} --no-progress > {log} 2>&1"


rule video_features:
    input:
        frames="results/{dataset}/{scene}/frames.zarr",
        masks="results/{dataset}/{scene}/masks.zarr",
        objects="results/{dataset}/{scene}/objects.parquet",
        scene="results/{dataset}/{scene}/scene.json",
    output:
        features=directory("results/{dataset}/{scene}/video_features.zarr"),
        captions="results/{dataset}/{scene}/captions.parquet",
    params:
        code=stage_code("video-features"),
        # the caption cache is not an output: Snakemake would delete it before a rerun
        cache="results/{dataset}/{scene}/caption_cache",
        options=flags("features.video", "captioner", "vlm", "embedder", "min_frames", "max_new_tokens", "device"),
    threads: 2
    resources:
        gpu=1,
        mem_mb=memory_mb(32000),
        runtime=240,
    log:
        "logs/video_features/{dataset}/{scene}.log",
    benchmark:
        "benchmarks/video_features/{dataset}/{scene}.tsv"
    conda:
        "../envs/vlm.yaml"
    shell:
        "python -m pipeline video-features --frames {input.frames} --masks {input.masks} --objects {input.objects}"
        " --scene-json {input.scene} --out {output.features} --captions {output.captions} --cache {params.cache}"
        " {params.options} --threads {threads} --no-progress > {log} 2>&1"


rule autoencoder_train:
    input:
        autoencoder_features,
    output:
        "results/{dataset}/{scene}/{kind}_autoencoder.safetensors",
    params:
        code=stage_code("autoencoder-train"),
        options=autoencoder_flags,
    threads: 1
    resources:
        mem_mb=memory_mb(4000),
        runtime=60,
    log:
        "logs/autoencoder_train/{dataset}/{scene}_{kind}.log",
    benchmark:
        "benchmarks/autoencoder_train/{dataset}/{scene}_{kind}.tsv"
    conda:
        "../envs/torch.yaml"
    shell:
        "python -m pipeline autoencoder-train --features {input} --out {output} --kind {wildcards.kind}"
        " {params.options} --threads {threads} --no-progress > {log} 2>&1"


use rule autoencoder_train as autoencoder_train_shared with:
    output:
        "results/_all/{kind}_autoencoder.safetensors",
    log:
        "logs/autoencoder_train/_all_{kind}.log",
    benchmark:
        "benchmarks/autoencoder_train/_all_{kind}.tsv"


rule autoencode:
    input:
        features="results/{dataset}/{scene}/{kind}_features.zarr",
        autoencoder=autoencoder_for,
    output:
        directory("results/{dataset}/{scene}/{kind}_latents.zarr"),
    params:
        code=stage_code("autoencode"),
    threads: 1
    resources:
        mem_mb=memory_mb(4000),
        runtime=30,
    log:
        "logs/autoencode/{dataset}/{scene}_{kind}.log",
    benchmark:
        "benchmarks/autoencode/{dataset}/{scene}_{kind}.tsv"
    conda:
        "../envs/torch.yaml"
    shell:
        "python -m pipeline autoencode --features {input.features} --autoencoder {input.autoencoder}"
        " --out {output} --config-key autoencoder.{wildcards.kind} --threads {threads} > {log} 2>&1"
