"""Latent walks: per-frame starting noise and text embeddings that change a little each frame.

Each walk is a plan: ``frame(k)`` gives frame k's (noise, conditional embedding). Frames
depend only on k and the job's parameters, never on how they are batched, so a batch of
frames equals the same frames made one at a time, and a walk resumes at any frame.
"""

from __future__ import annotations

import math

import torch

from dream_addon.protocol import EMBEDDING_WALKS

from .core import Components, GenerationRequest, encode_prompt, stream_seed


def slerp(a: torch.Tensor, b: torch.Tensor, t: float, eps: float = 1e-7) -> torch.Tensor:
    """Spherical interpolation (Shoemake, "Animating Rotation with Quaternion Curves", 1985);
    keeps the norm of Gaussian noise, where a plain lerp shrinks it midway."""
    a64, b64 = a.double().flatten(), b.double().flatten()
    cos = torch.dot(a64, b64) / (a64.norm() * b64.norm())
    omega = torch.arccos(cos.clamp(-1, 1))
    if omega.abs() < eps:  # nearly parallel: lerp is exact enough
        return ((1 - t) * a.double() + t * b.double()).to(a.dtype)
    out = (torch.sin((1 - t) * omega) * a.double() + torch.sin(t * omega) * b.double()) / torch.sin(omega)
    return out.to(a.dtype)


def lerp(a, b, t):
    return a + (b - a) * t


def noise_for_seed(seed: int, shape) -> torch.Tensor:
    """Unit-variance starting noise of a seed, drawn on the CPU."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)


def segment(k: int, frames: int, points: int):
    """Which pair of key points frame k lies between, and how far: (index, t)."""
    if frames == 1:
        return 0, 0.0
    position = k / (frames - 1) * (points - 1)
    index = min(int(position), points - 2)
    return index, position - index


class WalkPlan:
    """Frame k -> (starting noise (1, C, h, w), conditional embedding (1, tokens, dim)), from the
    request's seed, prompt, size and walk settings (``req.walk``)."""

    def __init__(self, c: Components, req: GenerationRequest):
        f = c.vae_scale_factor
        walk = req.walk
        self.shape = (1, c.vae.config.latent_channels, req.height // f, req.width // f)
        self.kind = walk.walk
        self.frames = walk.frames
        self.period = walk.period or walk.frames
        self.interpolate = slerp if walk.interpolation == "slerp" else lerp
        self.step_size = walk.step_size
        self.noise = noise_for_seed(req.seed, self.shape)
        self.moves_embedding = self.kind in EMBEDDING_WALKS
        texts = walk.walk_prompts or [req.prompt]
        self.embeddings = [encode_prompt(c, t).float().cpu() for t in texts] if self.moves_embedding else []
        self.seeds_noise = [noise_for_seed(s, self.shape) for s in walk.walk_seeds]
        if self.kind == "circular":  # y in cos θ·x + sin θ·y, from a noise stream of its own
            self.second = noise_for_seed(stream_seed(req.seed, "circular"), self.shape)
        if self.kind in ("random", "direction"):
            scale = self.embeddings[0].std()
            gen = torch.Generator().manual_seed(walk.walk_seed)
            self.directions = torch.randn((self.frames, *self.embeddings[0].shape[1:]), generator=gen) * scale

    def frame(self, k: int):
        """(noise, embedding) of frame k; embedding is None when the prompts stay as requested."""
        noise = self.noise
        embedding = self.embeddings[0] if self.moves_embedding else None
        if self.kind == "prompts":
            index, t = segment(k, self.frames, len(self.embeddings))
            embedding = self.interpolate(self.embeddings[index], self.embeddings[index + 1], t)
        elif self.kind == "seeds":
            index, t = segment(k, self.frames, len(self.seeds_noise))
            noise = slerp(self.seeds_noise[index], self.seeds_noise[index + 1], t)
        elif self.kind == "circular":
            theta = 2 * math.pi * k / self.period
            noise = math.cos(theta) * self.noise + math.sin(theta) * self.second
        elif self.kind == "random":  # e_k = e_0 + step · Σ_{j ≤ k} d_j
            embedding = embedding + self.step_size * self.directions[1:k + 1].sum(dim=0, keepdim=True)
        elif self.kind == "direction":  # e_k = e_0 + k · step · d (keras-cv's fixed-direction walk)
            embedding = embedding + (k * self.step_size) * self.directions[:1]
        return noise, embedding

    def batch(self, ks):
        pairs = [self.frame(k) for k in ks]
        noise = torch.cat([n for n, _ in pairs])
        return noise, torch.cat([e for _, e in pairs]) if self.moves_embedding else None
