"""Helpers of the baseline tests: tiny model configs and run configs on a store."""

from __future__ import annotations

import torch

from mobscale.config import load_dict

TINY_CSDI = {"kind": "csdi", "width": 16, "blocks": 2, "heads": 2, "context_dim": 8, "tpe_dim": 16, "spe_dim": 8, "step_dim": 32, "ff_dim": 32}
TINY_DIT = {"kind": "dit", "width": 32, "blocks": 2, "heads": 2, "context_dim": 8, "tpe_dim": 16, "patch_t": 2, "patch_s": 2, "mlp_ratio": 2}
#: window facts of the tiny tensors (8 h x 8x8 px, the synthetic store's context vocabularies)
INFO = {"patch": 8, "hours": 8, "n_aoi": 8, "n_house_road": 7, "n_poi": 21}


def run_cfg(store, model: dict, split_by: str = "time", patch: int = 8, hours: int = 24, **extra):
    """A RunConfig on ``store`` (split_by=time holds out the last of the 4 days)."""
    return load_dict({
        "seed": 3,
        "data": {"store": str(store), "windows": {"patch": patch, "hours": hours, "split_by": split_by, "test_fraction": 0.25}},
        "model": model,
        "train": {"steps": 4, "batch_size": 2, "log_every": 2, "checkpoint_every": 4, "warmup_steps": 1},
        "sample": {"batch_size": 4, "overlap": 2},
        **extra,
    })


def tensor_batch(B: int = 2, L: int = 8, P: int = 8, seed: int = 0) -> dict:
    """A collated-window-like batch of random context (no store): context, units, hour, origin."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(P), torch.arange(P), indexing="ij")
    units = torch.stack([(yy >= P // 2).long(), (yy >= P // 2).long() * 2 + (xx >= P // 2).long(), (yy // 2) * (P // 2) + xx // 2, yy * P + xx])
    return {
        "context": {
            "aoi": torch.randint(0, 8, (B, P, P), generator=g),
            "house_road": torch.randint(0, 7, (B, P, P), generator=g),
            "poi": torch.poisson(torch.full((B, 21, P, P), 0.5), generator=g),
            "population": torch.rand(B, L, P, P, generator=g) * 50,
        },
        "units": units.expand(B, -1, -1, -1).clone(),
        "hour": (torch.arange(L) + 24 * torch.arange(B)[:, None]) % 168,
        "origin": torch.zeros(B, 3, dtype=torch.long),
    }
