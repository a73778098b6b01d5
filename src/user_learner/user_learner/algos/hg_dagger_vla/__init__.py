"""HG-DAgger for the VLA-like chunk policy (``user_learner.vla``): flow-matching behaviour cloning of
the expert's next ``H`` actions on the steps an expert controlled (demonstrations and interventions).

``finetune`` picks what trains and therefore what crosses to inference on every weight update:

- ``all``: every weight (the policy needs nothing else),
- ``head``: the action head only; the trunk stays as in ``pretrained``,
- ``lora``: rank-``lora_rank`` adapters on every linear layer of the trunk, plus the action head.

With ``head`` or ``lora`` ``policy_state_dict()`` holds only the trained tensors; the inference side
builds the frozen rest from the same ``pretrained`` directory (``model.safetensors`` + ``config.json``,
written by ``python -m user_learner.vla.pretrain``), which must therefore be present on that machine too.
Without ``pretrained`` the model starts from the seed (tests; pretraining itself uses ``all``).

A chunk's target stops at the first step an expert did not control (the policy's own steps are not
labels) and at the episode's end (``chunk_mask``). Batches must carry ``action_chunk`` when
``chunk_size`` > 1: the learner's replay samples them then (``replay.kind`` memory or bag). Transitions do not carry the
instruction: training uses ``instruction`` for every row, acting the robot's ``RobotDescription.instruction``.
"""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from user_common.features import Features

from .. import Algorithm, AlgoConfig, register
from ...batch import check_batch
from ..hg_dagger import SOURCE_HUMAN, SOURCE_SCRIPTED, ExpertSources
from ...vla.model import LoRALinear, VLAArchitecture, VLAModel, VLAModelConfig, add_lora, load_model, tokenize

__all__ = ["HGDAggerVLAConfig", "HGDAggerVLAAgent", "VLAPolicy", "build_model", "ALGORITHM"]

STATE_DICT_VERSION = 1
ARCH_FIELDS = tuple(f.name for f in dataclasses.fields(VLAArchitecture))


@dataclasses.dataclass
class HGDAggerVLAConfig(AlgoConfig, VLAArchitecture):
    """The architecture fields (``VLAArchitecture``) build the model without ``pretrained``; with it the
    file's own architecture is used, and ``chunk_size`` must agree."""

    batch_size: int = 32
    pretrained: str = ""           # directory with model.safetensors + config.json ("" = from the seed)
    finetune: Literal["all", "head", "lora"] = "all"
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lr: float = 1.0e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0         # global gradient norm; 0 = none
    instruction: str = ""          # the task's instruction, used for every training row
    expert_sources: tuple[int, ...] = (SOURCE_HUMAN, SOURCE_SCRIPTED)

    def validate(self) -> None:
        super().validate()
        if self.finetune not in ("all", "head", "lora"):
            raise ValueError(f"finetune: must be all, head or lora, got {self.finetune!r}")
        if self.finetune != "all" and not self.pretrained:
            raise ValueError(f"finetune: {self.finetune} keeps the pretrained weights: set pretrained (a directory "
                             f"written by python -m user_learner.vla.pretrain)")
        if self.lora_rank <= 0:
            raise ValueError(f"lora_rank: must be > 0, got {self.lora_rank!r}")
        if self.lr <= 0:
            raise ValueError(f"lr: must be > 0, got {self.lr!r}")
        ExpertSources(self.expert_sources)

    def model_config(self, spec: Features) -> VLAModelConfig:
        return VLAModelConfig(state_dim=spec.state_dim, action_dim=spec.action_dim, cameras=tuple(spec.cameras),
                              image_size=tuple(spec.image_size), **{k: getattr(self, k) for k in ARCH_FIELDS})


