"""A learned reward: a small CNN that tells success from camera frames (HIL-SERL's reward classifier).

Data: labelled frames from transition bags (``frames_from_bags``): each transition's ``next_obs`` images
with its ``success`` flag, whoever set it (the rule in simulation, a human label on a real robot).
Training (``train``): binary cross-entropy on balanced batches (half successes), DrQ random shifts and
colour jitter, whole episodes held out for validation. A saved model is a folder: ``model.safetensors``
plus ``reward_model.json`` (cameras, image size, downsampling, decision threshold (default 0.85), the
held-out metrics). ``RewardModel.load(dir)`` gives ``probability(frames)`` for inference (the reward
node, the benchmark).

Frames are area-averaged by ``downsample`` (2: 128x128 -> 64x64) before the network, in the dataset and
at inference alike, so a frame costs a quarter as much and the training set fits in memory.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .networks import ConvTrunk, mlp, random_shift

MODEL_FILE = "model.safetensors"
META_FILE = "reward_model.json"
DEFAULT_THRESHOLD = 0.85


class RewardDataError(ValueError):
    """Unusable training data or model folder (one line naming it)."""


@dataclasses.dataclass
class Frames:
    """Labelled frames: ``images`` uint8 ``[N, n_cameras, H, W, 3]`` (already downsampled)."""

    images: np.ndarray
    labels: np.ndarray           # [N] bool: success
    episodes: np.ndarray         # [N] int: an episode key (frames of one episode share it)
    cameras: list[str]
    image_size: tuple[int, int]  # width, height of the camera frames before downsampling
    downsample: int

    def __len__(self) -> int:
        return int(len(self.labels))

    def subset(self, mask: np.ndarray) -> "Frames":
        return dataclasses.replace(self, images=self.images[mask], labels=self.labels[mask],
                                   episodes=self.episodes[mask])


def shrink(images: np.ndarray, factor: int) -> np.ndarray:
    """Area-average uint8 ``[..., H, W, 3]`` by an integer factor (H and W must divide)."""
    if factor <= 1:
        return np.ascontiguousarray(images, dtype=np.uint8)
    *lead, h, w, c = images.shape
    if h % factor or w % factor:
        raise RewardDataError(f"frames of {w}x{h} do not divide by downsample {factor}")
    x = images.reshape(*lead, h // factor, factor, w // factor, factor, c).astype(np.uint16)
    return (x.sum(axis=(-4, -2)) // (factor * factor)).astype(np.uint8)


def frames_from_arrays(images: Sequence[np.ndarray], labels: Sequence[bool], episodes: Sequence[int],
                       cameras: Sequence[str], downsample: int = 2) -> Frames:
    """``Frames`` from full-size uint8 frames ``[n_cameras, H, W, 3]`` (one per labelled observation)."""
    if not len(images):
        raise RewardDataError("no frames")
    h, w = images[0].shape[1:3]
    small = np.stack([shrink(f, downsample) for f in images])   # one frame at a time: full size never stacked
    return Frames(small, np.asarray(labels, bool), np.asarray(episodes, np.int64), list(cameras),
                  (int(w), int(h)), int(downsample))


def frames_from_bags(bag_dirs: Iterable[str | Path], cameras: Sequence[str] | None = None,
                     downsample: int = 2) -> Frames:
    """Every transition's ``next_obs`` frames, labelled with its ``success`` (rule or human), by episode.

    ``cameras``: which cameras (default: those of the first transition); a transition lacking one is an
    error naming the bag and episode.
    """
    from user_buffer.bag_tools import BagToolError, list_episodes, open_bag
    from user_buffer.codec import decode_transition

    images, labels, episodes, keys = [], [], [], {}
    size = None
    for bag in bag_dirs:
        try:
            store = open_bag(bag)
        except BagToolError as exc:
            raise RewardDataError(str(exc)) from None
        try:
            for ep in list_episodes(store):
                key = keys.setdefault((str(bag), ep.robot_id, ep.episode_id), len(keys))
                for row in ep.rows.tolist():
                    t = decode_transition(store.read(row))
                    names = list(t.next_obs.camera_names)
                    if cameras is None:
                        if not names:
                            raise RewardDataError(f"{bag}: episode {ep.episode_id} has no camera images (record with "
                                                  f"cameras; the classifier judges images)")
                        cameras = names
                    missing = [c for c in cameras if c not in names]
                    if missing:
                        raise RewardDataError(f"{bag}: episode {ep.episode_id} step {t.step} has no camera "
                                              f"{missing[0]!r} (has {names})")
                    frame = np.stack([t.next_obs.images[names.index(c)] for c in cameras])
                    if size is None:
                        size = frame.shape
                    elif frame.shape != size:
                        raise RewardDataError(f"{bag}: episode {ep.episode_id} step {t.step}: frames of "
                                              f"{frame.shape[2]}x{frame.shape[1]}, earlier ones {size[2]}x{size[1]}")
                    images.append(shrink(frame, downsample))
                    labels.append(t.success)
                    episodes.append(key)
        finally:
            store.close()
    if not images:
        raise RewardDataError(f"no transitions in {', '.join(map(str, bag_dirs))}")
    return Frames(np.stack(images), np.asarray(labels, bool), np.asarray(episodes, np.int64), list(cameras),
                  (int(size[2]), int(size[1])), int(downsample))


def split_episodes(frames: Frames, val_fraction: float, seed: int = 0) -> tuple[Frames, Frames]:
    """(train, validation): whole episodes held out, about ``val_fraction`` of them, with successes on both
    sides when there are episodes with successes to share."""
    if not 0.0 < val_fraction < 1.0:
        raise RewardDataError(f"val_fraction must be in (0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    eps = np.unique(frames.episodes)
    if len(eps) < 2:
        raise RewardDataError(f"{len(eps)} episode: at least 2 are needed to hold whole episodes out")
    pos = np.unique(frames.episodes[frames.labels])
    neg = np.setdiff1d(eps, pos)
    held = []
    for group in (pos, neg):   # stratified: episodes with and without success
        group = rng.permutation(group)
        k = int(round(len(group) * val_fraction))
        if len(group) >= 2:
            k = min(max(k, 1), len(group) - 1)
        held.extend(group[:k].tolist())
    if not held or len(held) == len(eps):
        held = [int(rng.choice(eps))]
    val = np.isin(frames.episodes, held)
    return frames.subset(~val), frames.subset(val)


class SuccessClassifier(nn.Module):
    """Frames of every camera -> one success logit: a shared ``ConvTrunk`` (networks.py), a bottleneck per
    camera, an MLP over the concatenation."""

    def __init__(self, n_cameras: int, image_size: tuple[int, int], channels: int = 32, hidden: int = 256,
                 bottleneck: int = 64) -> None:
        super().__init__()
        self.trunk = ConvTrunk(image_size, channels=channels)
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Linear(self.trunk.out_dim, bottleneck), nn.LayerNorm(bottleneck), nn.Tanh())
            for _ in range(n_cameras))
        self.mlp = mlp(n_cameras * bottleneck, [hidden], 1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, n_cameras, h, w, 3]`` (downsampled) -> logits ``[B]``."""
        feats = self.trunk(pixels)
        z = torch.cat([head(feats[:, i]) for i, head in enumerate(self.heads)], dim=-1)
        return self.mlp(z).squeeze(-1)


