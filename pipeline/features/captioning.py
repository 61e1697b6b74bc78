"""Captioners for time-sensitive features: a local Qwen2-VL model, or the dataset's own captions.

The VLM sees 4DLangSplat's visual prompt: the frame with its background Gaussian-blurred and
grey, the object in colour and red dots on the object's boundary. It first writes one caption
per object video, then one state caption per frame from context frames t-3, t, t+3 (positions in
the object's own frame list; only t near the ends). Every caption is cached on disk under a key
of (object, frame, model, prompt, input digests, captioning code), so a rerun never captions the
same thing again and never reuses a caption made from other inputs or by other code.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pipeline.errors import UserError

# Our wording of upstream's two prompts (identify the outlined object and summarise its changes;
# then describe only the state visible now, given that summary).
VIDEO_PROMPT = (
    "In this video one object is outlined with red dots and shown in colour; everything else is "
    "blurred and grey. First say what the outlined object is. Then summarise briefly how it changes "
    "during the video: its state, shape, position or appearance."
)
FRAME_PROMPT = (
    "Summary of the object outlined with red dots over the whole video: {video_caption}\n"
    "{context}Describe in one short sentence the state of the outlined object in the current frame "
    "only, without describing earlier or later moments."
)
FRAME_CONTEXT_3 = "The three images are moments just before, at and just after the current frame (the middle one). "
FRAME_CONTEXT_1 = "The image is the current frame. "
CONTEXT_OFFSET = 3  # upstream: frames t-3, t, t+3
MIN_FRAMES = 20  # upstream skips objects visible in fewer frames
FRAMES_PER_VIDEO_DIVISOR = 38  # upstream: nframes = min(round(n / 38), 18)
MAX_VIDEO_FRAMES = 18


# ----------------------------------------------------------------------------- visual prompt
def prompt_image(image: np.ndarray, mask: np.ndarray, *, blur_radius: float = 10.0, dot_radius: int = 2) -> np.ndarray:
    """uint8 [H,W,3]: background blurred + grey, object in colour, red dots on its boundary pixels."""
    import cv2
    from PIL import Image, ImageFilter

    blurred = Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius=blur_radius))
    grey = np.asarray(blurred.convert("L").convert("RGB"))
    out = np.where(mask[..., None], image, grey).astype(np.uint8)
    m = mask.astype(np.uint8)
    inner = cv2.erode(m, np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0)
    boundary = (m > 0) & (inner == 0)
    size = 2 * dot_radius + 1
    dots = cv2.dilate(boundary.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size)))
    out[dots > 0] = (255, 0, 0)
    return out


def video_frame_positions(num_visible: int) -> list[int]:
    """Positions (into the object's visible frames) shown for the object video caption."""
    k = max(1, min(round(num_visible / FRAMES_PER_VIDEO_DIVISOR), MAX_VIDEO_FRAMES))
    return sorted({int(round(x)) for x in np.linspace(0, num_visible - 1, k)})


def context_positions(i: int, num_visible: int) -> list[int]:
    if i - CONTEXT_OFFSET >= 0 and i + CONTEXT_OFFSET < num_visible:
        return [i - CONTEXT_OFFSET, i, i + CONTEXT_OFFSET]
    return [i]


# ----------------------------------------------------------------------------- cache
class CaptionCache:
    """One small JSON file per caption, written atomically; safe to share between reruns."""

    def __init__(self, folder: str | os.PathLike | None):
        self.folder = Path(folder) if folder else None
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(**parts: Any) -> str:
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

    def _path(self, key: str) -> Path:
        assert self.folder is not None
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> str | None:
        if self.folder is None:
            return None
        p = self._path(key)
        if p.is_file():
            self.hits += 1
            return json.loads(p.read_text())["caption"]
        return None

    def put(self, key: str, caption: str, **record: Any) -> None:
        self.misses += 1
        if self.folder is None:
            return
        from pipeline.store import atomic_path

        with atomic_path(self._path(key)) as tmp:
            tmp.write_text(json.dumps({"caption": caption, **record}, sort_keys=True))


# ----------------------------------------------------------------------------- VLM
class VlmCaptioner:
    """A local Qwen2-VL (or any image-text-to-text model with a chat template), greedy decoding."""

    def __init__(self, path: str | os.PathLike | None, *, device: str = "cpu", max_new_tokens: int = 128, config_key="features.video.vlm"):
        if path is None or str(path) == "":
            raise UserError(f"no captioning model configured: set `{config_key}` to a local Qwen2-VL folder")
        p = Path(path)
        if not p.is_dir() or not (p / "config.json").is_file():
            raise UserError(f"captioning model not found: {p} (config key `{config_key}`; expected a local Qwen2-VL folder with config.json)")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from pipeline.store import input_digest

        self.path = p.resolve()
        self.device = device
        self.max_new_tokens = int(max_new_tokens)
        dtype = "auto" if device.startswith("cuda") else torch.float32
        try:
            self.processor = AutoProcessor.from_pretrained(str(p), local_files_only=True)
            self.model = AutoModelForImageTextToText.from_pretrained(str(p), dtype=dtype, local_files_only=True).to(device).eval()
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot load captioning model from {p} (config key `{config_key}`): {exc}") from None
        self.model_id = f"{p.name}:{input_digest(p)[:16]}:max_new_tokens={self.max_new_tokens}"
        self.calls = 0

    def _generate(self, content: list[dict], images=None, videos=None) -> str:
        import torch

        messages = [{"role": "user", "content": content}]
        text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = self.processor(text=[text], images=images, videos=videos, return_tensors="pt").to(self.device)
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        self.calls += 1
        new = out[:, inputs["input_ids"].shape[1] :]
        return self.processor.batch_decode(new, skip_special_tokens=True)[0].strip()

    def caption_video(self, frames: Sequence[np.ndarray], prompt: str) -> str:
        return self._generate([{"type": "video"}, {"type": "text", "text": prompt}], videos=[np.stack(frames)])

    def caption_images(self, images: Sequence[np.ndarray], prompt: str) -> str:
        from PIL import Image

        content = [{"type": "image"} for _ in images] + [{"type": "text", "text": prompt}]
        return self._generate(content, images=[Image.fromarray(im) for im in images])


def caption_objects_vlm(
    captioner: VlmCaptioner,
    frames,
    level_masks,
    visible: dict[int, list[int]],
    *,
    cache: CaptionCache,
    inputs_digest: str,
    min_frames: int = MIN_FRAMES,
    progress: bool = True,
) -> tuple[dict[tuple[int, int], str], dict[int, str], list[int]]:
    """({(object, frame): state caption}, {object: video caption}, skipped objects)."""
    from tqdm import tqdm

    captions: dict[tuple[int, int], str] = {}
    video_captions: dict[int, str] = {}
    skipped: list[int] = []
    prompts: dict[int, np.ndarray] = {}

    def prompt_at(obj: int, t: int) -> np.ndarray:
        if t not in prompts:
            prompts[t] = prompt_image(np.asarray(frames[t]), np.asarray(level_masks[t]) == obj)
        return prompts[t]

    total = sum(len(v) + 1 for k, v in visible.items() if len(v) >= min_frames)
    bar = tqdm(total=total, desc="captions", unit="caption", disable=not progress)
    for obj in sorted(visible):
        ts = visible[obj]
        if len(ts) < min_frames:
            skipped.append(obj)
            continue
        prompts.clear()
        key = cache.key(object=obj, frame="video", model=captioner.model_id, prompt=VIDEO_PROMPT, inputs=inputs_digest)
        video_caption = cache.get(key)
        if video_caption is None:
            shown = [prompt_at(obj, ts[i]) for i in video_frame_positions(len(ts))]
            video_caption = captioner.caption_video(shown, VIDEO_PROMPT)
            cache.put(key, video_caption, object=obj, frame="video")
        video_captions[obj] = video_caption
        bar.update(1)
        for i, t in enumerate(ts):
            ctx = context_positions(i, len(ts))
            prompt = FRAME_PROMPT.format(video_caption=video_caption, context=FRAME_CONTEXT_3 if len(ctx) == 3 else FRAME_CONTEXT_1)
            key = cache.key(object=obj, frame=int(t), model=captioner.model_id, prompt=prompt, inputs=inputs_digest)
            caption = cache.get(key)
            if caption is None:
                caption = captioner.caption_images([prompt_at(obj, ts[j]) for j in ctx], prompt)
                cache.put(key, caption, object=obj, frame=int(t))
            captions[(obj, int(t))] = caption
            bar.update(1)
    bar.close()
    return captions, video_captions, skipped


# ----------------------------------------------------------------------------- ground truth
def caption_objects_gt(
    scene: dict[str, Any],
    level_masks_4d,
    levels: list[str],
    level: int,
    visible: dict[int, list[int]],
    objects_table=None,
) -> tuple[dict[tuple[int, int], str], dict[int, int | None]]:
    """({(object, frame): caption} from gt/captions.json, {mask id: ground-truth object id})."""
    from pipeline.features.inputs import match_masks_to_gt

    path = (scene.get("gt") or {}).get("captions")
    if not path or not Path(path).is_file():
        raise UserError(f"scene {scene.get('scene')!r} has no ground-truth captions (scene.json gt.captions)")
    table = json.loads(Path(path).read_text())
    matches = match_masks_to_gt(
        level_masks_4d, levels, scene, use_levels=[level], objects_table=objects_table, objects_only=True
    )
    source = scene.get("source_indices") or list(range(level_masks_4d.shape[1]))
    gt_ids: dict[int, int | None] = {}
    captions: dict[tuple[int, int], str] = {}
    for obj, ts in visible.items():
        match = matches.get((level, obj))
        gid = match.gt_id if match else None
        gt_ids[obj] = gid
        per_frame = table.get(str(gid)) if gid is not None else None
        if not per_frame:
            continue
        for t in ts:
            s = source[t]
            if s < len(per_frame) and per_frame[s]:
                captions[(obj, t)] = str(per_frame[s])
    return captions, gt_ids
