"""The level names every stage shares, defined once.

Masks (masks.zarr, the feature tables) have four levels as in LangSplat: `default` (every
multimask output) and `s`, `m`, `l` (multimask outputs 0, 1, 2). The decoder renders and the
evaluation scores the three sized ones (render.zarr `lang_s` / `lang_m` / `lang_l`, upstream's
language levels 1..3).
"""

MASK_LEVELS = ("default", "s", "m", "l")
LANGUAGE_LEVELS = MASK_LEVELS[1:]