def colour_jitter(x: torch.Tensor, strength: float, generator: torch.Generator | None) -> torch.Tensor:
    """Per image brightness and contrast changes of up to +-``strength`` (uint8 in, uint8 out)."""
    if strength <= 0:
        return x
    b, n = x.shape[:2]
    f = x.float()
    shape = (b, n, 1, 1, 1)
    contrast = 1.0 + strength * (2 * torch.rand(shape, generator=generator) - 1)
    bright = 255.0 * strength * (2 * torch.rand(shape, generator=generator) - 1)
    mean = f.mean(dim=(2, 3, 4), keepdim=True)
    return ((f - mean) * contrast + mean + bright).clamp_(0, 255).to(torch.uint8)


def metrics(prob: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """Per-frame accuracy, precision, recall and F1 of ``prob >= threshold`` against ``labels``."""
    pred = prob >= threshold
    labels = labels.astype(bool)
    tp = int(np.sum(pred & labels))
    fp = int(np.sum(pred & ~labels))
    fn = int(np.sum(~pred & labels))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": float(np.mean(pred == labels)) if len(labels) else 0.0, "precision": precision,
            "recall": recall, "f1": f1, "frames": int(len(labels)), "successes": int(labels.sum())}


@dataclasses.dataclass
class TrainConfig:
    steps: int = 1500
    batch_size: int = 64
    lr: float = 3e-4
    shift_pad: int = 3              # DrQ random shift, pixels of the downsampled frame
    jitter: float = 0.15            # colour jitter strength
    threshold: float = DEFAULT_THRESHOLD
    val_fraction: float = 0.2
    seed: int = 0


