"""The VGGT-family geometry network (VGGT, StreamVGGT) in the project's own code.

`model.GeometryModel` holds the aggregator and the camera, depth and point heads with the
parameter names of the official checkpoints; `runner.run_geometry` drives it in `stream`,
`batch` or `offline` mode; `stage.compute_geometry` writes tokens.zarr + geometry.zarr.
"""