def build_model(spec: Features, cfg: HGDAggerVLAConfig) -> VLAModel:
    """The model as ``cfg`` says (pretrained or from the seed, LoRA-wrapped for ``lora``), with
    ``requires_grad`` set on exactly what ``finetune`` trains. Raises if a pretrained model does not fit ``spec``."""
    if cfg.pretrained:
        model, _ = load_model(Path(cfg.pretrained))
        c = model.c
        mine = (spec.state_dim, spec.action_dim, tuple(spec.cameras), tuple(spec.image_size))
        theirs = (c.state_dim, c.action_dim, tuple(c.cameras), tuple(c.image_size))
        if mine != theirs:
            raise ValueError(f"pretrained: {cfg.pretrained} was trained for (state_dim, action_dim, cameras, "
                             f"image_size) {theirs}, obs: says {mine}")
        if c.chunk_size != cfg.chunk_size:
            raise ValueError(f"chunk_size: {cfg.chunk_size}, but {cfg.pretrained} outputs chunks of {c.chunk_size}")
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            model = VLAModel(cfg.model_config(spec))
    if cfg.finetune == "lora":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed + 1)
            add_lora(model.trunk, cfg.lora_rank, cfg.lora_alpha)
    for name, p in model.named_parameters():
        p.requires_grad_(cfg.finetune == "all" or name.startswith("head.") or ".lora_" in name)
    return model


def trained_state(model: VLAModel) -> dict[str, torch.Tensor]:
    """The tensors that train (CPU copies): what crosses to inference."""
    return {k: p.detach().cpu().clone() for k, p in model.named_parameters() if p.requires_grad}