class RewardModel:
    """A trained classifier with what inference needs: cameras, frame size, downsampling, threshold."""

    def __init__(self, net: SuccessClassifier, cameras: Sequence[str], image_size: tuple[int, int],
                 downsample: int, threshold: float = DEFAULT_THRESHOLD, info: dict | None = None) -> None:
        self.net = net.eval()
        self.cameras = list(cameras)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.downsample = int(downsample)
        self.threshold = float(threshold)
        self.info = dict(info or {})

    @torch.no_grad()
    def probability_small(self, small: np.ndarray, batch: int = 256) -> np.ndarray:
        """Success probabilities of downsampled uint8 frames ``[B, n_cameras, h, w, 3]``."""
        out = []
        for i in range(0, len(small), batch):
            out.append(torch.sigmoid(self.net(torch.from_numpy(np.ascontiguousarray(small[i:i + batch])))).numpy())
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def probability(self, frames: np.ndarray) -> np.ndarray:
        """Success probabilities of full-size uint8 frames ``[B, n_cameras, H, W, 3]`` (cameras in
        ``self.cameras`` order, ``image_size`` as trained)."""
        w, h = self.image_size
        if frames.ndim != 5 or frames.shape[1:] != (len(self.cameras), h, w, 3):
            raise ValueError(f"frames of shape {tuple(frames.shape)}, the reward model expects "
                             f"[B, {len(self.cameras)}, {h}, {w}, 3] (cameras {self.cameras})")
        return self.probability_small(shrink(frames, self.downsample))

    def save(self, out_dir: str | Path) -> Path:
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.net.state_dict().items()}, str(out / MODEL_FILE))
        meta = {"cameras": self.cameras, "image_size": list(self.image_size), "downsample": self.downsample,
                "threshold": self.threshold, "channels": self.net.trunk.net[0].out_channels,
                "hidden": self.net.mlp[0].out_features, "bottleneck": self.net.heads[0][0].out_features,
                **self.info}
        (out / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
        return out

    @classmethod
    def load(cls, model_dir: str | Path, threshold: float | None = None) -> "RewardModel":
        """The model saved in ``model_dir``; ``threshold`` overrides the saved one."""
        from safetensors.torch import load_file

        d = Path(model_dir)
        try:
            meta = json.loads((d / META_FILE).read_text())
            cams, size, down = meta["cameras"], tuple(meta["image_size"]), int(meta["downsample"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RewardDataError(f"{d}: not a reward model folder ({META_FILE}: {exc})") from None
        small = (size[0] // down, size[1] // down)
        net = SuccessClassifier(len(cams), small, channels=int(meta.get("channels", 32)),
                                hidden=int(meta.get("hidden", 256)), bottleneck=int(meta.get("bottleneck", 64)))
        try:
            net.load_state_dict(load_file(str(d / MODEL_FILE)))
        except (OSError, RuntimeError) as exc:
            raise RewardDataError(f"{d / MODEL_FILE}: {exc}".splitlines()[0]) from None
        thr = meta.get("threshold", DEFAULT_THRESHOLD) if threshold is None else threshold
        if not 0.0 < thr < 1.0:
            raise RewardDataError(f"threshold must be in (0, 1), got {thr}")
        info = {k: v for k, v in meta.items() if k not in ("cameras", "image_size", "downsample", "threshold")}
        return cls(net, cams, size, down, thr, info)


def train(frames: Frames, cfg: TrainConfig | None = None, log=print) -> tuple[RewardModel, dict]:
    """Train on all but the held-out episodes; returns the model and its held-out metrics (at its threshold).

    Needs successes and failures among the training frames (the error says how many of each)."""
    cfg = cfg or TrainConfig()
    if not 0.0 < cfg.threshold < 1.0:
        raise RewardDataError(f"threshold must be in (0, 1), got {cfg.threshold}")
    tr, val = split_episodes(frames, cfg.val_fraction, cfg.seed)
    pos, neg = np.flatnonzero(tr.labels), np.flatnonzero(~tr.labels)
    if len(pos) == 0 or len(neg) == 0:
        raise RewardDataError(f"the training episodes hold {len(pos)} success and {len(neg)} failure frames; "
                              f"both are needed (record episodes that succeed and episodes that fail)")
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    h, w = tr.images.shape[2:4]
    net = SuccessClassifier(len(frames.cameras), (w, h))
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    images = torch.from_numpy(tr.images)
    half = cfg.batch_size // 2
    t0 = time.perf_counter()
    net.train()
    for step in range(1, cfg.steps + 1):
        idx = np.concatenate([rng.choice(pos, half), rng.choice(neg, cfg.batch_size - half)])  # balanced
        x = colour_jitter(random_shift(images[idx], cfg.shift_pad, gen), cfg.jitter, gen)
        y = torch.from_numpy(tr.labels[idx].astype(np.float32))
        loss = F.binary_cross_entropy_with_logits(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if log and (step % max(1, cfg.steps // 5) == 0 or step == cfg.steps):
            log(f"  step {step}/{cfg.steps}: loss {loss.item():.4f} ({time.perf_counter() - t0:.0f} s)")
    model = RewardModel(net, frames.cameras, frames.image_size, frames.downsample, cfg.threshold)
    prob = model.probability_small(val.images)
    m = metrics(prob, val.labels, cfg.threshold)
    m.update(train_frames=len(tr), train_successes=int(tr.labels.sum()),
             val_episodes=int(len(np.unique(val.episodes))), train_episodes=int(len(np.unique(tr.episodes))),
             train_seconds=time.perf_counter() - t0)
    model.info = {"held_out": m, "train": dataclasses.asdict(cfg)}
    return model, m
