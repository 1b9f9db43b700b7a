"""The MSTDiff multi-scale co-denoising Transformer (Sec. III-C.1).

Scales are the wavelet bands, coarse -> fine (cA3, cD3, cD2, cD1 for level 3; lengths 42, 42, 84, 168 for
T = 336). Band position p covers time steps ``[p r_b, (p+1) r_b)`` with ``r_b = T / L_b``. At every scale:

* traffic tokens (B, L_b, W): the noisy coefficient p of the band, embedded, gated with the (frozen,
  pretrained) VQ-VAE code of the same position: ``g * code + (1 - g) * raw``, ``g = sigmoid(W[raw, code])``;
* trajectory tokens (B, L_b, W): location embeddings of the T time steps (a learned table plus a projection
  of the TuckER KG embedding), averaged over each window of r_b steps (the trajectory aligned to the band's
  resolution), then an MLP;
* positional (time of week of the window centre: daily/weekly Fourier features + sinusoid of the position),
  type (modality x band) and diffusion-step embeddings are added;
* ``layers_per_scale`` blocks of self-attention per modality, cross-attention traffic <-> trajectory, MLPs;
* the output of scale b is upsampled (each fine position copies the coarse window that contains it) and
  added, through a linear map, to the inputs of scale b+1 (coarse-to-fine merging).

Outputs are in TIME ORDER: traffic eps per coefficient in band layout (what the inverse DWT consumes, band
b's position p is its time window p), and trajectory logits per time step 0..T-1 from the finest
per-step tokens plus every scale's output at the window holding that step (logits = dot products with the
location table: the output head is tied to the input embedding); optionally plus a learned per-position bonus for
the location the position holds now (``copy_gate``, off: not in the paper, see the comment at ``copy_head``), and
optionally after ``step_layers`` self-attention blocks over the T single steps (off: not in the paper). ``output_order="band"``
reproduces the public code, which concatenates the per-band trajectory outputs along the sequence (so
output position p is not time step p); ablation only.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from mobscale.model.vqvae import WaveletVQVAE


def sinusoidal(x: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """(...,) float -> (..., dim) transformer sinusoid."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=x.device, dtype=torch.float32) / half)
    ang = x.float()[..., None] * freqs
    out = torch.cat([torch.sin(ang), torch.cos(ang)], -1)
    return F.pad(out, (0, dim - 2 * half))


class CoBlock(nn.Module):
    """Self-attention per modality, cross-attention between them, MLP per modality (pre-norm residual)."""

    def __init__(self, width: int, heads: int, has_x: bool, has_y: bool):
        super().__init__()
        self.has_x, self.has_y = has_x, has_y
        cross = has_x and has_y

        def mods():
            return nn.ModuleDict(
                {
                    "ln1": nn.LayerNorm(width),
                    "sa": nn.MultiheadAttention(width, heads, batch_first=True),
                    "ln2": nn.LayerNorm(width),
                    "ln_kv": nn.LayerNorm(width),
                    "ca": nn.MultiheadAttention(width, heads, batch_first=True),
                    "ln3": nn.LayerNorm(width),
                    "mlp": nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)),
                }
                if cross
                else {
                    "ln1": nn.LayerNorm(width),
                    "sa": nn.MultiheadAttention(width, heads, batch_first=True),
                    "ln3": nn.LayerNorm(width),
                    "mlp": nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)),
                }
            )

        self.x = mods() if has_x else None
        self.y = mods() if has_y else None

    @staticmethod
    def _self(m, h):
        a = m["ln1"](h)
        return h + m["sa"](a, a, a, need_weights=False)[0]

    @staticmethod
    def _cross(m, h, other):
        kv = m["ln_kv"](other)
        return h + m["ca"](m["ln2"](h), kv, kv, need_weights=False)[0]

    def forward(self, x: torch.Tensor | None, y: torch.Tensor | None):
        if x is not None:
            x = self._self(self.x, x)
        if y is not None:
            y = self._self(self.y, y)
        if x is not None and y is not None:
            x, y = self._cross(self.x, x, y), self._cross(self.y, y, x)
        if x is not None:
            x = x + self.x["mlp"](self.x["ln3"](x))
        if y is not None:
            y = y + self.y["mlp"](self.y["ln3"](y))
        return x, y