class HGDAggerVLAAgent:
    """The learner side: the model, the optimiser over what trains, the flow-matching BC update."""

    def __init__(self, spec: Features, cfg: HGDAggerVLAConfig, device: str | torch.device = "cpu") -> None:
        spec.validate()
        cfg.validate()
        self.spec, self.cfg, self.device = spec, cfg, torch.device(device)
        self.model = build_model(spec, cfg).to(self.device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.tokens = tokenize(cfg.instruction, self.model.c.text_tokens).to(self.device)
        self.experts = ExpertSources(cfg.expert_sources, self.device)
        self.generator = torch.Generator(self.device).manual_seed(cfg.seed)
        self.num_updates = 0
        self.labels_seen = 0

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One flow-matching BC step on the batch's expert rows (a batch without any: no step)."""
        check_batch(batch, self.spec)
        h = self.model.c.chunk_size
        if h == 1 and "action_chunk" not in batch:   # a chunk of one is the action itself
            batch = {**batch, "action_chunk": batch["action"][:, None],
                     "chunk_mask": torch.ones(batch["action"].shape[0], 1)}
        for key in ("action_chunk", "chunk_mask", "action_source"):
            if key not in batch:
                raise ValueError(f"batch: missing key {key!r} (the replay samples chunks after set_chunk; "
                                 f"have {sorted(batch)})")
        if batch["action_chunk"].shape[1:] != (h, self.spec.action_dim):
            raise ValueError(f"batch['action_chunk']: expected [B, {h}, {self.spec.action_dim}], "
                             f"got {list(batch['action_chunk'].shape)}")
        b = {k: v.to(self.device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
        labelled = self.experts.labels(b["action_source"])
        n = int(labelled.sum())
        self.num_updates += 1
        metrics = {"expert_fraction": n / len(labelled), "num_updates": float(self.num_updates)}
        if n == 0:
            return {**metrics, "bc_loss": float("nan")}
        mask = b["chunk_mask"][labelled]
        if "chunk_source" in b:   # the target stops where the expert let go
            mask = mask * torch.cumprod(self.experts.labels(b["chunk_source"][labelled]).to(torch.float32), dim=1)
        pixels = b["pixels"][labelled] if self.spec.cameras else None
        tokens = self.tokens.expand(n, -1)
        self.model.train()
        loss = self.model.flow_loss(b["state"][labelled], tokens, pixels, b["action_chunk"][labelled], mask,
                                    self.generator)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.opt.step()
        self.labels_seen += n
        return {**metrics, "bc_loss": float(loss.detach()), "chunk_steps": float(mask.sum(1).mean())}

    def policy_state_dict(self) -> dict[str, torch.Tensor]:
        """What ``VLAPolicy`` loads: the trained tensors only (all of them for ``finetune: all``)."""
        return trained_state(self.model)

    def state_dict(self) -> dict[str, Any]:
        """Trained tensors, optimiser, counters and RNG states (the frozen base is the pretrained file)."""
        return copy.deepcopy({
            "version": STATE_DICT_VERSION, "spec": dataclasses.asdict(self.spec),
            "config": dataclasses.asdict(self.cfg), "trained": trained_state(self.model),
            "optimizer": self.opt.state_dict(), "num_updates": self.num_updates, "labels_seen": self.labels_seen,
            "rng": {"generator": self.generator.get_state(), "torch": torch.get_rng_state()},
        })

    def load_state_dict(self, d: dict[str, Any]) -> None:
        if d.get("version") != STATE_DICT_VERSION:
            raise ValueError(f"state dict version {d.get('version')!r} is not {STATE_DICT_VERSION}")
        load_trained(self.model, d["trained"])
        self.opt.load_state_dict(d["optimizer"])
        self.num_updates, self.labels_seen = int(d["num_updates"]), int(d["labels_seen"])
        self.generator.set_state(d["rng"]["generator"])
        torch.set_rng_state(d["rng"]["torch"])


def load_trained(model: VLAModel, d: dict[str, torch.Tensor]) -> None:
    """Copy ``d`` into the trained tensors of ``model``; raises naming missing, unexpected or misshapen keys."""
    params = {k: p for k, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(set(params) - set(d)), sorted(set(d) - set(params))
    if missing or unexpected:
        raise ValueError(f"policy state dict: missing keys {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                         f"unexpected keys {unexpected[:5]}{'...' if len(unexpected) > 5 else ''} "
                         f"({len(params)} expected)")
    with torch.no_grad():
        for k, p in params.items():
            if tuple(d[k].shape) != tuple(p.shape):
                raise ValueError(f"policy state dict: {k} is {list(d[k].shape)}, the model has {list(p.shape)}")
            p.copy_(d[k])


class VLAPolicy:
    """The inference side: acts in chunks of ``chunk_size`` actions, given the robot's instruction."""

    uses_instruction = True

    def __init__(self, spec: Features, cfg: HGDAggerVLAConfig) -> None:
        spec.validate()
        cfg.validate()
        self.spec, self.cfg = spec, cfg
        self.model = build_model(spec, cfg).eval()
        self.chunk_size = self.model.c.chunk_size
        self._tokens: dict[str, torch.Tensor] = {}

    def load_policy_state_dict(self, d: dict[str, torch.Tensor]) -> None:
        load_trained(self.model, d)

    def act(self, state: np.ndarray, pixels: np.ndarray | None, deterministic: bool,
            generator: torch.Generator | None = None, instruction: str | None = None) -> np.ndarray:
        """``[H, A]`` actions (``[A]`` when H = 1) in ``[-1, 1]``; ``instruction`` None or empty: the config's."""
        text = instruction or self.cfg.instruction
        tokens = self._tokens.get(text)
        if tokens is None:
            tokens = self._tokens[text] = tokenize(text, self.model.c.text_tokens)[None]
        s = torch.from_numpy(np.asarray(state, np.float32).reshape(1, -1))
        px = None
        if self.spec.cameras:
            if pixels is None:
                raise ValueError(f"pixels: the policy sees cameras {list(self.spec.cameras)}, got none")
            px = torch.from_numpy(np.ascontiguousarray(pixels)[None])
        chunk = self.model.sample(s, tokens, px, deterministic, generator)[0].numpy()
        return chunk[0] if self.chunk_size == 1 else chunk


def lora_layers(model: VLAModel) -> int:
    return sum(isinstance(m, LoRALinear) for m in model.modules())


ALGORITHM = register(Algorithm("hg_dagger_vla", HGDAggerVLAConfig, HGDAggerVLAAgent, VLAPolicy, needs_demos=True,
                               batch_extras=("action_source", "intervened"),
                               summary="HG-DAgger for the VLA-like chunk policy (flow-matching BC; all/head/lora)"))
