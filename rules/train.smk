rule train:
    input:
        unpack(training_inputs),
    output:
        weights="results/{dataset}/{scene}/sbd.safetensors",
        log="results/{dataset}/{scene}/train_log.parquet",
        plot=report(
            "results/{dataset}/{scene}/loss.png",
            caption="../workflow/report/loss.rst",
            category="Training",
            subcategory="{scene}",
        ),
    params:
        code=stage_code("train"),
        inputs=training_arguments,
        # checkpoints to resume from are not outputs: Snakemake would delete them before a rerun
        checkpoints="results/{dataset}/{scene}/sbd_checkpoints",
        options=sbd_flags,
    threads: 2
    resources:
        gpu=1,
        mem_mb=memory_mb(32000),
        runtime=720,
    log:
        "logs/train/{dataset}/{scene}.log",
    benchmark:
        "benchmarks/train/{dataset}/{scene}.tsv"
    conda:
        "../envs/torch.yaml"
    shell:
        "python -m pipeline train {params.inputs} --out {output.weights} --log {output.log} --plot {output.plot}"
        " --checkpoint-dir {params.checkpoints} {params.options} --threads {threads} --quiet > {log} 2>&1"


use rule train as train_shared with:
    output:
        weights="results/_all/sbd.safetensors",
        log="results/_all/train_log.parquet",
        plot="results/_all/loss.png",
    params:
        code=stage_code("train"),
        inputs=training_arguments,
        checkpoints="results/_all/sbd_checkpoints",
        options=sbd_flags,
    log:
        "logs/train/_all.log",
    benchmark:
        "benchmarks/train/_all.tsv"


rule render:
    input:
        tokens="results/{dataset}/{scene}/tokens.zarr",
        weights=sbd_weights_for,
    output:
        directory("results/{dataset}/{scene}/render.zarr"),
    params:
        code=stage_code("render"),
        options=flags("sbd", "device", "output_placement"),
    threads: 2
    resources:
        gpu=1,
        mem_mb=memory_mb(8000),
        runtime=60,
    log:
        "logs/render/{dataset}/{scene}.log",
    benchmark:
        "benchmarks/render/{dataset}/{scene}.tsv"
    conda:
        "../envs/torch.yaml"
    shell:
        "python -m pipeline render --tokens {input.tokens} --checkpoint {input.weights} --out {output}"
        " {params.options} --threads {threads} --quiet > {log} 2>&1"