class MSTDiffDenoiser(nn.Module):
    """f_theta(w_t, l_t, t) -> (eps_hat (B, T) band layout, logits (B, T, N) per time step).

    band_lengths: coarse -> fine, each a divisor of the next and of T = sum(band_lengths).
    loc_features: (N, F) fixed per-location features (TuckER embeddings) or None.
    """

    def __init__(
        self,
        *,
        band_lengths: tuple[int, ...],
        n_locations: int,
        width: int = 64,
        heads: int = 4,
        layers_per_scale: int = 1,
        use_traffic: bool = True,
        use_trajectory: bool = True,
        vqvae: WaveletVQVAE | None = None,
        freeze_vqvae: bool = True,
        loc_features: torch.Tensor | None = None,
        output_order: str = "time",
        steps_per_day: int = 48,
        copy_gate: bool = False,
        step_layers: int = 0,
    ):
        super().__init__()
        if output_order not in ("time", "band"):
            raise ValueError(f"output_order must be 'time' or 'band', got {output_order!r}")
        self.band_lengths = tuple(int(b) for b in band_lengths)
        self.T = sum(self.band_lengths)
        for a, b in zip(self.band_lengths, self.band_lengths[1:]):
            if b % a:
                raise ValueError(f"band lengths must nest coarse -> fine, got {self.band_lengths}")
        self.ratios = tuple(self.T // L for L in self.band_lengths)
        self.nb = len(self.band_lengths)
        self.use_traffic, self.use_trajectory = use_traffic, use_trajectory
        self.output_order = output_order
        self.steps_per_day = steps_per_day
        self.n_locations = n_locations
        self.freeze_vqvae = freeze_vqvae
        W = width

        self.step_mlp = nn.Sequential(nn.Linear(W, W), nn.SiLU(), nn.Linear(W, W))
        self.n_fourier = 5
        self.pos = nn.Linear(2 * self.n_fourier + 32, W)
        self.type_emb = nn.Embedding(2 * self.nb, W)

        if use_traffic:
            self.vqvae = vqvae
            if vqvae is not None and freeze_vqvae:
                vqvae.requires_grad_(False)
                vqvae.eval()
            self.raw_in = nn.Linear(1, W)
            if vqvae is not None:
                self.code_in = nn.Linear(vqvae.code_dim, W)
                self.gate = nn.Linear(2 * W, W)
            self.merge_x = nn.ModuleList(nn.Linear(W, W) for _ in range(self.nb - 1))
            self.out_x = nn.Sequential(nn.LayerNorm(W), nn.Linear(W, 1))
            nn.init.zeros_(self.out_x[1].weight)
            nn.init.zeros_(self.out_x[1].bias)
        if use_trajectory:
            self.loc_emb = nn.Embedding(n_locations, W)
            if loc_features is not None:
                self.register_buffer("loc_features", torch.as_tensor(loc_features, dtype=torch.float32))
                self.loc_feat_in = nn.Linear(self.loc_features.shape[1], W)
            else:
                self.loc_features = None
            self.traj_in = nn.ModuleList(nn.Sequential(nn.Linear(W, W), nn.GELU(), nn.Linear(W, W)) for _ in range(self.nb))
            self.merge_y = nn.ModuleList(nn.Linear(W, W) for _ in range(self.nb - 1))
            if output_order == "time":
                self.fuse_y = nn.Linear(self.nb * W, W)
            # logits = h . table^T: the output head is tied to the location table, so "stay where l_t is" (most of
            # the reverse chain at small t) is a dot product the network gets for free
            self.out_y = nn.Sequential(nn.LayerNorm(W), nn.Linear(W, W), nn.GELU(), nn.Linear(W, W))
            self.out_bias = nn.Parameter(torch.zeros(n_locations))
            # copy gate (optional, not in the paper): a per-position logit bonus g(h) for the location l_t the position
            # holds now. Why it exists: without it the network reconstructs one-slot stays (transits, ~6% of positions,
            # half of all stays) 8% of the time even at the last step, where 94% of tokens are still clean, so the exact
            # posterior erases most transits (3.8 distinct places per user-week generated vs 10.7 real). Why it is off:
            # with it, at 1000 steps the network learns to copy instead of to denoise (accuracy on stays at step 10
            # 0.80 -> 0.52) and the chain keeps its starting noise (286 moves per user-week vs 44). See results/README.md.
            # Zero-initialised: g = 0 is the model without the gate.
            self.copy_head = nn.Linear(W, 1) if copy_gate and output_order == "time" else None
            if self.copy_head is not None:
                nn.init.zeros_(self.copy_head.weight)
                nn.init.zeros_(self.copy_head.bias)
            # per-step blocks (optional, not in the paper): self-attention over the T time steps after the scales are
            # fused. Why: the finest wavelet scale has T/2 tokens, so no attention ever sees a single time step; the only
            # per-step input to the head is the raw location embedding. A one-slot stay (a transit, A A X B B) and a
            # one-position corruption then look alike to the head. Measured: alone it does not bring the transits back;
            # with diffusion.rate_start=0.001 and 3000 steps it lowers the distance / radius JSDs (results/README.md).
            if step_layers and output_order != "time":
                raise ValueError("step_layers needs output_order='time'")
            self.step_blocks = nn.ModuleList(CoBlock(W, heads, False, True) for _ in range(step_layers))
        self.blocks = nn.ModuleList(
            nn.ModuleList(CoBlock(W, heads, use_traffic, use_trajectory) for _ in range(layers_per_scale)) for _ in range(self.nb)
        )

    # keep a frozen VQ-VAE in eval mode whatever the engine does with .train()
    def train(self, mode: bool = True):
        super().train(mode)
        if self.use_traffic and self.vqvae is not None and self.freeze_vqvae:
            self.vqvae.eval()
        return self

    def trainable_parameters(self):
        """Parameters the optimizer should see (the frozen VQ-VAE excluded)."""
        return [p for p in self.parameters() if p.requires_grad]

    # ------------------------------------------------------------------ embeddings
    def _positions(self, band: int | None, offset: torch.Tensor | None, B: int, device) -> torch.Tensor:
        """(B, L_b, W) positional embedding of the band's window centres (band None: every time step, (B, T, W))."""
        r, L = (1, self.T) if band is None else (self.ratios[band], self.band_lengths[band])
        rel = torch.arange(L, device=device, dtype=torch.float32) * r + (r - 1) / 2.0
        off = torch.zeros(B, device=device) if offset is None else offset.to(device, torch.float32)
        tau = off[:, None] + rel[None]  # absolute time-of-week steps
        spd = float(self.steps_per_day)
        periods = torch.tensor([7 * spd, spd, spd / 2, spd / 4, spd / 8], device=device)
        ang = 2 * math.pi * tau[..., None] / periods
        four = torch.cat([torch.sin(ang), torch.cos(ang)], -1)
        return self.pos(torch.cat([four, sinusoidal(rel, 32)[None].expand(B, -1, -1)], -1))

    def location_table(self) -> torch.Tensor:
        """(N, W) embedding of every location."""
        tab = self.loc_emb.weight
        if self.loc_features is not None:
            tab = tab + self.loc_feat_in(self.loc_features)
        return tab

    def _traj_tokens(self, traj: torch.Tensor) -> torch.Tensor:
        """(B, T) long indices or (B, T, N) probabilities -> (B, T, W)."""
        tab = self.location_table()
        if traj.dtype in (torch.long, torch.int32, torch.int64):
            return tab[traj.long()]
        return traj.to(tab.dtype) @ tab

    # ------------------------------------------------------------------ forward
    def forward(self, w_t: torch.Tensor | None, traj: torch.Tensor | None, t: torch.Tensor, offset: torch.Tensor | None = None):
        """w_t: (B, T) float32 noisy coefficients (band layout) or None; traj: (B, T) long l_t or (B, T, N)
        probabilities or None; t: (B,) long; offset: (B,) long time-of-week step of the window start.
        Returns (eps_hat (B, T) | None, logits (B, T, N) | None)."""
        if self.use_traffic and w_t is None:
            raise ValueError("MSTDiffDenoiser: traffic branch enabled but w_t is None")
        if self.use_trajectory and traj is None:
            raise ValueError("MSTDiffDenoiser: trajectory branch enabled but traj is None")
        ref = w_t if self.use_traffic else traj
        B, device = ref.shape[0], ref.device
        step = self.step_mlp(sinusoidal(t.to(device), self.type_emb.embedding_dim))[:, None]  # (B, 1, W)

        xs_in = ys_in = None
        if self.use_traffic:
            bands = torch.split(w_t, list(self.band_lengths), dim=-1)
            codes = self.vqvae.quantized(w_t) if self.vqvae is not None else [None] * self.nb
            xs_in = []
            for b, (x, z) in enumerate(zip(bands, codes)):
                raw = self.raw_in(x.unsqueeze(-1))
                if z is not None:
                    code = self.code_in(z)
                    g = torch.sigmoid(self.gate(torch.cat([raw, code], -1)))
                    raw = g * code + (1 - g) * raw
                xs_in.append(raw)
        fine = None
        if self.use_trajectory:
            fine = self._traj_tokens(traj)  # (B, T, W)
            ys_in = []
            for b, r in enumerate(self.ratios):
                pooled = F.avg_pool1d(fine.transpose(1, 2), r, r).transpose(1, 2) if r > 1 else fine
                ys_in.append(self.traj_in[b](pooled))

        xs_out, ys_out = [], []
        x_prev = y_prev = None
        for b in range(self.nb):
            pos = self._positions(b, offset, B, device)
            x = y = None
            if self.use_traffic:
                x = xs_in[b] + pos + step + self.type_emb.weight[b]
                if x_prev is not None:
                    x = x + self.merge_x[b - 1](self._up(x_prev, self.band_lengths[b]))
            if self.use_trajectory:
                y = ys_in[b] + pos + step + self.type_emb.weight[self.nb + b]
                if y_prev is not None:
                    y = y + self.merge_y[b - 1](self._up(y_prev, self.band_lengths[b]))
            for blk in self.blocks[b]:
                x, y = blk(x, y)
            x_prev, y_prev = x, y
            xs_out.append(x)
            ys_out.append(y)

        eps = logits = None
        if self.use_traffic:
            eps = self.out_x(torch.cat(xs_out, dim=1)).squeeze(-1)  # band layout, coefficient p of band b at its own slot
        if self.use_trajectory:
            if self.output_order == "time":
                per_t = torch.cat([self._up(y, self.T) for y in ys_out], -1)  # (B, T, nb*W): scale outputs at each step's window
                h = fine + self.fuse_y(per_t)
                if len(self.step_blocks):
                    h = h + self._positions(None, offset, B, device) + step
                    for blk in self.step_blocks:
                        _, h = blk(None, h)
            else:  # public code: bands concatenated along the sequence; position p is NOT time step p
                h = torch.cat(ys_out, dim=1)
            logits = self.out_y(h) @ self.location_table().T / math.sqrt(h.shape[-1]) + self.out_bias
            if self.copy_head is not None:
                gain = self.copy_head(h)  # (B, T, 1)
                if traj.dtype in (torch.long, torch.int32, torch.int64):
                    logits = logits.scatter_add(-1, traj.long()[..., None], gain.to(logits.dtype))
                else:  # probability rows (ablation input): the bonus spread as the row
                    logits = logits + gain * traj.to(logits.dtype)
        return eps, logits

    @staticmethod
    def _up(h: torch.Tensor, L: int) -> torch.Tensor:
        """(B, L0, W) -> (B, L, W): fine position q takes the coarse window q // (L / L0)."""
        r = L // h.shape[1]
        return h if r == 1 else h.repeat_interleave(r, dim=1)


def build(cfg, data_info: dict) -> MSTDiffDenoiser:
    """The denoiser of run config ``cfg`` (registry entry point; weights random, the VQ-VAE module untrained).

    data_info: "band_lengths" (coarse -> fine), "n_locations", "loc_feature_dim" (0 = none), "steps_per_day".
    """
    from mobscale.model.registry import require

    m = cfg.model
    band_lengths = tuple(int(b) for b in require(data_info, "band_lengths"))
    n_loc = int(require(data_info, "n_locations"))
    fdim = int(data_info.get("loc_feature_dim", 0) or 0)
    vq = None
    if m.use_traffic:
        vq = WaveletVQVAE(band_lengths, hidden=m.vq_hidden, code_dim=m.code_dim, codebook_size=m.codebook_size, commitment=m.commitment)
    feats = torch.zeros(n_loc, fdim) if (m.use_trajectory and fdim) else None
    return MSTDiffDenoiser(
        band_lengths=band_lengths, n_locations=max(n_loc, 1), width=m.width, heads=m.heads, layers_per_scale=m.layers_per_scale,
        use_traffic=m.use_traffic, use_trajectory=m.use_trajectory, vqvae=vq, freeze_vqvae=m.freeze_vqvae,
        loc_features=feats, output_order=m.output_order, steps_per_day=int(data_info.get("steps_per_day", 48)),
        copy_gate=m.copy_gate, step_layers=m.step_layers,
    )
