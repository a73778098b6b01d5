"""Damped-least-squares inverse kinematics of one site of a MuJoCo model (positions only, no dynamics).

Each iteration solves ``dq = J^T (J J^T + lambda^2 I)^-1 e`` for the 6-D pose error ``e`` (position, then
rotation vector times ``rotation_weight``, world frame; the Jacobian's rows weighted alike) and clips ``q`` to
the joint limits; a joint held at a limit drops out of the next solve, so the others make up for it. The
damping keeps steps bounded near a singularity, where an exact solve would swing the joints; the weight
decides what gives way when a pose is out of reach (below 1: the orientation).
"""
from __future__ import annotations

import dataclasses

import mujoco
import numpy as np


@dataclasses.dataclass
class IKResult:
    q: np.ndarray          # joint positions (the arm joints, in the solver's order)
    pos_error: float       # metres left between the site and the target
    rot_error: float       # radians left
    iterations: int


class DampedLeastSquaresIK:
    """Solves for the arm joints that put ``site`` at a target pose, on a scratch copy of the model's data."""

    def __init__(self, model: mujoco.MjModel, site: str, joints: list[str] | tuple[str, ...], damping: float = 0.02,
                 max_iterations: int = 60, pos_tolerance: float = 1e-4, rot_tolerance: float = 1e-3,
                 max_step: float = 0.3, rotation_weight: float = 0.05) -> None:
        """``damping`` is lambda (in metres-and-radians units of the error); ``max_step`` bounds the joint
        change of one iteration (rad); ``rotation_weight`` is metres of position error worth one radian."""
        self.model = model
        self.data = mujoco.MjData(model)
        self.site = model.site(site).id
        self.qpos_adr = np.array([model.joint(j).qposadr[0] for j in joints])
        self.dof_adr = np.array([model.joint(j).dofadr[0] for j in joints])
        self.lower = model.jnt_range[[model.joint(j).id for j in joints], 0].copy()
        self.upper = model.jnt_range[[model.joint(j).id for j in joints], 1].copy()
        self.damping2 = damping ** 2
        self.max_iterations = max_iterations
        self.pos_tolerance, self.rot_tolerance = pos_tolerance, rot_tolerance
        self.max_step = max_step
        self._weights = np.array([1.0, 1.0, 1.0, rotation_weight, rotation_weight, rotation_weight])
        self._jacp = np.zeros((3, model.nv))
        self._jacr = np.zeros((3, model.nv))
        self._quat = np.zeros(4)
        self._qneg = np.zeros(4)
        self._qerr = np.zeros(4)
        self._rot = np.zeros(3)

    def forward(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Site position (3,) and quaternion (4,) ``w, x, y, z`` at joint positions ``q``."""
        self._set(q)
        mujoco.mju_mat2Quat(self._quat, self.data.site_xmat[self.site])
        return self.data.site_xpos[self.site].copy(), self._quat.copy()

    def _set(self, q: np.ndarray) -> None:
        self.data.qpos[self.qpos_adr] = q
        mujoco.mj_kinematics(self.model, self.data)
        mujoco.mj_comPos(self.model, self.data)

    def _error(self, pos: np.ndarray, quat_wxyz: np.ndarray) -> np.ndarray:
        d = self.data
        err = np.empty(6)
        err[:3] = pos - d.site_xpos[self.site]
        mujoco.mju_mat2Quat(self._quat, d.site_xmat[self.site])
        mujoco.mju_negQuat(self._qneg, self._quat)
        mujoco.mju_mulQuat(self._qerr, quat_wxyz, self._qneg)
        if self._qerr[0] < 0.0:  # the short way round
            self._qerr *= -1.0
        mujoco.mju_quat2Vel(self._rot, self._qerr, 1.0)
        err[3:] = self._rot
        return err

    def solve(self, q0: np.ndarray, pos: np.ndarray, quat_wxyz: np.ndarray) -> IKResult:
        """Joints near ``q0`` that put the site at ``pos`` / ``quat_wxyz`` (world frame), within the joint
        limits; when the pose is out of reach, the closest the iterations found."""
        q = np.clip(np.asarray(q0, dtype=float).copy(), self.lower, self.upper)
        quat = np.asarray(quat_wxyz, dtype=float) / np.linalg.norm(quat_wxyz)
        pos = np.asarray(pos, dtype=float)
        eye = np.eye(6)
        for it in range(self.max_iterations + 1):
            self._set(q)
            err = self._error(pos, quat)
            pe, re = float(np.linalg.norm(err[:3])), float(np.linalg.norm(err[3:]))
            if (pe <= self.pos_tolerance and re <= self.rot_tolerance) or it == self.max_iterations:
                return IKResult(q, pe, re, it)
            mujoco.mj_jacSite(self.model, self.data, self._jacp, self._jacr, self.site)
            jac = np.vstack([self._jacp[:, self.dof_adr], self._jacr[:, self.dof_adr]]) * self._weights[:, None]
            werr = err * self._weights
            dq = jac.T @ np.linalg.solve(jac @ jac.T + self.damping2 * eye, werr)
            # Joints pressed against a limit cannot help: solve again without them, so the others do.
            stuck = ((q <= self.lower + 1e-9) & (dq < 0.0)) | ((q >= self.upper - 1e-9) & (dq > 0.0))
            if stuck.any():
                jac[:, stuck] = 0.0
                dq = jac.T @ np.linalg.solve(jac @ jac.T + self.damping2 * eye, werr)
            biggest = float(np.max(np.abs(dq)))
            if biggest > self.max_step:
                dq *= self.max_step / biggest
            q = np.clip(q + dq, self.lower, self.upper)
        raise AssertionError("unreachable")  # pragma: no cover
