"""VQ-VAE over wavelet coefficient sets (MSTDiff Sec. III-A.2, eq. 9).

One small 1-D convolutional VQ-VAE per coefficient set (cA3, cD3, cD2, cD1: "applied to each coefficient set
separately"), codebook 128 x 32, commitment 0.25. Latents keep the band's length (stride 1), so code p of
a band describes position p of that band: the denoiser can gate code p with coefficient p, and both stay
aligned with the band's time windows.

Loss (eq. 9): ``||w - w_hat||^2 + ||sg[z_e] - z_q||^2 + beta ||z_e - sg[z_q]||^2`` with the straight-through
estimator. The codebook is initialised from encoder outputs of the first batch (random codes from a
random init leave most of them dead).

It is pretrained once (:func:`pretrain_vqvae`) and then frozen inside the denoiser (``requires_grad``
False, eval mode, not in the optimizer). ``model.freeze_vqvae=false`` reproduces the public code, which
lets the diffusion loss fine-tune it (gradients reach the encoder through the straight-through path).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from mobscale.log import get_logger

log = get_logger(__name__)


class VQVAE1d(nn.Module):
    """x: (B, L) float -> codes (B, L) long, z_q (B, L, code_dim), x_hat (B, L)."""

    def __init__(self, *, hidden: int = 32, code_dim: int = 32, codebook_size: int = 128, commitment: float = 0.25):
        super().__init__()
        self.commitment = commitment
        self.encoder = nn.Sequential(
            nn.Conv1d(1, hidden, 3, padding=1), nn.GELU(),
            nn.Conv1d(hidden, hidden, 3, padding=1), nn.GELU(),
            nn.Conv1d(hidden, code_dim, 1),
        )
        self.codebook = nn.Embedding(codebook_size, code_dim)
        nn.init.uniform_(self.codebook.weight, -1.0 / codebook_size, 1.0 / codebook_size)
        self.decoder = nn.Sequential(
            nn.Conv1d(code_dim, hidden, 3, padding=1), nn.GELU(),
            nn.Conv1d(hidden, hidden, 3, padding=1), nn.GELU(),
            nn.Conv1d(hidden, 1, 1),
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L) -> z_e (B, L, D)."""
        return self.encoder(x.unsqueeze(1)).transpose(1, 2)

    def quantize(self, z_e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest codebook entry: z_e (B, L, D) -> (z_q (B, L, D), codes (B, L))."""
        flat = z_e.reshape(-1, z_e.shape[-1])
        e = self.codebook.weight
        d2 = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ e.T + e.pow(2).sum(1)[None]
        codes = d2.argmin(1).view(z_e.shape[:-1])
        return self.codebook(codes), codes

    def decode(self, z_q: torch.Tensor) -> torch.Tensor:
        """(B, L, D) -> (B, L)."""
        return self.decoder(z_q.transpose(1, 2)).squeeze(1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (x_hat, z_e, z_q, codes); x_hat uses the straight-through z_q."""
        z_e = self.encode(x)
        z_q, codes = self.quantize(z_e)
        z_st = z_e + (z_q - z_e).detach()
        return self.decode(z_st), z_e, z_q, codes

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Eq. 9 on a batch x: (B, L)."""
        x_hat, z_e, z_q, codes = self(x)
        rec = F.mse_loss(x_hat, x)
        vq = F.mse_loss(z_q, z_e.detach())
        com = F.mse_loss(z_e, z_q.detach())
        used = torch.unique(codes).numel()
        return rec + vq + self.commitment * com, {"rec": float(rec.detach()), "vq": float(vq.detach()), "com": float(com.detach()), "codes_used": float(used)}

    @torch.no_grad()
    def init_codebook(self, x: torch.Tensor, generator: torch.Generator | None = None, only_unused: bool = False) -> int:
        """Codebook <- encoder outputs at random positions of x: (B, L). With ``only_unused``, only the codes
        no position of x maps to are replaced (dead-code restart). Returns how many codes were set."""
        z_e = self.encode(x)
        flat = z_e.reshape(-1, self.codebook.weight.shape[1])
        K = self.codebook.weight.shape[0]
        if only_unused:
            used = torch.zeros(K, dtype=torch.bool)
            used[self.quantize(z_e)[1].unique()] = True
            dead = torch.nonzero(~used).flatten()
        else:
            dead = torch.arange(K)
        if dead.numel():
            idx = torch.randint(0, flat.shape[0], (dead.numel(),), generator=generator)
            noise = 1e-3 * torch.randn((dead.numel(), flat.shape[1]), generator=generator)
            self.codebook.weight[dead] = flat[idx] + noise
        return int(dead.numel())


class WaveletVQVAE(nn.Module):
    """One :class:`VQVAE1d` per band of a :class:`mobscale.data.wavelets.BandLayout` (band lengths given)."""

    def __init__(self, band_lengths: tuple[int, ...], *, hidden: int = 32, code_dim: int = 32, codebook_size: int = 128, commitment: float = 0.25):
        super().__init__()
        self.band_lengths = tuple(int(b) for b in band_lengths)
        self.code_dim = code_dim
        self.bands = nn.ModuleList(
            VQVAE1d(hidden=hidden, code_dim=code_dim, codebook_size=codebook_size, commitment=commitment) for _ in self.band_lengths
        )

    def split(self, w: torch.Tensor) -> list[torch.Tensor]:
        """(B, T) band layout -> per band (B, L_b)."""
        return list(torch.split(w, list(self.band_lengths), dim=-1))

    def quantized(self, w: torch.Tensor) -> list[torch.Tensor]:
        """Per band the straight-through quantised latent (B, L_b, D) of w: (B, T)."""
        out = []
        for vq, x in zip(self.bands, self.split(w)):
            z_e = vq.encode(x)
            z_q, _ = vq.quantize(z_e)
            out.append(z_e + (z_q - z_e).detach())
        return out

    def codes(self, w: torch.Tensor) -> list[torch.Tensor]:
        """Per band the code indices (B, L_b)."""
        return [vq.quantize(vq.encode(x))[1] for vq, x in zip(self.bands, self.split(w))]

    def reconstruct(self, w: torch.Tensor) -> torch.Tensor:
        """(B, T) -> (B, T) decoded from the quantised latents."""
        return torch.cat([vq(x)[0] for vq, x in zip(self.bands, self.split(w))], dim=-1)

    def loss(self, w: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Sum over bands of eq. 9; logs averaged over bands."""
        total = torch.zeros((), device=w.device)
        logs: dict[str, float] = {}
        for vq, x in zip(self.bands, self.split(w)):
            l, lg = vq.loss(x)
            total = total + l
            for k, v in lg.items():
                logs[k] = logs.get(k, 0.0) + v / len(self.bands)
        logs["loss"] = float(total.detach())
        return total, logs


def pretrain_vqvae(
    vq: WaveletVQVAE,
    w: torch.Tensor,
    *,
    steps: int,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    restart_every: int = 25,
    progress: bool = True,
) -> list[float]:
    """Pretrain on training coefficients w: (U, T) float32 (band layout) with Adam; returns the loss per step.

    Every ``restart_every`` steps during the first 80 % of training, codes that no position of a random
    batch maps to are moved onto random encoder outputs (dead-code restart): the encoder's output scale
    drifts early in training and leaves most of a plain codebook unused. Leaves ``vq`` in eval mode.
    Deterministic for a fixed seed on CPU.
    """
    g = torch.Generator().manual_seed(seed)
    U = w.shape[0]
    if U == 0:
        raise ValueError("pretrain_vqvae: no training sequences")
    vq.train()
    first = w[torch.randperm(U, generator=g)[: max(batch_size, 1)]]
    for band, x in zip(vq.bands, vq.split(first)):
        band.init_codebook(x, g)
    opt = torch.optim.Adam(vq.parameters(), lr=lr)
    losses: list[float] = []
    bar = tqdm(range(steps), desc="VQ-VAE pretraining", disable=not progress, leave=False, mininterval=2.0)
    for step in bar:
        if step and step % restart_every == 0 and step < 0.8 * steps:
            probe = w[torch.randint(0, U, (min(4 * batch_size, U),), generator=g)]
            for band, x in zip(vq.bands, vq.split(probe)):
                band.init_codebook(x, g, only_unused=True)
        idx = torch.randint(0, U, (min(batch_size, U),), generator=g)
        loss, logs = vq.loss(w[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(logs["loss"])
        bar.set_postfix(rec=f"{logs['rec']:.4f}", codes=f"{logs['codes_used']:.0f}")
    vq.eval()
    if losses:
        _, logs = vq.loss(w[torch.randint(0, U, (min(4 * batch_size, U),), generator=g)])
        log.info("VQ-VAE pretrained: %d steps, loss %.4f -> %.4f (rec %.4f, codes used per band %.0f)", steps, losses[0], losses[-1], logs["rec"], logs["codes_used"])
    return losses
