"""A small VLA-like policy: images, proprio and an instruction in, a chunk of ``H`` actions out.

Tokens (all of width ``d_model``) go through one transformer trunk:

- one proprio token (``Linear(state_dim)``),
- instruction tokens: the UTF-8 bytes of the lower-cased, stripped text (token = byte + 1, 0 = padding,
  at most ``text_tokens``; longer text is cut), an ``Embedding(257)`` plus positions,
- image patches: every camera's ``patch_size`` x ``patch_size`` patches through one shared strided
  convolution (a ViT stem), plus patch positions and a per-camera embedding.

The action head is a flow-matching transformer over ``H`` action tokens that cross-attends to the trunk's
output: trained to predict the velocity ``a - eps`` at ``x_t = t a + (1 - t) eps``; acting integrates
``flow_steps`` Euler steps from ``eps ~ N(0, I)`` (from 0 when deterministic) and clips to ``[-1, 1]``.
The trunk runs once per call; only the head runs per integration step.

Saved as ``model.safetensors`` plus ``config.json`` (``VLAModelConfig``), see ``save_model``/``load_model``.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

PAD = 0
VOCAB = 257   # bytes + padding


@dataclasses.dataclass
class VLAArchitecture:
    """The architecture's sizes; the defaults make a model of about 29 M parameters (with two cameras)."""

    chunk_size: int = 8                        # H, actions per call
    d_model: int = 512
    layers: int = 8
    heads: int = 8
    mlp_ratio: int = 4
    patch_size: int = 16
    text_tokens: int = 48
    head_dim: int = 256                        # the action head's width
    head_layers: int = 3
    head_heads: int = 4
    flow_steps: int = 5                        # Euler steps when acting


@dataclasses.dataclass
class VLAModelConfig(VLAArchitecture):
    """Everything a model is built from: the architecture plus the observation and action layout."""

    state_dim: int = 27
    action_dim: int = 7
    cameras: tuple[str, ...] = ()
    image_size: tuple[int, int] = (128, 128)   # width, height

    def validate(self) -> None:
        for name in ("state_dim", "action_dim", *(f.name for f in dataclasses.fields(VLAArchitecture))):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name}: must be > 0, got {getattr(self, name)!r}")
        if self.d_model % self.heads or self.head_dim % self.head_heads:
            raise ValueError(f"d_model {self.d_model} / heads {self.heads} and head_dim {self.head_dim} / head_heads "
                             f"{self.head_heads} must divide evenly")
        w, h = self.image_size
        if self.cameras and (w % self.patch_size or h % self.patch_size):
            raise ValueError(f"image_size: {w}x{h} is not a multiple of patch_size {self.patch_size}")

    @property
    def patches(self) -> int:
        w, h = self.image_size
        return (w // self.patch_size) * (h // self.patch_size) if self.cameras else 0

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "VLAModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"model config: unknown keys {unknown}")
        d = dict(d)
        d["cameras"] = tuple(d.get("cameras", ()))
        d["image_size"] = tuple(d.get("image_size", (128, 128)))
        return cls(**d)


def tokenize(text: str, max_tokens: int) -> torch.Tensor:
    """Byte tokens ``[max_tokens]`` (int64) of an instruction: UTF-8 of ``text.strip().lower()``, + 1, 0-padded."""
    ids = [b + 1 for b in text.strip().lower().encode("utf-8")][:max_tokens]
    return torch.tensor(ids + [PAD] * (max_tokens - len(ids)), dtype=torch.int64)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, mask: torch.Tensor | None) -> torch.Tensor:
    b, n, d = q.shape
    split = lambda x: x.reshape(b, x.shape[1], heads, d // heads).transpose(1, 2)   # noqa: E731
    out = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=mask)
    return out.transpose(1, 2).reshape(b, n, d)


