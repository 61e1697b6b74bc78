rule geometry:
    input:
        frames="results/{dataset}/{scene}/frames.zarr",
        checkpoint=checkpoint_input("geometry"),
    output:
        tokens=directory("results/{dataset}/{scene}/tokens.zarr"),
        geometry=directory("results/{dataset}/{scene}/geometry.zarr"),
    params:
        code=stage_code("geometry"),
        weights=geometry_weights,
        options=flags(
            "geometry",
            "backbone",
            "page4d_mask",
            "ignore_keys",
            "mode",
            "cache_window",
            "chunk_size",
            "device",
            "dtype",
            "cache_dtype",
            "merge_ratio",
            "max_size",
            "layers",
            "points",
            "token_dtype",
        ),
    threads: 2
    resources:
        gpu=1,
        mem_mb=memory_mb(16000),
        runtime=120,
    log:
        "logs/geometry/{dataset}/{scene}.log",
    benchmark:
        "benchmarks/geometry/{dataset}/{scene}.tsv"
    conda:
        "../envs/torch.yaml"
    shell:
        "python -m pipeline geometry --frames {input.frames} --out results/{wildcards.dataset}/{wildcards.scene}"
        " {params.weights} {params.options} --no-progress > {log} 2>&1"
