"""MSTDiff: joint per-user traffic (wavelets + VQ-VAE, Gaussian diffusion) and trajectory (discrete diffusion).

Switches that reproduce the public code's choices (for ablations; the defaults are the correct method):

* ``diffusion.posterior="reference"``: the public "posterior" ``Qbar_{t-1}[l0] Q_t`` (ignores ``l_t``);
* ``diffusion.trajectory_input="probs"``: the network sees the probability row ``Qbar_t[l0]`` instead of a
  sampled ``l_t`` (leaks ``l0``); at sampling time it sees the running reverse probabilities ``p_L``;
* ``model.freeze_vqvae=False``: the pretrained VQ-VAE is fine-tuned by the diffusion loss;
* ``model.lambda_ce=0``: no cross-entropy term;
* ``model.output_order="band"``: trajectory outputs concatenated band by band (position p is not time step p);
* ``diffusion.rate_scale=1, diffusion.teleport=0``: the raw 0.01 -> 0.1 rate schedule, which does not reach
  uniform on a real neighbour graph;
* ``diffusion.trajectory_last_step="sample"``: Algorithm 2's sampled final step (ours takes the mode).

``configs/model/mstdiff-reference.yaml`` sets all of them.

Options of ours, not in the paper, off by default (measured in results/README.md, "What brings the transits back"):
``model.copy_gate``, ``model.step_layers``, ``diffusion.trajectory_likelihood`` (D3PM's parameterisation of
p(l0 | l_t)) and ``diffusion.trajectory_temperature`` (sampling only). ``configs/mstdiff-3k.yaml`` sets the ones that
help at 3000 training steps. ``model.coord_features`` (stores without KG triples only) is on by default: multiscale
sin/cos coordinate features instead of one linear scale (results/README.md, "MSTDiff on GeoLife").

Ablations of the paper: ``model.use_trajectory=False`` (traffic only, "w/o Traj"), ``model.use_traffic=False``
(trajectory only).

Table I's single-resolution traffic baseline is its own model kind, ``csdi_users``
(:class:`CSDIUsersModelConfig`, diffusion ``kind: gaussian``): plain DDPM on the normalised half-hourly series
(no wavelets, no VQ-VAE, no trajectories), a CSDI-style denoiser, the same ``model.users`` block (so the same
windows, user split and traffic normalisation as MSTDiff). See ``configs/csdi-users-demo.yaml``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from mobscale.config.base import Section


class MSTDiffDiffusionConfig(Section):
    """Both noise processes of MSTDiff (same step count, separate schedules).

    Trajectory corruption: the rate matrix R of the KG neighbour graph (eqs. 10-11) plus a uniform
    ``teleport`` rate, ``R + teleport (J/N - I)``; step t moves with ``Q_t = expm(alpha_t R)``. The rates
    ``alpha_t`` are geometric from ``rate_start`` to ``rate_end`` times ``rate_scale``. A graph diffusion alone
    reaches uniform only if the graph is connected, and then only after ~1/spectral-gap time units (huge for
    a kNN geometric graph of thousands of BS); the teleport term makes ``Qbar_S`` within TV ``exp(-teleport *
    sum alpha)`` of uniform for ANY graph, disconnected included. ``rate_scale=None`` picks the smallest scale
    that meets ``uniform_tol``.
    """

    kind: Literal["mstdiff"] = "mstdiff"
    steps: int = Field(50, ge=2)
    beta_schedule: Literal["linear", "quadratic", "cosine"] = Field("linear", description="traffic (Gaussian) beta schedule")
    traffic_clip_x0: Literal["none", "max"] = Field(
        "max",
        description="'max': every reverse step's clean estimate, taken back to the time domain, is capped at the largest "
        "normalised training volume before the step is taken from it (DDPM's clip of x0 to the data range, upper side; "
        "the lower side is the zero mass, see model.users.zero_gap); 'none': the plain ancestral step",
    )
    beta_start: float = Field(1e-4, gt=0, lt=1)
    beta_end: float = Field(0.2, gt=0, lt=1)
    rate_start: float = Field(0.01, gt=0, description="trajectory transition rate alpha_1 (geometric schedule)")
    rate_end: float = Field(0.1, gt=0, description="trajectory transition rate alpha_S")
    rate_scale: float | None = Field(
        None, gt=0, description="multiplies the geometric rates; None = auto (smallest scale with max TV(Qbar_S, uniform) <= uniform_tol); 1 = public code"
    )
    teleport: float = Field(0.5, ge=0, description="uniform jump rate added to R (0 = pure KG graph, as in the paper)")
    uniform_tol: float = Field(0.01, gt=0, lt=1, description="target / warning threshold of max TV distance of Qbar_S rows from uniform")
    posterior: Literal["exact", "reference"] = Field("exact", description="'reference' reproduces the public code's wrong posterior (ablation)")
    trajectory_last_step: Literal["mode", "sample"] = Field(
        "mode", description="final reverse step of the trajectory: its mode (noise-free, like DDPM's last step) or a sample (Algorithm 2)"
    )
    trajectory_input: Literal["sample", "probs"] = Field(
        "sample", description="'probs' feeds the network Qbar_t[l0] (public code; leaks l0) instead of a sampled l_t"
    )
    trajectory_temperature: float = Field(
        1.0, gt=0, description="sampling only: p(l0 | l_t) = softmax(logits / temperature) in each reverse step (1 = the "
        "model's distribution; < 1 sharpens it: fewer positions drawn away from the network's best guess)",
    )
    trajectory_likelihood: bool = Field(
        False, description="p(l0 | l_t) = network output times q(l_t | l0) (D3PM's parameterisation): the token each "
        "position holds enters with the exact weight of step t; false = the network's output alone (the paper)",
    )

    @model_validator(mode="after")
    def _check(self):
        if self.rate_end < self.rate_start:
            raise ValueError("diffusion.rate_end must be >= diffusion.rate_start")
        return self


class MSTDiffUsersConfig(Section):
    """How the users group of a city store becomes training samples."""

    seq_len: int = Field(336, ge=8, description="time steps per sample (336 half-hours = 1 week); divisible by 2**wavelet_level")
    test_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="fraction of users held out (split by user)")
    split_seed: int = Field(1234, description="seed of the user split (independent of the run seed)")
    max_users: int | None = Field(None, ge=1, description="use at most this many users (first ones after shuffling)")
    traffic_transform: Literal["log1p", "user_max"] = Field(
        "log1p",
        description="log1p: z = (log1p(m) - mu) / sigma with mu, sigma of the training users (keeps volumes, invertible); "
        "user_max: m / max_u(m) mapped to [-1, 1] (paper); generated users then draw a max from the training maxima",
    )
    zero_gap: float = Field(
        1.0, ge=0.0,
        description="log1p only: encode zero volumes at log1p = -zero_gap instead of 0, apart from the smallest positive "
        "volumes, so the chain's residual blur of the zero mass inverts to zero (0 = plain log1p)",
    )
    locations: Literal["visited", "all"] = Field(
        "visited", description="trajectory state space: BS visited by training users, or every BS of the store"
    )


class MSTDiffModelConfig(Section):
    """The co-denoiser (multi-scale Transformer), its pretrained wavelet VQ-VAE, the KG neighbour graph, the loss
    weights of eq. 13 and the single-modality / public-code ablation switches (see the module docstring)."""

    kind: Literal["mstdiff"] = "mstdiff"
    width: int = Field(64, ge=8)
    heads: int = Field(4, ge=1)
    layers_per_scale: int = Field(1, ge=1)
    wavelet: str = "db1"
    wavelet_level: int = Field(3, ge=1)
    codebook_size: int = Field(128, ge=2)
    code_dim: int = Field(32, ge=1)
    commitment: float = Field(0.25, ge=0)
    vq_hidden: int = Field(32, ge=4, description="channels of the VQ-VAE conv encoder/decoder")
    vq_pretrain_steps: int = Field(500, ge=0)
    vq_lr: float = Field(2e-3, gt=0)
    vq_batch_size: int = Field(64, ge=1)
    kg_neighbours: int = Field(5, ge=1, description="top-K nearest KG-embedding neighbours (k in B=(A+A^T)/2K)")
    kg_max_distance_km: float | None = Field(3.0, description="distance threshold for neighbours; None = no threshold")
    coord_features: Literal["scaled", "multiscale"] = Field(
        "multiscale", description="stores without KG triples (GeoLife): the fixed per-location features are the BS "
        "coordinates, 'scaled' = centred and divided by their std (one scale: over a country-wide span the places of "
        "one city look alike), 'multiscale' = also sin/cos of the coordinates at wavelengths 0.5 km to 512 km (nearby "
        "places are told apart and far ones still differ; on GeoLife at width 64: lower training loss and radius JSD on "
        "both user-day draws measured, higher duration JSD, the rest split; results/README.md 'MSTDiff on GeoLife'). "
        "The neighbour graph is "
        "geographic either way; stores with KG triples use their TuckER embeddings instead")
    kg_dim: int = Field(32, ge=2, description="TuckER embedding dimension")
    kg_relation_dim: int = Field(8, ge=1, description="TuckER relation dimension")
    kg_epochs: int = Field(50, ge=1)
    kg_lr: float = Field(1e-2, gt=0)
    lambda_mse: float = Field(1.0, ge=0)
    lambda_kl: float = Field(1.0, ge=0)
    lambda_ce: float = Field(1.0, ge=0, description="CE weight; 1.0 beat 0.1 on the demo city (800 steps: DailyLoc JSD 0.41 vs 0.54)")
    use_trajectory: bool = True
    copy_gate: bool = Field(
        False, description="trajectory head: add a learned per-position logit bonus for the location each position holds now "
        "(keeps one-slot stays the plain head smooths away, but at 1000 steps the network then copies noise instead of "
        "denoising: off by default; not in the paper)",
    )
    step_layers: int = Field(
        0, ge=0, description="self-attention blocks over the T single time steps before the trajectory head (the finest "
        "wavelet scale has T/2 tokens, so without them nothing attends at one-step resolution; 0 = the paper's network)",
    )
    use_traffic: bool = True
    freeze_vqvae: bool = True
    output_order: Literal["time", "band"] = Field(
        "time", description="trajectory logits per time step ('time') or bands concatenated (public code; 'band')"
    )
    users: MSTDiffUsersConfig = Field(default_factory=MSTDiffUsersConfig)

    @model_validator(mode="after")
    def _check(self):
        if not (self.use_traffic or self.use_trajectory):
            raise ValueError("model.use_traffic and model.use_trajectory cannot both be false")
        if self.width % self.heads:
            raise ValueError(f"model.width={self.width} must be divisible by model.heads={self.heads}")
        if self.users.seq_len % (2**self.wavelet_level):
            raise ValueError(f"model.users.seq_len={self.users.seq_len} must be divisible by 2**wavelet_level={2**self.wavelet_level}")
        return self


class CSDIUsersModelConfig(Section):
    """CSDI-style per-user traffic baseline (MSTDiff Table I): one series of ``users.seq_len`` steps per sample.

    CSDI's residual network with K = 1 feature: per block the step embedding is added, one transformer layer runs
    over time (the feature transformer has a single token per step and vanishes), then the gated activation
    with the side information and the residual / skip split. Defaults are CSDI's (64 channels, 4 blocks, 8 heads,
    feed-forward 64, 128-d step and time embeddings). Runs on diffusion ``kind: gaussian`` (CSDI: 50 steps,
    quadratic betas 1e-4 -> 0.5)."""

    kind: Literal["csdi_users"] = "csdi_users"
    width: int = Field(64, ge=8, description="channels of the residual stream (CSDI: 64)")
    blocks: int = Field(4, ge=1, description="residual blocks (CSDI: 4)")
    heads: int = Field(8, ge=1, description="attention heads of the time transformer (CSDI: 8)")
    ff_dim: int = Field(64, ge=8, description="feed-forward size of the time transformer layer (CSDI: 64)")
    step_dim: int = Field(128, ge=2, description="diffusion-step embedding size (CSDI: 128)")
    tpe_dim: int = Field(128, ge=2, description="sinusoidal embedding size of the step position in the window (CSDI: 128)")
    time_of_week: bool = Field(
        True,
        description="also give the side information the daily / weekly Fourier features of the time of week that "
        "MSTDiff's denoiser receives (same conditioning for both; false = CSDI's position embedding only)",
    )
    users: MSTDiffUsersConfig = Field(default_factory=MSTDiffUsersConfig)

    @model_validator(mode="after")
    def _check(self):
        if self.width % self.heads:
            raise ValueError(f"model.width={self.width} must be divisible by model.heads={self.heads}")
        for name in ("step_dim", "tpe_dim"):
            if getattr(self, name) % 2:
                raise ValueError(f"model.{name}={getattr(self, name)} must be even (sine and cosine halves)")
        return self
