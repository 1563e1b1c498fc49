"""Action-labelled trajectories for the controller and planning evaluations: a documented
on-disk format, loaders for DROID-style (robot arm) and RECON-style (navigation) episodes, and
two local generators that render frames on the CPU and need no download.

On-disk format (one folder per episode, any folder name; episodes are found recursively)::

    root/
      meta.json              optional: {"kind": "droid" | "recon", "fps": 4.0}
      episode_00000/
        frames.npy           uint8 (T, H, W, 3) RGB, one frame per control step
                             (or frames.mp4 with one video frame per step)
        actions.npy          float32 (T - 1, A): actions[t] moves the scene from frame t to t + 1
        proprio.npy          float32 (T, P), optional: the agent's state at every frame

DROID-style (``kind="droid"``, A = P = 7): actions are end-effector deltas
``(dx, dy, dz, droll, dpitch, dyaw, dgripper)`` in metres / radians in the robot base frame;
proprio is the end-effector state ``(x, y, z, roll, pitch, yaw, gripper)``.
RECON-style (``kind="recon"``, A = P = 3): actions are ``(dx, dy, dyaw)`` in the robot's own
frame at step t (dx forward, dy to the left); proprio is the world pose ``(x, y, yaw)``.

This module knows nothing of models: it yields float video (3, steps * tubelet, H, W) in
[0, 1] with each step's frame repeated ``tubelet`` times, so that one encoder time step is
one control step (the arm's end effector stands still within a step, as in
:func:`fastlam.data.make_sprite_clips`).
"""
from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from ..inputs import read_json, require_folder

ACTION_DIMS = {"droid": 7, "recon": 3}
ARM_ACTION_NAMES = ("dx", "dy", "dz", "droll", "dpitch", "dyaw", "dgripper")
NAV_ACTION_NAMES = ("dx", "dy", "dyaw")


# ---- loading ------------------------------------------------------------------------------
def list_episodes(root: str | Path) -> list[Path]:
    root = require_folder(root, "root", "a folder of episode folders, as 'python -m fastlam.eval generate' writes")
    eps = sorted({p.parent for pat in ("frames.npy", "frames.mp4") for p in root.rglob(pat)})
    if not eps:
        raise ValueError(f"root: no episodes under {root} (expected folders with frames.npy or frames.mp4)")
    return eps


def read_meta(root: str | Path) -> dict:
    f = Path(root) / "meta.json"
    return read_json(f, "root", "the meta.json that 'python -m fastlam.eval generate' writes") if f.is_file() else {}


def load_episode(path: str | Path, *, require_actions: bool = True, size: int | None = None) -> dict:
    """One episode: ``frames`` uint8 (T, H, W, 3), ``actions`` float32 (T-1, A) or None,
    ``proprio`` float32 (T, P) or None."""
    path = Path(path)
    if (path / "frames.npy").is_file():
        frames = np.load(path / "frames.npy", allow_pickle=False)
    elif (path / "frames.mp4").is_file():
        frames = _read_mp4(path / "frames.mp4")
    else:
        raise FileNotFoundError(f"episode: {path} has no frames.npy or frames.mp4")
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"{path}/frames: expected uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    frames = torch.from_numpy(np.ascontiguousarray(frames))
    if size is not None and tuple(frames.shape[1:3]) != (size, size):
        x = frames.permute(0, 3, 1, 2).float()
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        frames = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    T = frames.shape[0]
    actions = proprio = None
    if (path / "actions.npy").is_file():
        actions = torch.from_numpy(np.load(path / "actions.npy", allow_pickle=False).astype(np.float32))
        if actions.dim() != 2 or actions.shape[0] != T - 1:
            raise ValueError(f"{path}/actions.npy: expected (T - 1 = {T - 1}, A), got {tuple(actions.shape)}")
    elif require_actions:
        raise ValueError(f"episode: {path} has no actions.npy; this evaluation needs action-labelled "
                         f"trajectories (see fastlam.eval.action_data for the format)")
    if (path / "proprio.npy").is_file():
        proprio = torch.from_numpy(np.load(path / "proprio.npy", allow_pickle=False).astype(np.float32))
        if proprio.dim() != 2 or proprio.shape[0] != T:
            raise ValueError(f"{path}/proprio.npy: expected (T = {T}, P), got {tuple(proprio.shape)}")
    return {"frames": frames, "actions": actions, "proprio": proprio, "path": str(path)}


