"""One policy, several bodies: each embodiment's proprio layout mapped onto one common policy input.

A replay row holds the *union* of the embodiments' named proprio values (raw units, 0 where an embodiment
lacks a value); the policy sees those values normalized with the offset and scale of the row's own
embodiment, followed by a one-hot of the embodiment. The design is in ``docs/embodiments.md``.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np


class EmbodimentMismatch(ValueError):
    """A robot or a transition whose embodiment or proprio layout the map does not accept."""


@dataclasses.dataclass(frozen=True)
class EmbodimentLayout:
    """What one embodiment publishes: its proprio names in order, and how to normalize them."""

    proprio: tuple[str, ...]                # RobotDescription.proprio_names of this embodiment
    state_offset: tuple[float, ...] = ()    # () -> no offset
    state_scale: tuple[float, ...] = ()     # () -> no scaling

    def validate(self) -> None:
        if not self.proprio:
            raise ValueError("proprio: must name at least one value")
        if len(set(self.proprio)) != len(self.proprio):
            raise ValueError(f"proprio: names must be unique, got {list(self.proprio)}")
        for name in ("state_offset", "state_scale"):
            v = getattr(self, name)
            if v and len(v) != len(self.proprio):
                raise ValueError(f"{name}: has {len(v)} values, proprio has {len(self.proprio)}")
        if any(x <= 0 for x in self.state_scale):
            raise ValueError(f"state_scale: must be > 0, got {list(self.state_scale)}")


class EmbodimentMap:
    """Maps each embodiment's raw proprio to the common row (``stored``) and rows to policy inputs
    (``policy_input``): ``[normalized union values, one-hot of the embodiment]``."""

    def __init__(self, layouts: Mapping[str, EmbodimentLayout]) -> None:
        if not layouts:
            raise ValueError("embodiments: name at least one embodiment")
        for name, layout in layouts.items():
            try:
                layout.validate()
            except ValueError as exc:
                raise ValueError(f"{name}.{exc}") from None
        self.layouts = dict(layouts)
        self.embodiments: tuple[str, ...] = tuple(layouts)
        names: list[str] = []
        for layout in layouts.values():
            names += [n for n in layout.proprio if n not in names]
        self.names: tuple[str, ...] = tuple(names)          # the union, in order of first appearance
        self.stored_dim = len(names)
        self.input_dim = len(names) + len(self.embodiments)
        self._columns = {e: np.array([names.index(n) for n in lay.proprio], np.int64) for e, lay in layouts.items()}
        # Per embodiment, offset and 1/scale over the whole row: values it lacks stay 0 (offset 0, scale 1).
        self._offset = np.zeros((len(self.embodiments), len(names)), np.float32)
        self._inv_scale = np.ones((len(self.embodiments), len(names)), np.float32)
        for k, (e, lay) in enumerate(layouts.items()):
            if lay.state_offset:
                self._offset[k, self._columns[e]] = lay.state_offset
            if lay.state_scale:
                self._inv_scale[k, self._columns[e]] = 1.0 / np.asarray(lay.state_scale, np.float32)
        self._index = {e: k for k, e in enumerate(self.embodiments)}

    def describe(self) -> str:
        """What it accepts, e.g. ``franka_fr3 (20 proprio values), wxai (14)``."""
        parts = [f"{e} ({len(lay.proprio)} proprio values)" if k == 0 else f"{e} ({len(lay.proprio)})"
                 for k, (e, lay) in enumerate(self.layouts.items())]
        return ", ".join(parts)

    def proprio_problem(self, embodiment: str, proprio_names: Sequence[str]) -> str:
        """Why a robot of ``embodiment`` publishing ``proprio_names`` does not fit ('' if it does)."""
        layout = self.layouts.get(embodiment)
        if layout is None:
            return f"its embodiment {embodiment!r} is not one this policy serves (it serves {self.describe()})"
        names = tuple(proprio_names)
        if names == layout.proprio:
            return ""
        if len(names) != len(layout.proprio):
            return (f"it publishes {len(names)} proprio values ({', '.join(names)}), the config's {embodiment} "
                    f"layout has {len(layout.proprio)} ({', '.join(layout.proprio)})")
        i = next(i for i, (a, b) in enumerate(zip(names, layout.proprio)) if a != b)
        return (f"its proprio value {i} is {names[i]!r}, the config's {embodiment} layout has {layout.proprio[i]!r} "
                f"there ({', '.join(layout.proprio)})")

    def stored(self, embodiment: str, proprio: np.ndarray) -> np.ndarray:
        """One raw proprio vector as a common row (raw units, 0 where this embodiment has no value)."""
        cols = self._columns.get(embodiment)
        if cols is None:
            raise EmbodimentMismatch(f"embodiment {embodiment!r} is not in the config (it has "
                                     f"{self.describe()})")
        proprio = np.asarray(proprio, np.float32)
        if proprio.shape != cols.shape:
            raise EmbodimentMismatch(f"proprio has {proprio.shape[0] if proprio.ndim else 0} values, the config's "
                                     f"{embodiment} layout has {len(cols)}")
        row = np.zeros(self.stored_dim, np.float32)
        row[cols] = proprio
        return row

    def policy_input(self, rows: np.ndarray, embodiments: Sequence[str] | np.ndarray) -> np.ndarray:
        """Common rows ``[B, stored_dim]`` of the given embodiments ``[B]`` -> policy inputs ``[B, input_dim]``."""
        rows = np.asarray(rows, np.float32)
        try:
            k = np.array([self._index[e] for e in embodiments], np.int64)
        except KeyError as exc:
            raise EmbodimentMismatch(f"embodiment {exc.args[0]!r} is not in the config (it has "
                                     f"{self.describe()})") from None
        if rows.ndim != 2 or rows.shape != (len(k), self.stored_dim):
            raise EmbodimentMismatch(f"rows: expected [{len(k)}, {self.stored_dim}], got {list(rows.shape)}")
        out = np.zeros((len(k), self.input_dim), np.float32)
        out[:, : self.stored_dim] = (rows - self._offset[k]) * self._inv_scale[k]
        out[np.arange(len(k)), self.stored_dim + k] = 1.0
        return out

    def observation(self, embodiment: str, proprio: np.ndarray) -> np.ndarray:
        """One robot's raw proprio -> the policy input ``[input_dim]``."""
        return self.policy_input(self.stored(embodiment, proprio)[None], [embodiment])[0]

