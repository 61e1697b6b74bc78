"""Segmentation: multi-level masks with ids that stay the same over time.

Four levels as in LangSplat: `default` (every multimask output), `s`, `m`, `l` (multimask
output 0, 1, 2). Backends: `sam2` (automatic masks + SAM 2 video propagation) and `gt` (the
scene's own instance / part masks).
"""

from pipeline.levels import MASK_LEVELS as LEVELS  # noqa: F401  (the segment stages' name)
