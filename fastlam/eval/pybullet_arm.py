"""Optional DROID-style episodes from pybullet's KUKA iiwa (``pip install pybullet``: a
prebuilt wheel, ~30 s; nothing else is downloaded, the robot, floor and cube models ship inside the
package as ``pybullet_data``).

The arm is driven kinematically: each step asks inverse kinematics for the commanded
end-effector delta (position and yaw, the tool pointing down), sets the joints, and records the
displacement the end effector actually made as the action, so labels always agree with the
pictures. The iiwa model has no gripper: ``dgripper`` and the gripper state are 0. Frames come
from pybullet's CPU TinyRenderer. Written in the format of :mod:`fastlam.eval.action_data`.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from .action_data import ARM_ACTION_NAMES, write_episode

WORKSPACE = ((0.45, 0.75), (-0.25, 0.25), (0.25, 0.55))  # metres, robot base frame
EE_LINK = 6


def _require():
    try:
        import pybullet  # optional dependency: the simulator (pip install pybullet)
        import pybullet_data  # optional dependency: the robot, floor and cube models of the pybullet wheel
    except ImportError as e:  # the generator is optional; the numpy arm needs nothing
        raise ImportError("generate_pybullet_arm needs pybullet (pip install pybullet); "
                          "fastlam.eval.action_data.generate_arm renders a simulated arm without it") from e
    return pybullet, pybullet_data


def generate_pybullet_arm(root: str | Path, *, episodes: int = 8, steps: int = 24, size: int = 64, seed: int = 0,
                          max_delta: float = 0.05, max_dyaw: float = 0.25, mp4_fps: float | None = 4.0) -> Path:
    p, pybullet_data = _require()
    root = Path(root)
    rng = np.random.default_rng(seed)
    cid = p.connect(p.DIRECT)
    try:
        p.setAdditionalSearchPath(pybullet_data.getDataPath(), physicsClientId=cid)
        p.loadURDF("plane.urdf", physicsClientId=cid)
        kuka = p.loadURDF("kuka_iiwa/model.urdf", [0, 0, 0], useFixedBase=True, physicsClientId=cid)
        n_joints = p.getNumJoints(kuka, physicsClientId=cid)
        view = p.computeViewMatrix([1.45, -0.75, 0.95], [0.55, 0.0, 0.2], [0, 0, 1], physicsClientId=cid)
        proj = p.computeProjectionMatrixFOV(55, 1.0, 0.1, 5.0, physicsClientId=cid)
        lo = np.array([w[0] for w in WORKSPACE])
        hi = np.array([w[1] for w in WORKSPACE])
        cubes = []

        def pose_to(pos, yaw):
            orn = p.getQuaternionFromEuler([0, -math.pi, yaw])
            q = p.calculateInverseKinematics(kuka, EE_LINK, pos.tolist(), orn, maxNumIterations=200,
                                             residualThreshold=1e-5, physicsClientId=cid)
            for j in range(n_joints):
                p.resetJointState(kuka, j, q[j], physicsClientId=cid)
            st = p.getLinkState(kuka, EE_LINK, computeForwardKinematics=True, physicsClientId=cid)
            # Yaw from the tool's x axis: Euler angles of a downward tool flip between branches.
            m = p.getMatrixFromQuaternion(st[5])
            return np.array(st[4]), math.atan2(m[3], m[0])

        def render():
            img = p.getCameraImage(size, size, view, proj, renderer=p.ER_TINY_RENDERER, physicsClientId=cid)[2]
            return np.asarray(img, dtype=np.uint8).reshape(size, size, 4)[..., :3]

        for e in range(episodes):
            for c in cubes:
                p.removeBody(c, physicsClientId=cid)
            cubes = [p.loadURDF("cube_small.urdf", [*rng.uniform([0.45, -0.3], [0.8, 0.3]), 0.03],
                                physicsClientId=cid) for _ in range(3)]
            yaw_cmd = rng.uniform(-math.pi, math.pi)
            pos, yaw = pose_to(lo + (hi - lo) * rng.random(3), yaw_cmd)
            states, frames, actions = [], [render()], []
            states.append(np.r_[pos, 0.0, 0.0, yaw, 0.0])
            for _ in range(steps - 1):
                low = np.maximum(lo - pos, -max_delta)
                high = np.minimum(hi - pos, max_delta)
                yaw_cmd += rng.uniform(-max_dyaw, max_dyaw)
                new_pos, new_yaw = pose_to(pos + rng.uniform(low, high), yaw_cmd)
                dyaw = (new_yaw - yaw + math.pi) % (2 * math.pi) - math.pi
                actions.append(np.r_[new_pos - pos, 0.0, 0.0, dyaw, 0.0])
                pos, yaw = new_pos, yaw + dyaw
                states.append(np.r_[pos, 0.0, 0.0, yaw, 0.0])
                frames.append(render())
            write_episode(root / f"episode_{e:05d}", np.stack(frames), np.stack(actions), np.stack(states),
                          mp4_fps=mp4_fps)
    finally:
        p.disconnect(physicsClientId=cid)
    (root / "meta.json").write_text(json.dumps({"kind": "droid", "fps": mp4_fps or 4.0, "generator": "pybullet_kuka",
                                                "action_names": ARM_ACTION_NAMES}, indent=2))
    return root
