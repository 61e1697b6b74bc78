"""A 4D viewer in the browser for a rendered scene (`python -m pipeline view`).

`scene` reads a scene's results (point clouds per frame, cameras, annotations, object boxes),
`relevancy` scores typed text against the rendered language field with the evaluation's own
functions (a per-frame cache of decoded features), and `app` serves both with viser (its
`controls` and `drawing` parts too). Only those talk to viser; `scene`, `objects`, `relevancy` and
`snapshot` are plain numpy/torch and tested without a server.
"""
