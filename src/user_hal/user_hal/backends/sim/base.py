"""What the MuJoCo arm backends share: model access, the TCP pose, rendering, closing."""
from __future__ import annotations

import mujoco
import numpy as np

from user_hal.backends.base import BackendError, RobotBackend


def xyzw(wxyz: np.ndarray) -> np.ndarray:
    """MuJoCo's (w, x, y, z) quaternion as the project's (x, y, z, w)."""
    return np.array([wxyz[1], wxyz[2], wxyz[3], wxyz[0]])


def wxyz(xyzw_: np.ndarray) -> np.ndarray:
    """The project's (x, y, z, w) quaternion as MuJoCo's (w, x, y, z)."""
    return np.array([xyzw_[3], xyzw_[0], xyzw_[1], xyzw_[2]], dtype=float)


class MujocoArmBackend(RobotBackend):
    """A simulated arm: a subclass sets ``_model``, ``_data``, ``_tcp`` (site id), ``_home_pose``,
    ``_cameras``, ``_render_images``, ``_cfg.image_width/height`` and the class's ``render_groups``."""

    render_groups: tuple[int, ...] = ()
    _model: mujoco.MjModel | None
    _data: mujoco.MjData | None
    _renderer: mujoco.Renderer | None

    def camera_names(self) -> list[str]:
        """Cameras returned by ``render`` (none when ``render_images`` is False)."""
        return list(self._cameras) if self._render_images else []

    @property
    def model(self) -> mujoco.MjModel:
        """The compiled MuJoCo model (after ``start``)."""
        return self._require()[0]

    @property
    def data(self) -> mujoco.MjData:
        """The live MuJoCo data (after ``start``)."""
        return self._require()[1]

    def close(self) -> None:
        """Free the renderer and the model. Safe to call repeatedly."""
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        self._data = None
        self._model = None

    def home_tcp_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """TCP pose at the home joints: position (3,), quaternion (4,) x, y, z, w."""
        self._require()
        assert self._home_pose is not None
        return self._home_pose[0].copy(), self._home_pose[1].copy()

    def _tcp_pose(self) -> tuple[np.ndarray, np.ndarray]:
        _, data = self._require()
        quat = np.zeros(4)
        mujoco.mju_mat2Quat(quat, data.site_xmat[self._tcp])
        return data.site_xpos[self._tcp].copy(), xyzw(quat)

    def render(self) -> dict[str, np.ndarray]:
        """RGB frames ``(H, W, 3)`` uint8 of the configured cameras (empty if rendering is off)."""
        model, data = self._require()
        if not self._render_images:
            return {}
        if self._renderer is None:
            self._renderer = mujoco.Renderer(model, self._cfg.image_height, self._cfg.image_width)
            self._render_opt = mujoco.MjvOption()
            self._render_opt.geomgroup[:] = self.render_groups
        frames: dict[str, np.ndarray] = {}
        for cam in self._cameras:
            self._renderer.update_scene(data, camera=cam, scene_option=self._render_opt)
            frames[cam] = self._renderer.render().copy()
        return frames

    def _require(self) -> tuple[mujoco.MjModel, mujoco.MjData]:
        if self._model is None or self._data is None:
            raise BackendError(f"{self.name} backend not started (call start() first) or already closed")
        return self._model, self._data
