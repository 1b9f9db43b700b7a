"""DiT-style denoiser (Peebles & Xie 2023) on space-time patch tokens, for one resolution (50 m, 1 h).

A window x: (L, P, P) is cut into tokens of ``patch_t`` hours x ``patch_s`` x ``patch_s`` pixels
((L / patch_t) * (P / patch_s)^2 tokens), each linearly embedded. Every token gets a learned spatial and a
learned within-window temporal position embedding, the sinusoidal encoding of its first hour of week, and its
own context (ZoomDiff's context encoders at 50 m, averaged over the token's voxels, projected). The
conditioning vector c = step embedding + an MLP of the context pooled over the window drives adaLN-Zero in
every block (shift, scale and gate of attention and MLP regressed from c, the regression layer zero-initialised
so every block starts as the identity) and in the final layer (zero-initialised too: eps_theta = 0 at
initialisation). The refinement variant (``model.cond_level``) embeds the coarse level's density as a second
input channel of each token.

Model contract: the same as :mod:`mobscale.model.csdi` (``forward(x, t, cond) -> eps_theta``,
x: (B, L, P, P), t: (B,) int64).
"""

from __future__ import annotations

import torch
from torch import nn

from mobscale.errors import ConfigError
from mobscale.model.csdi import check_inputs
from mobscale.model.encoders import ContextEncoder, sinusoidal
from mobscale.model.registry import require
from mobscale.model.zoomdiff import Attention

#: frequency embedding size of the diffusion step (DiT's TimestepEmbedder default)
STEP_FREQ_DIM = 256


def _modulate(h: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return h * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class DiTBlock(nn.Module):
    """Pre-norm attention + MLP on tokens h: (B, N, W), adaLN-Zero modulated by c: (B, W)."""

    def __init__(self, width: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(width, heads, 0.0)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(approximate="tanh"), nn.Linear(mlp_ratio * width, width))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        s1, sc1, g1, s2, sc2, g2 = self.ada(c).chunk(6, dim=-1)
        h = h + g1.unsqueeze(1) * self.attn(_modulate(self.norm1(h), s1, sc1))
        return h + g2.unsqueeze(1) * self.mlp(_modulate(self.norm2(h), s2, sc2))


class DiTDenoiser(nn.Module):
    """DiT-style eps-network on (L, P, P) windows; see the module docstring."""

    def __init__(self, cfg, *, patch: int, hours: int, n_aoi: int, n_house_road: int, n_poi: int):
        """cfg: mobscale.config.baselines.DiTModelConfig; patch P and hours L must be multiples of patch_s / patch_t."""
        super().__init__()
        pt, ps = cfg.patch_t, cfg.patch_s
        if hours % pt or patch % ps:
            raise ConfigError(
                f"DiT tokens of {pt} h x {ps}x{ps} px do not tile the {hours} h x {patch}x{patch} px window "
                f"(model.patch_t must divide data.windows.hours, model.patch_s must divide data.windows.patch)"
            )
        W = cfg.width
        self.cfg, self.patch, self.hours = cfg, patch, hours
        self.pt, self.ps, self.Lt, self.Sp = pt, ps, hours // pt, patch // ps
        self.refines = cfg.cond_level is not None
        vox = pt * ps * ps
        self.x_embed = nn.Linear((2 if self.refines else 1) * vox, W)
        self.context = ContextEncoder(cfg.context_dim, n_aoi, n_house_road, n_poi)
        self.ctx_token = nn.Linear(cfg.context_dim, W)
        self.ctx_pool = nn.Sequential(nn.Linear(cfg.context_dim, W), nn.SiLU(), nn.Linear(W, W))
        self.tpe = nn.Linear(cfg.tpe_dim, W)
        self.pos_s = nn.Parameter(torch.randn(self.Sp * self.Sp, W) * 0.02)
        self.pos_t = nn.Parameter(torch.randn(self.Lt, W) * 0.02)
        self.step_mlp = nn.Sequential(nn.Linear(STEP_FREQ_DIM, W), nn.SiLU(), nn.Linear(W, W))
        self.blocks = nn.ModuleList(DiTBlock(W, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.blocks))
        self.norm_out = nn.LayerNorm(W, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(W, 2 * W))
        self.out = nn.Linear(W, vox)
        for lin in (self.ada_out[1], self.out):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    @property
    def n_tokens(self) -> int:
        return self.Lt * self.Sp * self.Sp

    def patchify(self, a: torch.Tensor) -> torch.Tensor:
        """(B, L, P, P, C) -> (B, N, patch_t * patch_s * patch_s, C), tokens ordered (time, row, column)."""
        B, C = a.shape[0], a.shape[-1]
        a = a.reshape(B, self.Lt, self.pt, self.Sp, self.ps, self.Sp, self.ps, C).permute(0, 1, 3, 5, 2, 4, 6, 7)
        return a.reshape(B, self.n_tokens, self.pt * self.ps * self.ps, C)

    def unpatchify(self, tok: torch.Tensor) -> torch.Tensor:
        """(B, N, patch_t * patch_s * patch_s) -> (B, L, P, P); inverse of :meth:`patchify` for one channel."""
        B = tok.shape[0]
        a = tok.reshape(B, self.Lt, self.Sp, self.Sp, self.pt, self.ps, self.ps).permute(0, 1, 4, 2, 5, 3, 6)
        return a.reshape(B, self.hours, self.patch, self.patch)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        coarse = check_inputs(self, x, cond)
        B = x.shape[0]
        inp = x.unsqueeze(-1) if coarse is None else torch.stack([x, coarse.to(x.dtype)], dim=-1)
        h = self.x_embed(self.patchify(inp).flatten(2))  # (B, N, W)
        ctx = self.patchify(self.context(cond["context"]).to(h.dtype)).mean(2)  # (B, N, context_dim)
        tpe = self.tpe(sinusoidal(cond["hour"][:, :: self.pt], self.cfg.tpe_dim).to(h.dtype))  # (B, Lt, W)
        pos = (self.pos_t.unsqueeze(1) + self.pos_s.unsqueeze(0)).reshape(1, self.n_tokens, -1)
        time_part = tpe.unsqueeze(2).expand(B, self.Lt, self.Sp * self.Sp, -1).reshape(B, self.n_tokens, -1)
        h = h + pos + time_part + self.ctx_token(ctx)
        c = self.step_mlp(sinusoidal(t, STEP_FREQ_DIM).to(h.dtype)) + self.ctx_pool(ctx.mean(1))
        for blk in self.blocks:
            h = blk(h, c)
        shift, scale = self.ada_out(c).chunk(2, dim=-1)
        return self.unpatchify(self.out(_modulate(self.norm_out(h), shift, scale)))


def build(cfg, data_info: dict) -> DiTDenoiser:
    """Build from a RunConfig (``cfg.model``: DiTModelConfig) and the data facts ("patch", "hours", "n_aoi",
    "n_house_road", "n_poi") of mobscale.model.registry.build_model."""
    return DiTDenoiser(
        cfg.model,
        patch=int(require(data_info, "patch")),
        hours=int(require(data_info, "hours")),
        n_aoi=int(require(data_info, "n_aoi")),
        n_house_road=int(require(data_info, "n_house_road")),
        n_poi=int(require(data_info, "n_poi")),
    )
