rule evaluate:
    input:
        render="results/{dataset}/{scene}/render.zarr",
        scene="results/{dataset}/{scene}/scene.json",
        geometry="results/{dataset}/{scene}/geometry.zarr",
        source=frames_source,
        autoencoder=autoencoder_of("clip"),
        video_autoencoder=autoencoder_of("video"),
        query_embeddings=checkpoint_input("evaluate", "query_embeddings"),
    output:
        metrics="results/{dataset}/{scene}/eval/metrics.parquet",
        figures=report(
            directory("results/{dataset}/{scene}/eval/figures"),
            patterns=["{query}.png"],
            caption="../workflow/report/figures.rst",
            category="Relevancy",
            subcategory="{scene}",
        ),
    params:
        code=stage_code("evaluate"),
        video=video_autoencoder_flag,
        options=evaluate_flags,
    threads: 2
    resources:
        mem_mb=memory_mb(8000),
        runtime=60,
    log:
        "logs/evaluate/{dataset}/{scene}.log",
    benchmark:
        "benchmarks/evaluate/{dataset}/{scene}.tsv"
    conda:
        "../envs/vlm.yaml"
    shell:
        "python -m pipeline evaluate --render {input.render} --source {input.source} --scene-json {input.scene}"
        " --geometry {input.geometry} --autoencoder {input.autoencoder} {params.video}"
        " --dataset {wildcards.dataset} --scene-name {wildcards.scene} --out results/{wildcards.dataset}/{wildcards.scene}/eval"
        " {params.options} > {log} 2>&1"


rule report:
    input:
        metrics=report_metrics,
        strips=nerf_strips,
    output:
        table="results/reports/metrics.parquet",
        markdown="results/reports/metrics.md",
        html=report(
            "results/reports/metrics.html",
            caption="../workflow/report/metrics.rst",
            category="Metrics",
        ),
    params:
        code=stage_code("report"),
    resources:
        mem_mb=1000,
        runtime=5,
    log:
        "logs/report/report.log",
    benchmark:
        "benchmarks/report/report.tsv"
    conda:
        "../envs/torch.yaml"
    shell:
        "python -m pipeline report --in {input.metrics} --strips {input.strips} --out results/reports > {log} 2>&1"
