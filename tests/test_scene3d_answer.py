"""The optional answer rule: a tiny random Qwen2-VL (built offline) answers on a scene prompt."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.errors import UserError
from pipeline.scene3d.answer import answer_questions, read_questions


@pytest.fixture()
def prompt(tmp_path):
    d = tmp_path / "scene_prompt"
    d.mkdir()
    for name in ("bev.png", "frame_0000.png"):
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (56, 56, 3), dtype=np.uint8)).save(d / name)
    (d / "manifest.json").write_text(json.dumps({"scene_anno": {"s": ["bev.png", "frame_0000.png"]}}))
    (d / "prompt.txt").write_text("Refer to objects as <OBJ###>.\n")
    pd.DataFrame([{"id": 1, "center_x": 0.0, "center_y": 1.0, "center_z": 2.0, "size_x": 0.5, "size_y": 0.5,
                   "size_z": 0.5}]).to_parquet(tmp_path / "objects3d.parquet")
    (tmp_path / "questions.yaml").write_text("- question: What is red?\n  answers: [the cup, a mug]\n- Where is the lamp?\n")
    return tmp_path


def test_tiny_qwen2vl_answers_every_question(prompt, tmp_path):
    from _tiny_vlm import build_tiny_qwen2vl

    vlm = build_tiny_qwen2vl(tmp_path / "tiny_vlm")
    table = answer_questions(prompt / "scene_prompt", prompt / "objects3d.parquet", prompt / "questions.yaml",
                             tmp_path / "answers.parquet", vlm=vlm, max_new_tokens=4, log=lambda *_: None)
    back = pd.read_parquet(tmp_path / "answers.parquet")
    assert list(back.question) == ["What is red?", "Where is the lamp?"]
    assert back.answer.map(type).eq(str).all()
    assert back.em.iloc[0] in (0.0, 1.0) and np.isnan(back.em.iloc[1])  # scored only with references
    assert len(table) == 2


class _Says:
    model_id = "stub"

    def __init__(self, text):
        self.text, self.seen = text, []

    def caption_images(self, images, prompt):
        self.seen.append((len(images), prompt))
        return self.text


def test_object_references_resolve_to_boxes_and_answers_are_scored(prompt, tmp_path):
    says = _Says("It is the Cup <OBJ001>, not <OBJ007>.")
    table = answer_questions(prompt / "scene_prompt", prompt / "objects3d.parquet", prompt / "questions.yaml",
                             tmp_path / "a.parquet", vlm=None, captioner=says, log=lambda *_: None)
    assert says.seen[0][0] == 2 and says.seen[0][1].endswith("Question: What is red?")
    row = table.iloc[0]
    assert list(row.objects) == [1] and list(row.unknown_objects) == [7]
    assert np.allclose(row.boxes[0], [0, 1, 2, 0.5, 0.5, 0.5])
    assert row.em == 0.0 and row.em_refined == 1.0  # "the cup" is inside the answer


def test_bad_question_file_and_missing_model_are_one_line(prompt, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- question: [unclosed\n")
    with pytest.raises(UserError, match=r"`scene3d.answer.questions`.*bad.yaml does not parse"):
        read_questions(bad)
    with pytest.raises(UserError, match=r"`scene3d.answer.questions`.*nope.json not found"):
        read_questions(tmp_path / "nope.json")
    with pytest.raises(UserError, match=r"no_model.*`scene3d.answer.vlm`"):
        answer_questions(prompt / "scene_prompt", prompt / "objects3d.parquet", prompt / "questions.yaml",
                         tmp_path / "a.parquet", vlm=tmp_path / "no_model")
