"""Evaluation of rendered language fields: the 4DLangSplat protocol, depth and pose metrics, reports.

Modules, one job each:
- `protocol`   the settings of the protocol (every threshold; defaults = upstream's choices)
- `coco`       ground truth: COCO polygons -> masks, video annotations -> intervals, frame indices
- `relevancy`  time-agnostic maps: relevancy, smoothing, thresholds, level choice, IoU / pixel accuracy
- `temporal`   time-sensitive scoring: temporal smoothing, thresholds, frame Acc and vIoU
- `geometry_metrics`  depth Abs Rel / delta with per-sequence alignment; ATE / RPE after Sim(3)
- `encoders`   adapter to the text encoders, autoencoders and precomputed query embeddings
- `figures`    relevancy overlays (PNG) and overlay videos (mp4)
- `table`      the long metrics table (metrics.parquet rows)
- `language`   the language metrics of one rendered scene (per-frame loop, aggregates, temporal scoring)
- `geometry_eval`  the depth and pose rows of one scene where it has ground truth
- `stage`, `query`, `report`  the command-line stages
"""
