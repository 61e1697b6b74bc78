"""What the viewer draws besides the points: the camera path, the current camera, object boxes."""

from __future__ import annotations

import numpy as np

from pipeline.viewer.objects import box_on_frame

MAX_FRUSTUMS = 60


def _wxyz(R: np.ndarray) -> np.ndarray:
    import viser.transforms as vtf

    return vtf.SO3.from_matrix(R).wxyz


class SceneDrawing:
    """The drawing part of `Viewer` (uses its server, scene, extent, current frame and objects)."""

    def _add_cameras(self) -> None:
        cams = self.scene.cameras
        idx = sorted(set(np.linspace(0, len(cams) - 1, min(len(cams), MAX_FRUSTUMS)).round().astype(int).tolist()))
        h, w = cams[0].size
        self._fov = lambda cam: float(2 * np.arctan2(cam.size[0] / 2, cam.K[1, 1]))
        for t in idx:
            cam = cams[t]
            self.server.scene.add_camera_frustum(
                f"/cameras/{t:05d}", fov=self._fov(cam), aspect=w / h, scale=self.extent * 0.03,
                thickness=self.extent * 0.001, color=(120, 120, 140), wxyz=_wxyz(cam.c2w[:3, :3]),
                position=cam.c2w[:3, 3])

    def _initial_camera(self) -> None:
        """Open behind the first shown camera, a little above it, looking at the middle of its points."""
        cam = self.scene.cameras[self.t]
        xyz = self.scene.cloud(self.t).xyz
        target = np.median(xyz, axis=0) if len(xyz) else cam.c2w[:3, 3] + cam.c2w[:3, 2]
        R, centre = cam.c2w[:3, :3], cam.c2w[:3, 3]
        pos = centre - R[:, 2] * 0.3 * self.extent - R[:, 1] * 0.15 * self.extent  # back along -z, up along -y
        ic = self.server.initial_camera
        ic.position = tuple(float(v) for v in pos)
        ic.look_at = tuple(float(v) for v in target)
        ic.up = tuple(float(v) for v in -R[:, 1])
        ic.fov = float(min(self._fov(cam) * 1.3, np.deg2rad(100)))

    def _show_current_camera(self) -> None:
        cam = self.scene.cameras[self.t]
        h, w = cam.size
        img = self.scene.image(self.t)
        step = max(1, img.shape[1] // 160)
        self.server.scene.add_camera_frustum(
            "/current_camera", fov=self._fov(cam), aspect=w / h, scale=self.extent * 0.06,
            thickness=self.extent * 0.002, color=(230, 60, 30), image=np.ascontiguousarray(img[::step, ::step]),
            wxyz=_wxyz(cam.c2w[:3, :3]), position=cam.c2w[:3, 3])

    def _show_boxes(self) -> None:
        for handle in self._box_handles:
            handle.remove()
        self._box_handles = []
        if not self.objects or not self.show_boxes:
            return
        palette = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240)]
        for i, ob in enumerate(self.objects):
            box = box_on_frame(ob, self.t)
            if box is None:
                continue
            centre, size = box
            col = palette[i % len(palette)]
            self._box_handles.append(self.server.scene.add_box(
                f"/objects/{i}/box", color=col, dimensions=tuple(float(s) for s in size), wireframe=True,
                position=tuple(float(c) for c in centre)))
            top = np.asarray(centre, dtype=np.float64) - np.array([0.0, float(size[1]) / 2, 0.0])  # -y is up
            self._box_handles.append(self.server.scene.add_label(
                f"/objects/{i}/label", f"{ob['id']} {ob['name']}".strip(), position=tuple(float(c) for c in top)))