def _read_mp4(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


class TrajectoryDataset(torch.utils.data.Dataset):
    """Windows of ``steps`` consecutive control steps from every episode under ``root``.

    Item: ``{"video": float (3, steps * tubelet, H, W), "actions": (steps - 1, A),
    "proprio": (steps, P) or absent, "episode": int, "start": int}``. Windows start every
    ``stride`` steps. ``kind`` ("droid" / "recon") checks the action dimension.
    """

    def __init__(self, root: str | Path, *, steps: int = 8, tubelet: int = 1, stride: int | None = None,
                 kind: str | None = None, size: int | None = None, require_actions: bool = True):
        if steps < 2:
            raise ValueError(f"steps: expected >= 2 control steps per window, got {steps}")
        meta = read_meta(root)
        kind = kind or meta.get("kind")
        if kind is not None and kind not in ACTION_DIMS:
            raise ValueError(f"kind: expected one of {tuple(ACTION_DIMS)}, got {kind!r}")
        self.kind, self.steps, self.tubelet = kind, steps, tubelet
        self.episodes = [load_episode(p, require_actions=require_actions, size=size) for p in list_episodes(root)]
        dims = {tuple(e["actions"].shape[1:]) for e in self.episodes if e["actions"] is not None}
        if len(dims) > 1:
            raise ValueError(f"root: episodes under {root} have different action dimensions {sorted(dims)}")
        self.action_dim = dims.pop()[0] if dims else None
        if kind is not None and self.action_dim is not None and self.action_dim != ACTION_DIMS[kind]:
            raise ValueError(f"actions: a {kind!r} dataset has {ACTION_DIMS[kind]}-d actions, "
                             f"the episodes under {root} have {self.action_dim}-d")
        stride = stride or steps
        self.index = [(i, s) for i, e in enumerate(self.episodes)
                      for s in range(0, e["frames"].shape[0] - steps + 1, stride)]
        if not self.index:
            raise ValueError(f"steps: every episode under {root} is shorter than {steps} frames")

    def __len__(self):
        return len(self.index)

    def __getitem__(self, i):
        e_i, s = self.index[i]
        ep = self.episodes[e_i]
        frames = ep["frames"][s:s + self.steps]
        video = frames.permute(3, 0, 1, 2).float().div(255).repeat_interleave(self.tubelet, dim=1)
        item = {"video": video, "episode": e_i, "start": s}
        if ep["actions"] is not None:
            item["actions"] = ep["actions"][s:s + self.steps - 1]
        if ep["proprio"] is not None:
            item["proprio"] = ep["proprio"][s:s + self.steps]
        return item

    def batch(self, indices=None) -> dict:
        """Stack items (all by default) into batched tensors."""
        items = [self[i] for i in (range(len(self)) if indices is None else indices)]
        out = {k: torch.stack([it[k] for it in items]) for k in ("video", "actions", "proprio") if k in items[0]}
        out["episode"] = torch.tensor([it["episode"] for it in items])
        return out


def write_episode(path: str | Path, frames: np.ndarray, actions: np.ndarray | None, proprio: np.ndarray | None = None,
                  *, mp4_fps: float | None = None) -> Path:
    """Write one episode in the format above (``frames.npy``; also ``frames.mp4`` when
    ``mp4_fps`` is set, so the LAM trainer can read the episodes as ordinary video)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    np.save(path / "frames.npy", np.ascontiguousarray(frames, dtype=np.uint8))
    if actions is not None:
        np.save(path / "actions.npy", np.asarray(actions, dtype=np.float32))
    if proprio is not None:
        np.save(path / "proprio.npy", np.asarray(proprio, dtype=np.float32))
    if mp4_fps:
        _write_mp4(path / "frames.mp4", frames, mp4_fps)
    return path


def _write_mp4(path: Path, frames: np.ndarray, fps: float) -> None:

    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        s.options = {"crf": "12", "preset": "veryfast"}
        # One encoder thread: with x264's default (one per core) the output bytes varied between
        # identical runs, and the LAM trained on these files with them.
        s.codec_context.thread_count = 1
        for f in frames:
            c.mux(s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")))
        c.mux(s.encode())


# ---- simulated arm (DROID-style) ----------------------------------------------------------
# Workspace of the end effector in metres (robot base frame, z up).
ARM_WORKSPACE = ((-0.3, 0.3), (-0.3, 0.3), (0.02, 0.4))


class ArmRenderer:
    """A fixed oblique camera looking at a tabletop: a checkerboard table, a few coloured
    blocks, the arm as a thick segment from its base to the end effector, the end effector as
    a disk (yellow open, red closed) with a tick showing its yaw, and its shadow on the table
    (the height cue). Everything is vectorised in torch over pixels."""

    def __init__(self, size: int = 64, seed: int = 0, blocks: int = 3):
        self.size = size
        cam = torch.tensor([0.0, -0.6, 0.6])
        look = torch.tensor([0.0, 0.0, 0.1])
        fwd = (look - cam) / (look - cam).norm()
        right = torch.linalg.cross(fwd, torch.tensor([0.0, 0.0, 1.0]))
        right = right / right.norm()
        up = torch.linalg.cross(right, fwd)
        self.cam, self.R, self.f = cam, torch.stack([right, up, fwd]), 0.9 * size
        # The table: cast each pixel's ray onto z = 0 once.
        v, u = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
        self.u, self.v = u, v
        d = ((u - size / 2) / self.f)[..., None] * right + (-(v - size / 2) / self.f)[..., None] * up + fwd
        t = -cam[2] / d[..., 2]
        hit = cam + t[..., None] * d
        checker = ((hit[..., 0] / 0.1).floor() + (hit[..., 1] / 0.1).floor()) % 2
        table = 0.45 + 0.12 * checker
        bg = torch.stack([table, table * 0.95, table * 0.85])
        bg[:, t < 0] = torch.tensor([0.25, 0.3, 0.4])[:, None]  # sky above the horizon
        g = torch.Generator().manual_seed(seed)
        self.background = bg
        for _ in range(blocks):
            p = torch.cat([torch.rand(2, generator=g) * 0.5 - 0.25, torch.tensor([0.02])])
            colour = torch.rand(3, generator=g) * 0.6 + 0.2
            self.background = self._disk(self.background, p, 0.035, colour)
        self.base = torch.tensor([-0.45, 0.3, 0.0])

    def project(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """World points (..., 3) -> pixel (u, v) and depth."""
        c = (p - self.cam) @ self.R.T
        u = self.f * c[..., 0] / c[..., 2] + self.size / 2
        v = -self.f * c[..., 1] / c[..., 2] + self.size / 2
        return torch.stack([u, v], -1), c[..., 2]

    def _disk(self, img, p, radius_m, colour):
        uv, depth = self.project(p)
        r = self.f * radius_m / depth
        mask = (self.u - uv[0]) ** 2 + (self.v - uv[1]) ** 2 <= r ** 2
        return torch.where(mask, colour[:, None, None], img)

    def _segment(self, img, a, b, width_px, colour):
        (pa, _), (pb, _) = self.project(a), self.project(b)
        d = pb - pa
        t = (((self.u - pa[0]) * d[0] + (self.v - pa[1]) * d[1]) / d.pow(2).sum().clamp_min(1e-6)).clamp(0, 1)
        dist2 = (self.u - pa[0] - t * d[0]) ** 2 + (self.v - pa[1] - t * d[1]) ** 2
        return torch.where(dist2 <= (width_px / 2) ** 2, colour[:, None, None], img)

    def render(self, state: torch.Tensor) -> torch.Tensor:
        """End-effector state (x, y, z, roll, pitch, yaw, gripper) -> uint8 (H, W, 3)."""
        pos, yaw, grip = state[:3], state[5], state[6]
        img = self.background.clone()
        img = self._disk(img, torch.stack([pos[0], pos[1], torch.tensor(0.0)]), 0.03, torch.tensor([0.15, 0.15, 0.15]))
        elbow = torch.stack([self.base[0] * 0.5 + pos[0] * 0.5, self.base[1] * 0.5 + pos[1] * 0.5,
                             torch.tensor(0.45)])
        arm = torch.tensor([0.75, 0.75, 0.8])
        img = self._segment(img, self.base, elbow, max(2.0, self.size / 20), arm)
        img = self._segment(img, elbow, pos, max(2.0, self.size / 24), arm)
        colour = torch.tensor([1.0, 0.9, 0.1]) if grip < 0.5 else torch.tensor([0.9, 0.1, 0.1])
        img = self._disk(img, pos, 0.04, colour)
        tip = pos + 0.05 * torch.stack([torch.cos(yaw), torch.sin(yaw), torch.tensor(0.0)])
        img = self._segment(img, pos, tip, max(1.5, self.size / 40), torch.tensor([0.1, 0.1, 0.9]))
        return (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0)


def arm_trajectory(steps: int, gen: torch.Generator, max_delta: float = 0.05, max_dyaw: float = 0.25,
                   grip_flip_p: float = 0.1):
    """Random end-effector deltas kept inside the workspace. The recorded action is exactly the
    displacement (moves are drawn from the feasible range, never clipped after the fact);
    roll and pitch stay fixed (a top-down gripper), so their deltas are 0."""
    lo = torch.tensor([w[0] for w in ARM_WORKSPACE])
    hi = torch.tensor([w[1] for w in ARM_WORKSPACE])
    state = torch.zeros(7)
    state[:3] = lo + (hi - lo) * torch.rand(3, generator=gen)
    state[5] = (torch.rand((), generator=gen) * 2 - 1) * math.pi
    state[6] = float(torch.rand((), generator=gen) < 0.5)
    states, actions = [state.clone()], []
    for _ in range(steps - 1):
        a = torch.zeros(7)
        low = torch.maximum(lo - state[:3], torch.full((3,), -max_delta))
        high = torch.minimum(hi - state[:3], torch.full((3,), max_delta))
        a[:3] = low + (high - low) * torch.rand(3, generator=gen)
        a[5] = (torch.rand((), generator=gen) * 2 - 1) * max_dyaw
        flip = torch.rand((), generator=gen) < grip_flip_p
        a[6] = (1 - 2 * state[6]) if flip else 0.0
        state = state + a
        states.append(state.clone())
        actions.append(a)
    return torch.stack(states), torch.stack(actions)


def generate_arm(root: str | Path, *, episodes: int = 32, steps: int = 24, size: int = 64, seed: int = 0,
                 mp4_fps: float | None = 4.0) -> Path:
    """Write ``episodes`` DROID-style episodes of the simulated arm under ``root``."""
    # The arm's moves ignore its scene (the table, blocks and camera only change the pictures).
    return _write_simulated(root, ArmRenderer, lambda scene, n, gen: arm_trajectory(n, gen), kind="droid",
                            generator="arm", action_names=ARM_ACTION_NAMES, episodes=episodes, steps=steps,
                            size=size, seed=seed, mp4_fps=mp4_fps)


def _scene_seed(seed: int, episode: int) -> int:
    return seed * 100_003 + episode


def _write_simulated(root: str | Path, renderer_cls, trajectory, *, kind: str, generator: str, action_names,
                     episodes: int, steps: int, size: int, seed: int, mp4_fps: float | None) -> Path:
    """Write ``episodes`` episodes of a simulated world under ``root``, then its meta.json.

    Episode ``e`` (counting from 0) has its own scene, ``renderer_cls(size, seed=_scene_seed(seed, e))``,
    which meta.json's seed and size rebuild (:func:`arm_renderer`), and the states and actions
    ``trajectory(renderer, steps, gen)`` draws from one generator seeded with ``seed``, episode
    after episode; the frames are the renderer's pictures of the states."""
    root = Path(root)
    gen = torch.Generator().manual_seed(seed)
    for e in range(episodes):
        renderer = renderer_cls(size, seed=_scene_seed(seed, e))
        states, actions = trajectory(renderer, steps, gen)
        frames = torch.stack([renderer.render(s) for s in states])
        write_episode(root / f"episode_{e:05d}", frames.numpy(), actions.numpy(), states.numpy(), mp4_fps=mp4_fps)
    root.mkdir(parents=True, exist_ok=True)
    meta = {"kind": kind, "fps": mp4_fps or 4.0, "generator": generator, "action_names": action_names,
            "seed": seed, "size": size}
    (root / "meta.json").write_text(json.dumps(meta, indent=2))
    return root


def arm_renderer(root: str | Path, episode_path: str | Path) -> ArmRenderer:
    """The renderer of one episode written by :func:`generate_arm` under ``root`` (its scene:
    table, blocks and camera), rebuilt from meta.json's seed and the folder's episode number."""
    meta = read_meta(root)
    if meta.get("generator") != "arm" or "seed" not in meta or "size" not in meta:
        raise ValueError(f"root: {root} was not written by 'generate arm' (meta.json needs generator 'arm', "
                         f"seed and size; regenerate the data to rebuild its scenes)")
    name = Path(episode_path).name
    if not name.startswith("episode_") or not name[len("episode_"):].isdigit():
        raise ValueError(f"episode_path: expected a folder named episode_<number>, got {name!r}")
    return ArmRenderer(int(meta["size"]), seed=_scene_seed(int(meta["seed"]), int(name[len("episode_"):])))


# ---- simulated ego-camera navigation (RECON-style) ----------------------------------------
ARENA = 5.0  # the walls are at x, y = +-ARENA metres


class NavRenderer:
    """A ray-cast first-person view (90 degree field of view) in a square walled arena with
    cylindrical pillars. Walls carry vertical stripes and per-side colours, so both turning
    (the image shifts sideways) and moving (pillars grow, the stripes spread) are visible."""

    def __init__(self, size: int = 64, seed: int = 0, pillars: int = 8, fov: float = math.pi / 2):
        self.size, self.fov = size, fov
        g = torch.Generator().manual_seed(seed)
        self.centres = (torch.rand(pillars, 2, generator=g) * 2 - 1) * (ARENA - 1.0)
        self.radii = 0.15 + 0.2 * torch.rand(pillars, generator=g)
        self.colours = torch.rand(pillars, 3, generator=g) * 0.7 + 0.3
        self.wall_colours = torch.tensor([[0.8, 0.3, 0.3], [0.3, 0.7, 0.3], [0.3, 0.4, 0.85], [0.8, 0.75, 0.3]])
        # Camera-frame column angles: left of the image is +fov/2 (counter-clockwise = left).
        self.angles = fov / 2 - (torch.arange(size) + 0.5) / size * fov

    def free(self, xy: torch.Tensor, margin: float = 0.4) -> bool:
        if xy.abs().max() > ARENA - margin:
            return False
        return bool(((self.centres - xy).norm(dim=-1) > self.radii + margin).all())

    def render(self, pose: torch.Tensor) -> torch.Tensor:
        """World pose (x, y, yaw) -> uint8 (H, W, 3)."""
        H = W = self.size
        ang = pose[2] + self.angles
        d = torch.stack([torch.cos(ang), torch.sin(ang)], -1)  # (W, 2)
        o = pose[:2]
        big = torch.full((W,), 1e9)
        # Walls: the nearest positive crossing of x = +-A or y = +-A.
        dist, colour_idx, along = big.clone(), torch.zeros(W, dtype=torch.long), torch.zeros(W)
        for k, (axis, sign) in enumerate(((0, 1), (1, 1), (0, -1), (1, -1))):
            t = (sign * ARENA - o[axis]) / torch.where(d[:, axis].abs() < 1e-9, torch.full_like(d[:, axis], 1e-9), d[:, axis])
            ok = (t > 0) & (t < dist)
            dist = torch.where(ok, t, dist)
            colour_idx = torch.where(ok, torch.full_like(colour_idx, k), colour_idx)
            along = torch.where(ok, o[1 - axis] + t * d[:, 1 - axis], along)
        colour = self.wall_colours[colour_idx] * (0.8 + 0.2 * ((along / 0.5).floor() % 2))[:, None]
        height = torch.full((W,), 1.0)
        # Pillars: ray-circle intersections (a far dummy pillar keeps the arena-only case uniform).
        centres = torch.cat([self.centres, torch.full((1, 2), 1e6)])
        radii = torch.cat([self.radii, torch.ones(1)])
        colours = torch.cat([self.colours, torch.zeros(1, 3)])
        oc = o - centres  # (P, 2)
        b = d @ oc.T  # (W, P)
        c = (oc ** 2).sum(-1) - radii ** 2
        disc = b ** 2 - c
        t = -b - disc.clamp_min(0).sqrt()
        t = torch.where((disc > 0) & (t > 0), t, torch.full_like(t, 1e9))
        tp, which = t.min(dim=1)
        hit = tp < dist
        dist = torch.where(hit, tp, dist)
        colour = torch.where(hit[:, None], colours[which], colour)
        height = torch.where(hit, torch.full_like(height, 1.6), height)
        # Perpendicular distance avoids the fish-eye bend; nearer = taller and brighter.
        perp = dist * torch.cos(self.angles)
        half = (0.5 * H * height / perp.clamp_min(0.05)).clamp(max=H)
        shade = (1.0 / (1.0 + 0.08 * dist))[:, None]
        rows = torch.arange(H) + 0.5 - H / 2
        ground = 0.5 * H * 1.0 / perp.clamp_min(0.05)  # the wall/pillar base sits at camera height 0.5
        top = -(half * 2 - ground)
        in_obj = (rows[:, None] >= top[None]) & (rows[:, None] <= ground[None])
        floor = torch.tensor([0.35, 0.3, 0.25])[:, None, None] * (0.6 + 0.4 * (rows / (H / 2)).clamp(0, 1))[None, :, None]
        sky = torch.tensor([0.55, 0.7, 0.9])[:, None, None].expand(3, H, 1)
        img = torch.where((rows > 0)[None, :, None], floor, sky).expand(3, H, W)
        img = torch.where(in_obj[None], (colour * shade).T[:, None, :], img)
        return (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0)


def compose_pose(pose: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """World pose (..., 3) after a robot-frame action (dx forward, dy left, dyaw) (..., 3)."""
    c, s = torch.cos(pose[..., 2]), torch.sin(pose[..., 2])
    x = pose[..., 0] + c * action[..., 0] - s * action[..., 1]
    y = pose[..., 1] + s * action[..., 0] + c * action[..., 1]
    return torch.stack([x, y, pose[..., 2] + action[..., 2]], -1)


def integrate_actions(start: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Poses (..., K + 1, 3) visited from ``start`` (..., 3) by robot-frame actions (..., K, 3)."""
    poses = [start]
    for k in range(actions.shape[-2]):
        poses.append(compose_pose(poses[-1], actions[..., k, :]))
    return torch.stack(poses, -2)


def nav_trajectory(renderer: NavRenderer, steps: int, gen: torch.Generator, max_forward: float = 0.3,
                   max_lateral: float = 0.05, max_dyaw: float = 0.3):
    """A random walk that never enters a wall or pillar: a move that would collide is
    replaced by turning on the spot, and the recorded action is the motion actually made."""
    while True:
        pose = torch.cat([(torch.rand(2, generator=gen) * 2 - 1) * (ARENA - 1.0),
                          (torch.rand(1, generator=gen) * 2 - 1) * math.pi])
        if renderer.free(pose[:2]):
            break
    poses, actions = [pose], []
    for _ in range(steps - 1):
        a = torch.stack([torch.rand((), generator=gen) * max_forward,
                         (torch.rand((), generator=gen) * 2 - 1) * max_lateral,
                         (torch.rand((), generator=gen) * 2 - 1) * max_dyaw])
        nxt = compose_pose(pose, a)
        if not renderer.free(nxt[:2]):
            a = torch.stack([torch.tensor(0.0), torch.tensor(0.0), torch.tensor(2 * max_dyaw)])
            nxt = compose_pose(pose, a)
        pose = nxt
        poses.append(pose)
        actions.append(a)
    return torch.stack(poses), torch.stack(actions)


def generate_nav(root: str | Path, *, episodes: int = 32, steps: int = 24, size: int = 64, seed: int = 0,
                 mp4_fps: float | None = 4.0) -> Path:
    """Write ``episodes`` RECON-style episodes of the simulated ego-camera robot under ``root``."""
    # The walk avoids the scene's pillars, so it is drawn in the episode's scene.
    return _write_simulated(root, NavRenderer, nav_trajectory, kind="recon", generator="nav",
                            action_names=NAV_ACTION_NAMES, episodes=episodes, steps=steps, size=size, seed=seed,
                            mp4_fps=mp4_fps)
