"""Build SAM 2 from its package config and load local safetensors weights strictly.

One model serves both jobs: the image predictor (automatic masks on key frames) wraps the
same module that tracks objects through the video, so the weights are loaded once.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from pipeline.checkpoints import load_state_dict
from pipeline.errors import UserError

CONFIG_KEY = "segment.model_config"
CHECKPOINT_KEY = "segment.checkpoint"

# The settings SAM 2's own video-predictor builder applies on top of the model config.
_VIDEO_OVERRIDES = [
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta=0.05",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh=0.98",
    "++model.binarize_mask_from_pts_for_mem_enc=true",
    "++model.fill_hole_area=8",
]


def build_sam2_tracker(
    model_config: str,
    checkpoint: str | os.PathLike | None,
    *,
    device: torch.device,
    random_init: int | None = None,
):
    """A `Sam2Tracker` (SAM 2 video predictor) with weights from `checkpoint`.

    `random_init` (tests and benchmarks only) skips the checkpoint and seeds random weights.
    """
    import sam2  # noqa: F401  (initialises hydra's config search path)
    from hydra import compose
    from hydra.errors import HydraException
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    if not model_config:
        raise UserError(f"no SAM 2 model config set: set `{CONFIG_KEY}` (e.g. configs/sam2.1/sam2.1_hiera_t.yaml)")
    state = None
    if random_init is None:
        state = load_state_dict(checkpoint, config_key=CHECKPOINT_KEY, what="SAM 2")
    overrides = [f"++model._target_={Sam2Tracker.__module__}.{Sam2Tracker.__qualname__}", *_VIDEO_OVERRIDES]
    try:
        cfg = compose(config_name=model_config, overrides=overrides)
    except HydraException as exc:
        raise UserError(
            f"unknown SAM 2 model config {model_config!r} (config key `{CONFIG_KEY}`; expected a config of the sam2 "
            f"package such as configs/sam2.1/sam2.1_hiera_t.yaml): {str(exc).splitlines()[0]}"
        ) from None
    OmegaConf.resolve(cfg)
    if random_init is not None:
        torch.manual_seed(random_init)
    model = instantiate(cfg.model, _recursive_=True)
    if state is not None:
        expected = model.state_dict()
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        reshaped = [k for k in expected if k in state and state[k].shape != expected[k].shape]
        if missing or unexpected or reshaped:
            raise UserError(
                f"SAM 2 checkpoint {checkpoint} (config key `{CHECKPOINT_KEY}`) does not fit model config "
                f"{model_config} (`{CONFIG_KEY}`): {len(missing)} missing keys (e.g. {missing[:3]}), "
                f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}), {len(reshaped)} of another shape "
                f"(e.g. {reshaped[:3]})"
            )
        model.load_state_dict(state, strict=True)
    return model.to(device).eval()


def _tracker_base():
    from sam2.sam2_video_predictor import SAM2VideoPredictor

    return SAM2VideoPredictor


class Sam2Tracker(_tracker_base()):
    """SAM 2's video predictor with two additions for tracking many automatic masks.

    `prompt_mask` adds a mask prompt without building the all-object video-resolution
    output that `add_new_mask` returns (its cost grows with every tracked object), and
    `forget_before` drops per-frame memories the model can no longer attend to, so memory
    stays flat over long videos.
    """

    @torch.inference_mode()
    def prompt_mask(self, state, frame_idx: int, obj_id: int, mask: torch.Tensor) -> None:
        obj_idx = self._obj_id_to_idx(state, obj_id)
        if frame_idx in state["frames_tracked_per_obj"][obj_idx]:
            raise ValueError(f"object {obj_id} already tracked on frame {frame_idx}; prompts start new objects only")
        mask = mask.to(state["device"], torch.float32)[None, None]
        if mask.shape[-2:] != (self.image_size, self.image_size):
            mask = torch.nn.functional.interpolate(
                mask, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False, antialias=True
            )
            mask = (mask >= 0.5).float()
        state["mask_inputs_per_obj"][obj_idx][frame_idx] = mask
        out, _ = self._run_single_frame_inference(
            inference_state=state,
            output_dict=state["output_dict_per_obj"][obj_idx],
            frame_idx=frame_idx,
            batch_size=1,
            is_init_cond_frame=True,
            point_inputs=None,
            mask_inputs=mask,
            reverse=False,
            run_mem_encoder=False,  # the memory is encoded when propagation starts
        )
        state["temp_output_dict_per_obj"][obj_idx]["cond_frame_outputs"][frame_idx] = out

    def open_video(self, jpeg_dir: str | os.PathLike, num_frames: int) -> dict:
        """An inference state whose frames are decoded when used, not all held in memory.

        SAM 2's own loader keeps every frame as a 1024x1024 float tensor (12.6 MB a frame);
        here the state is started on the first frame and then given a lazy frame sequence.
        """
        jpeg_dir = Path(jpeg_dir)
        first = jpeg_dir / "first"
        first.mkdir(exist_ok=True)
        shutil.copyfile(jpeg_dir / f"{0:05d}.jpg", first / f"{0:05d}.jpg")
        state = self.init_state(str(first), offload_video_to_cpu=True, offload_state_to_cpu=False)
        state["images"] = LazyFrames(jpeg_dir, num_frames, self.image_size)
        state["num_frames"] = num_frames
        return state

    def memory_span(self) -> int:
        """How many past frames of non-conditioning output the model can still read."""
        return max(self.num_maskmem * max(1, self.memory_temporal_stride_for_eval), self.max_obj_ptrs_in_encoder) + 1

    def forget_before(self, state, frame_idx: int) -> None:
        horizon = frame_idx - self.memory_span()
        for out in state["output_dict_per_obj"].values():
            old = [t for t in out["non_cond_frame_outputs"] if t < horizon]
            for t in old:
                del out["non_cond_frame_outputs"][t]


class LazyFrames:
    """Frames of a JPEG folder (00000.jpg ...) prepared the way SAM 2's video loader does."""

    MEAN = (0.485, 0.456, 0.406)
    STD = (0.229, 0.224, 0.225)

    def __init__(self, folder: Path, num_frames: int, image_size: int):
        self.folder, self.num_frames, self.image_size = Path(folder), num_frames, image_size
        self.mean = torch.tensor(self.MEAN, dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(self.STD, dtype=torch.float32)[:, None, None]

    def __len__(self) -> int:
        return self.num_frames

    def __getitem__(self, t: int) -> torch.Tensor:
        from sam2.utils.misc import _load_img_as_tensor

        if not 0 <= t < self.num_frames:
            raise IndexError(t)
        image, _, _ = _load_img_as_tensor(str(self.folder / f"{t:05d}.jpg"), self.image_size)
        return (image.float() - self.mean) / self.std
