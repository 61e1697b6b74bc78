rule segment:
    input:
        frames="results/{dataset}/{scene}/frames.zarr",
        scene="results/{dataset}/{scene}/scene.json",
        checkpoint=checkpoint_input("segment"),
    output:
        masks=directory("results/{dataset}/{scene}/masks.zarr"),
        objects="results/{dataset}/{scene}/objects.parquet",
        sheet=report(
            "results/{dataset}/{scene}/masks.png",
            caption="../workflow/report/masks.rst",
            category="Segmentation",
            subcategory="{scene}",
        ),
    params:
        code=stage_code("segment"),
        options=flags(
            "segment",
            "backend",
            "model_config",
            "checkpoint",
            "device",
            "points_per_side",
            "pred_iou_thresh",
            "stability_score_thresh",
            "box_nms_thresh",
            "min_mask_region_area",
            "detect_every",
            "working_size",
        ),
    threads: 2
    resources:
        gpu=1,
        mem_mb=memory_mb(16000),
        runtime=120,
    log:
        "logs/segment/{dataset}/{scene}.log",
    benchmark:
        "benchmarks/segment/{dataset}/{scene}.tsv"
    conda:
        "../envs/sam2.yaml"
    shell:
        "python -m pipeline segment --frames {input.frames} --scene-json {input.scene} --out {output.masks}"
        " --objects {output.objects} --contact-sheet {output.sheet} {params.options} --no-progress > {log} 2>&1"
