# GPT4Scene scene prompts: objects in 3D, the fused cloud, a BEV + marked frames, 3D grounding.
rule scene3d:
    input:
        frames="results/{dataset}/{scene}/frames.zarr",
        masks="results/{dataset}/{scene}/masks.zarr",
        objects="results/{dataset}/{scene}/objects.parquet",
        scene="results/{dataset}/{scene}/scene.json",
        geometry=scene3d_geometry,
        render="results/{dataset}/{scene}/render.zarr",
        autoencoder=autoencoder_of("clip"),
        vocabulary=scene3d_vocabulary,
    output:
        objects3d="results/{dataset}/{scene}/objects3d.parquet",
        cloud="results/{dataset}/{scene}/cloud.ply",
        prompt=report(
            directory("results/{dataset}/{scene}/scene_prompt"),
            patterns=["contact_sheet.png"],
            caption="../workflow/report/scene_prompt.rst",
            category="Scene prompt",
            subcategory="{scene}",
        ),
        metrics="results/{dataset}/{scene}/eval/grounding.parquet",
    params:
        code=stage_code("scene3d"),
        options=scene3d_flags,
    threads: 1
    resources:
        mem_mb=memory_mb(4000),
        runtime=30,
    log:
        "logs/scene3d/{dataset}/{scene}.log",
    benchmark:
        "benchmarks/scene3d/{dataset}/{scene}.tsv"
    conda:
        "../envs/torch.yaml"
    shell:
        "python -m pipeline scene3d --frames {input.frames} --masks {input.masks} --objects {input.objects}"
        " --scene-json {input.scene} --render {input.render} --autoencoder {input.autoencoder} {params.options}"
        " --objects3d {output.objects3d} --cloud {output.cloud} --prompt-dir {output.prompt} --metrics {output.metrics}"
        " --dataset {wildcards.dataset} --scene-name {wildcards.scene} --no-progress > {log} 2>&1"


# optional: a local Qwen2-VL answers the configured questions on the scene prompt
rule scene3d_answer:
    input:
        prompt="results/{dataset}/{scene}/scene_prompt",
        objects3d="results/{dataset}/{scene}/objects3d.parquet",
        questions=scene3d_questions,
        vlm=checkpoint_input("scene3d.answer", "vlm"),
    output:
        "results/{dataset}/{scene}/answers.parquet",
    params:
        code=stage_code("scene3d-answer"),
        options=flags("scene3d.answer", "vlm", "device", "max_new_tokens"),
    threads: 2
    resources:
        gpu=1,
        mem_mb=memory_mb(32000),
        runtime=60,
    log:
        "logs/scene3d_answer/{dataset}/{scene}.log",
    benchmark:
        "benchmarks/scene3d_answer/{dataset}/{scene}.tsv"
    conda:
        "../envs/vlm.yaml"
    shell:
        "python -m pipeline scene3d-answer --prompt-dir {input.prompt} --objects3d {input.objects3d}"
        " --questions {input.questions} {params.options} --out {output} > {log} 2>&1"
