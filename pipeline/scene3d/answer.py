"""Answer questions about a scene with a local Qwen2-VL on its scene prompt -> answers.parquet.

All images of `scene_prompt/manifest.json` (in its `scene_anno` order), then the prompt text and
the question, go into one user turn (greedy decoding), as GPT4Scene's evaluation does. Object
references `<OBJ###>` in an answer resolve to the boxes of `objects3d.parquet`; when the question
file gives reference answers, exact match and refined exact match are scored.

Question file: JSON or YAML, a list of questions, each a string or {question, answers: [...]}.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.errors import UserError
from pipeline.scene3d.answers import exact_match, object_refs, refined_match


def read_questions(path, *, config_key: str = "scene3d.answer.questions") -> list[dict]:
    """[{question, answers}] from a JSON / YAML file; an unreadable or malformed file is one line."""
    import yaml

    p = Path(str(path)) if path else None
    if p is None or not p.is_file():
        raise UserError(f"config error at `{config_key}`: question file {p} not found (expected JSON or YAML: a list of questions)")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))  # JSON is YAML
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise UserError(f"config error at `{config_key}`: question file {p} does not parse{at}") from None
    if isinstance(data, dict) and "questions" in data:
        data = data["questions"]
    if not isinstance(data, list) or not data:
        raise UserError(f"config error at `{config_key}`: question file {p} must hold a non-empty list of questions")
    out = []
    for i, item in enumerate(data):
        if isinstance(item, str):
            out.append({"question": item, "answers": []})
        elif isinstance(item, dict) and isinstance(item.get("question"), str):
            refs = item.get("answers") or []
            out.append({"question": item["question"], "answers": [str(r) for r in (refs if isinstance(refs, list) else [refs])]})
        else:
            raise UserError(f"config error at `{config_key}`: question {i} of {p} is neither a string nor {{question: ...}}")
    return out


def answer_questions(prompt_dir, objects3d, questions, out, *, vlm, device: str = "cpu", max_new_tokens: int = 128,
                     captioner=None, log=print):
    """Write answers.parquet (question, answer, objects, boxes, em, em_refined) and return it."""
    import pandas as pd
    from PIL import Image

    from pipeline.store import provenance, write_parquet

    qs = read_questions(questions)
    prompt_dir = Path(prompt_dir)
    manifest_path = prompt_dir / "manifest.json"
    if not manifest_path.is_file():
        raise UserError(f"scene prompt manifest not found: {manifest_path}")
    manifest = json.loads(manifest_path.read_text())
    order = next(iter(manifest["scene_anno"].values()))
    images = [np.asarray(Image.open(prompt_dir / f).convert("RGB")) for f in order]
    prompt = (prompt_dir / "prompt.txt").read_text()
    if captioner is None:
        from pipeline.features.captioning import VlmCaptioner

        captioner = VlmCaptioner(vlm, device=device, max_new_tokens=max_new_tokens, config_key="scene3d.answer.vlm")
    objs = pd.read_parquet(objects3d)
    boxes = {int(r.id): [r.center_x, r.center_y, r.center_z, r.size_x, r.size_y, r.size_z] for r in objs.itertuples()}
    rows = []
    from tqdm import tqdm

    for q in tqdm(qs, desc="answer", unit="question", disable=len(qs) < 3):
        answer = captioner.caption_images(images, f"{prompt}\nQuestion: {q['question']}")
        refs = [k for k in object_refs(answer)]
        known = [k for k in refs if k in boxes and np.isfinite(boxes[k]).all()]
        rows.append({
            "question": q["question"], "answer": answer, "objects": known,
            "boxes": [boxes[k] for k in known], "unknown_objects": [k for k in refs if k not in known],
            "references": q["answers"],
            "em": float(exact_match(answer, q["answers"])) if q["answers"] else np.nan,
            "em_refined": float(refined_match(answer, q["answers"])) if q["answers"] else np.nan,
        })
    table = pd.DataFrame(rows, columns=["question", "answer", "objects", "boxes", "unknown_objects", "references", "em", "em_refined"])
    prov = provenance("scene3d-answer", {"max_new_tokens": max_new_tokens, "device": device},
                      {"prompt": manifest_path, "objects3d": objects3d, "questions": questions},
                      extra={"model": getattr(captioner, "model_id", None)})
    write_parquet(out, table, provenance=prov)
    scored = table["em"].dropna()
    if len(scored):
        log(f"EM {100 * scored.mean():.1f}%, refined EM {100 * table['em_refined'].dropna().mean():.1f}% over {len(scored)} questions")
    return table


def add_arguments(parser) -> None:
    from pipeline.defaults import schema_default

    parser.add_argument("--prompt-dir", required=True, help="scene_prompt/ of the scene3d stage")
    parser.add_argument("--objects3d", required=True)
    parser.add_argument("--questions", required=True, help="JSON / YAML list of questions")
    parser.add_argument("--vlm", help="local Qwen2-VL model folder")
    parser.add_argument("--device", default=schema_default("scene3d.answer.device"))
    parser.add_argument("--max-new-tokens", type=int, default=schema_default("scene3d.answer.max_new_tokens"))
    parser.add_argument("--out", required=True, help="answers.parquet")


def run(args) -> None:
    from pipeline.cli import run_stage

    run_stage(answer_questions, args, summary=lambda table: f"{len(table)} questions answered -> {args.out}")