class SelfAttention(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return self.proj(_sdpa(q, k, v, self.heads, mask))


class CrossAttention(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        k, v = self.kv(memory).chunk(2, dim=-1)
        return self.proj(_sdpa(self.q(x), k, v, self.heads, mask))


class Block(nn.Module):
    """Pre-norm transformer block; with ``cross`` it also attends to a memory."""

    def __init__(self, d: int, heads: int, mlp_ratio: int, cross: bool = False) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(d), SelfAttention(d, heads)
        self.cross = CrossAttention(d, heads) if cross else None
        self.norm_c = nn.LayerNorm(d) if cross else None
        self.norm2 = nn.LayerNorm(d)
        self.fc1, self.fc2 = nn.Linear(d, mlp_ratio * d), nn.Linear(mlp_ratio * d, d)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, memory: torch.Tensor | None = None,
                memory_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask)
        if self.cross is not None:
            x = x + self.cross(self.norm_c(x), memory, memory_mask)
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


def time_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features ``[B, dim]`` of flow times ``t`` ``[B]`` in [0, 1]."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=t.dtype, device=t.device) * (-math.log(1000.0) / max(half - 1, 1)))
    angles = 1000.0 * t[:, None] * freqs[None]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class Trunk(nn.Module):
    """Observation encoder: proprio, instruction and patch tokens through ``layers`` blocks."""

    def __init__(self, c: VLAModelConfig) -> None:
        super().__init__()
        d = c.d_model
        self.c = c
        self.proprio = nn.Linear(c.state_dim, d)
        self.text = nn.Embedding(VOCAB, d)
        self.text_pos = nn.Parameter(torch.zeros(1, c.text_tokens, d))
        if c.cameras:
            self.patch = nn.Conv2d(3, d, c.patch_size, stride=c.patch_size)
            self.patch_pos = nn.Parameter(torch.zeros(1, c.patches, d))
            self.camera = nn.Parameter(torch.zeros(1, len(c.cameras), 1, d))
        self.blocks = nn.ModuleList(Block(d, c.heads, c.mlp_ratio) for _ in range(c.layers))
        self.norm = nn.LayerNorm(d)
        for p in (self.text_pos, *((self.patch_pos, self.camera) if c.cameras else ())):
            nn.init.normal_(p, std=0.02)

    def forward(self, state: torch.Tensor, tokens: torch.Tensor,
                pixels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Trunk output ``[B, N, d]`` and its key mask ``[B, 1, 1, N]`` (False = padding)."""
        b = state.shape[0]
        parts = [self.proprio(state)[:, None], self.text(tokens) + self.text_pos]
        keep = [torch.ones(b, 1, dtype=torch.bool, device=state.device), tokens != PAD]
        if self.c.cameras:
            if pixels is None:
                raise ValueError(f"pixels: the model sees cameras {list(self.c.cameras)}, got none")
            n = pixels.shape[1]
            x = pixels.flatten(0, 1).permute(0, 3, 1, 2).to(torch.float32) / 127.5 - 1.0   # uint8 [B n H W 3]
            x = self.patch(x).flatten(2).transpose(1, 2).reshape(b, n, -1, self.c.d_model)
            x = (x + self.patch_pos[:, None] + self.camera).reshape(b, -1, self.c.d_model)
            parts.append(x)
            keep.append(torch.ones(b, x.shape[1], dtype=torch.bool, device=state.device))
        x = torch.cat(parts, dim=1)
        mask = torch.cat(keep, dim=1)[:, None, None, :]
        for blk in self.blocks:
            x = blk(x, mask)
        return self.norm(x), mask


class ActionHead(nn.Module):
    """Flow-matching velocity over an ``H``-step chunk, cross-attending to the trunk."""

    def __init__(self, c: VLAModelConfig) -> None:
        super().__init__()
        d = c.head_dim
        self.memory_in = nn.Linear(c.d_model, d)
        self.action_in = nn.Linear(c.action_dim, d)
        self.time = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.pos = nn.Parameter(torch.zeros(1, c.chunk_size, d))
        nn.init.normal_(self.pos, std=0.02)
        self.blocks = nn.ModuleList(Block(d, c.head_heads, c.mlp_ratio, cross=True) for _ in range(c.head_layers))
        self.norm = nn.LayerNorm(d)
        self.out = nn.Linear(d, c.action_dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Velocity ``[B, H, A]`` at noisy chunk ``x`` ``[B, H, A]`` and times ``t`` ``[B]``."""
        h = self.action_in(x) + self.pos + self.time(time_features(t, self.pos.shape[-1]))[:, None]
        mem = self.memory_in(memory)
        for blk in self.blocks:
            h = blk(h, None, mem, mask)
        return self.out(self.norm(h))


class VLAModel(nn.Module):
    def __init__(self, c: VLAModelConfig) -> None:
        super().__init__()
        c.validate()
        self.c = c
        self.trunk = Trunk(c)
        self.head = ActionHead(c)

    def encode(self, state: torch.Tensor, tokens: torch.Tensor, pixels: torch.Tensor | None):
        return self.trunk(state, tokens, pixels)

    def flow_loss(self, state: torch.Tensor, tokens: torch.Tensor, pixels: torch.Tensor | None,
                  chunk: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean squared velocity error over the unmasked steps of target chunks ``[B, H, A]`` (mask ``[B, H]``)."""
        memory, key_mask = self.encode(state, tokens, pixels)
        b = chunk.shape[0]
        eps = torch.randn(chunk.shape, generator=generator, device=chunk.device)
        t = torch.rand(b, generator=generator, device=chunk.device)
        x = t[:, None, None] * chunk + (1 - t[:, None, None]) * eps
        err = (self.head(x, t, memory, key_mask) - (chunk - eps)).pow(2).mean(-1)
        return (err * mask).sum() / mask.sum().clamp(min=1.0)

    @torch.no_grad()
    def sample(self, state: torch.Tensor, tokens: torch.Tensor, pixels: torch.Tensor | None, deterministic: bool,
               generator: torch.Generator | None = None, steps: int | None = None) -> torch.Tensor:
        """Action chunks ``[B, H, A]`` in ``[-1, 1]``."""
        memory, key_mask = self.encode(state, tokens, pixels)
        shape = (state.shape[0], self.c.chunk_size, self.c.action_dim)
        dev = state.device
        x = torch.zeros(shape, device=dev) if deterministic else torch.randn(shape, generator=generator, device=dev)
        k = steps or self.c.flow_steps
        for i in range(k):
            t = torch.full((shape[0],), i / k, device=dev)
            x = x + self.head(x, t, memory, key_mask) / k
        return x.clamp(-1.0, 1.0)


# -- low-rank adapters -------------------------------------------------------------------------------------
class LoRALinear(nn.Module):
    """``base(x) + (alpha / r) * x A^T B^T`` with ``base`` frozen and ``B`` starting at zero."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base
        self.lora_a = nn.Parameter(torch.randn(rank, base.in_features) / math.sqrt(base.in_features))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * F.linear(F.linear(x, self.lora_a), self.lora_b)


def add_lora(module: nn.Module, rank: int, alpha: float) -> int:
    """Wrap every ``nn.Linear`` under ``module`` in a :class:`LoRALinear`; returns how many."""
    n = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear):
            setattr(module, name, LoRALinear(child, rank, alpha))
            n += 1
        else:
            n += add_lora(child, rank, alpha)
    return n


# -- files -------------------------------------------------------------------------------------------------
WEIGHTS, CONFIG = "model.safetensors", "config.json"


def save_model(model: VLAModel, directory: str | Path, extra: dict | None = None) -> Path:
    """Write ``model.safetensors`` and ``config.json`` (the architecture, plus ``extra`` under ``"info"``)."""
    from safetensors.torch import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(out / WEIGHTS))
    (out / CONFIG).write_text(json.dumps({"model": model.c.to_json(), "info": extra or {}}, indent=2) + "\n")
    return out


def load_model(directory: str | Path) -> tuple[VLAModel, dict]:
    """The model saved by :func:`save_model` in ``directory`` and its ``info``."""
    from safetensors.torch import load_file

    d = Path(directory)
    for f in (CONFIG, WEIGHTS):
        if not (d / f).is_file():
            raise FileNotFoundError(f"{d / f}: no such file (a VLA model directory holds {CONFIG} and {WEIGHTS})")
    meta = json.loads((d / CONFIG).read_text())
    model = VLAModel(VLAModelConfig.from_json(meta["model"]))
    model.load_state_dict(load_file(str(d / WEIGHTS)))
    return model, meta.get("info", {})


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
