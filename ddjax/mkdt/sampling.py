"""Host-side random choices of a trajectory-matching run, in the reference's order, resumable.

One numpy ``Generator`` drives everything; its state and the samplers' positions go into the run
checkpoint, so a resumed run draws exactly what an uninterrupted one would have drawn.
``ExpertCycle`` visits every expert once per pass in a fresh random order; ``SyntheticBatches``
cuts permutations of the synthetic set into chunks taken from the end (the smaller remainder
first), starting a new permutation only when they run out. See docs/mkdt.md#trajectory-matching.
"""

from __future__ import annotations

import numpy as np


class ExpertCycle:
    """Each expert once per pass, passes in fresh random orders."""

    def __init__(self, experts: list[int], order: list[int] | None = None, position: int = 0):
        self.experts = list(experts)
        self.order = list(order) if order is not None else []
        self.position = position if order is not None else 0

    def next(self, rng: np.random.Generator) -> int:
        if self.position >= len(self.order):
            self.order = [int(e) for e in rng.permutation(self.experts)]
            self.position = 0
        expert = self.order[self.position]
        self.position += 1
        return expert

    def state(self) -> dict:
        return {"order": self.order, "position": self.position}


class SyntheticBatches:
    """Minibatch indices of the synthetic set, padded to ``batch_syn`` with a 0/1 mask."""

    def __init__(self, num_syn: int, batch_syn: int, chunks: list[list[int]] | None = None):
        self.num_syn = num_syn
        self.batch_syn = min(batch_syn, num_syn)
        self.chunks = [list(c) for c in chunks] if chunks else []

    def _next_chunk(self, rng: np.random.Generator) -> list[int]:
        if not self.chunks:
            perm = rng.permutation(self.num_syn)
            self.chunks = [perm[i:i + self.batch_syn].tolist() for i in range(0, self.num_syn, self.batch_syn)]
        return self.chunks.pop()

    def next_steps(self, steps: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``(idx [steps, batch_syn] int32, mask [steps, batch_syn] float32)`` for one unroll."""
        idx = np.zeros((steps, self.batch_syn), np.int32)
        mask = np.zeros((steps, self.batch_syn), np.float32)
        for s in range(steps):
            chunk = self._next_chunk(rng)
            idx[s, :len(chunk)] = chunk
            mask[s, :len(chunk)] = 1.0
        return idx, mask

    def state(self) -> dict:
        return {"chunks": self.chunks}
