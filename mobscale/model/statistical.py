"""Statistical references: what a generator must beat to have learned anything.

Two generating references, fitted on the training split (no gradients; the statistics are tensors held as
buffers, so they travel in the ordinary export and load with ``weights_only=True``):

* ``historical``: per pixel and time slot (hour of week, or hour of day when training is shorter than a week),
  the mean of the normalised traffic z = Normaliser.forward(x) (log1p space by default) over the training
  period. Noise: ``residual`` resamples whole training days of residuals z - profile (one training day per
  calendar day of the window, shared by all its pixels: the residuals keep their hour-to-hour and
  pixel-to-pixel correlation); ``lognormal`` draws N(mean, std) per pixel and hour of day of those residuals;
  ``none`` returns the profile. Only defined on the places it was fitted on (windows must lie inside the
  fitted grid), hence RunConfig requires ``split_by=time``.
* ``context_profile``: per AoI type and slot, the traffic per person (ratio of sums over the training pixels
  and hours; per pixel when ``denominator=pixel``), times the pixel's population at that hour. Noise: N(mean,
  std) per AoI type and hour of day of z(x) - z(prediction). Needs only the context, so it generates for
  places with no history. AoI types absent from training use the all-type rate of the slot.

Refinement references (``model.refine``), splitting a coarse level's density over the 50 m pixels:
``uniform`` (every pixel the unit's density), ``mean_share`` (pixel weight = its share of the unit's total in
the training period x the unit's pixel count; whole-unit exact on the fitted city; units with no training
traffic split uniformly), ``population`` (population-weighted disaggregation, the public ZoomDiff code's
"ground truth"; within a window, each unit's part inside the patch keeps its pixel-count share and is spread
over its pixels by their population at that hour; no population: uniform) and ``zeros``. Within a window every
split except ``zeros`` sums, over each unit's pixels in the patch, to the coarse density times their number.

Windows (B, L, P, P) and every level are hourly densities in linear units (MB per pixel per hour), like the
targets of :class:`mobscale.data.windows.CityWindows`; the generator's K = 4 stages are
("bs", "cell", "grid100", "grid50") at "1h", coarser ones the unit means (``mobscale.data.ops.project``) of
the finest one inside the patch.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from mobscale.data import ops, pyramid
from mobscale.data.windows import LEVEL_ORDER
from mobscale.errors import ConfigError, InputDataError, StoreError
from mobscale.log import get_logger

log = get_logger(__name__)

#: the generator's stages: every spatial level at 1 h, coarse -> fine (rows of the windows' "units")
STAGES: list[tuple[str, str]] = [(lvl, "1h") for lvl in LEVEL_ORDER]
#: statistics buffers (all registered, empty when a configuration does not use them)
BUFFERS = ("grid", "slot_hours", "profile", "residuals", "resid_mean", "resid_std", "rate", "share_weight")
HOURS_PER_CHUNK = 24


def _slot_hours(slot: str, train_hours: int) -> int:
    if slot == "hour_of_week" or (slot == "auto" and train_hours >= 168):
        return 168
    return 24


class StatisticalModel(nn.Module):
    """The fitted statistics of one statistical reference, as buffers; see the module docstring.

    Buffers (float32 unless said): grid (2,) int64 = fitted (H, W) (zeros until fitted); slot_hours () int64 = 24
    or 168; historical: profile (S, H, W), residuals (D, 24, H, W) [noise=residual], resid_mean / resid_std
    (24, H, W) [noise=lognormal]; context_profile: rate (A, S), resid_mean / resid_std (A, 24)
    [noise=lognormal]; share_weight (3, H, W) [refine=mean_share] for bs, cell, grid100. Loading a state dict
    replaces the buffers whatever their shapes (a fitted model's shapes depend on its data).
    """

    def __init__(self, cfg):
        """cfg: HistoricalModelConfig or ContextProfileModelConfig (mobscale.config.baselines)."""
        super().__init__()
        if cfg.kind not in ("historical", "context_profile"):
            raise ConfigError(f"StatisticalModel: model.kind={cfg.kind} is not a statistical reference")
        self.cfg, self.kind = cfg, cfg.kind
        for name in BUFFERS:
            self.register_buffer(name, torch.zeros(0))
        self.grid = torch.zeros(2, dtype=torch.int64)
        self.slot_hours = torch.tensor(0, dtype=torch.int64)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        for name in BUFFERS:
            key = prefix + name
            if key in state_dict:
                self._buffers[name] = state_dict[key].detach().clone()
            elif strict:
                missing_keys.append(key)
        if strict:
            unexpected_keys.extend(k for k in state_dict if k.startswith(prefix) and k[len(prefix):] not in BUFFERS and "." not in k[len(prefix):])

    @property
    def fitted(self) -> bool:
        return bool(self.grid.numel() == 2 and int(self.grid[0]) > 0)

    def _require_fitted(self) -> None:
        if not self.fitted:
            raise ConfigError(f"the {self.kind} reference has no statistics: fit it first (StatisticalTask.fit) or load an export")

    # ------------------------------------------------------------------------------------------ fitting

    @torch.no_grad()
    def fit(self, arr, hours: tuple[int, int], patches: list[tuple[int, int]] | None, patch: int, normaliser, progress: bool = True) -> "StatisticalModel":
        """Compute the statistics from ``arr`` (mobscale.data.windows.CityArrays) over the training hours
        [hours[0], hours[1]) and the training patches (origins (y0, x0) of ``patch``-sized squares; None = every
        pixel). ``normaliser``: the task's Normaliser (fitted on the same training split). Returns self."""
        t_lo, t_hi = int(hours[0]), int(hours[1])
        if t_hi <= t_lo:
            raise ConfigError(f"{arr.path}: the training split has no hours ({t_lo}..{t_hi}); lower data.windows.test_fraction")
        H, W = arr.H, arr.W
        mask = np.ones((H, W), bool)
        if patches is not None:
            mask[:] = False
            for y0, x0 in patches:
                mask[y0 : y0 + patch, x0 : x0 + patch] = True
        S = _slot_hours(self.cfg.slot, t_hi - t_lo)
        reader = _Reader(arr, t_lo, t_hi, normaliser, progress)
        if self.kind == "historical":
            stats = _fit_historical(self.cfg, reader, S, H, W)
        else:
            stats = _fit_context_profile(self.cfg, reader, S, mask)
        if self.cfg.refine == "mean_share":
            stats["share_weight"] = _fit_share_weights(reader, arr)
        stats["grid"] = torch.tensor([H, W], dtype=torch.int64)
        stats["slot_hours"] = torch.tensor(S, dtype=torch.int64)
        for name, value in stats.items():
            self._buffers[name] = value
        log.info("fitted %s reference on %s: hours %d..%d, %s pixels, %d slots", self.kind, arr.path, t_lo, t_hi,
                 int(mask.sum()), S)
        return self

    # ------------------------------------------------------------------------------------------ generation

    def _origins(self, batch: dict, P: int) -> torch.Tensor:
        """(B, 3) window origins (t0, y0, x0), checked to lie inside the fitted grid."""
        origin = batch["origin"].long().cpu()
        H, W = int(self.grid[0]), int(self.grid[1])
        bad = ((origin[:, 1] + P > H) | (origin[:, 2] + P > W) | (origin[:, 1:] < 0).any(1)).nonzero()
        if len(bad):
            b = int(bad[0, 0])
            raise InputDataError(
                f"window {b} at (y0, x0) = ({int(origin[b, 1])}, {int(origin[b, 2])}) with patch {P} lies outside the "
                f"{H}x{W} grid the {self.kind} statistics were fitted on; per-place statistics only apply to that city"
            )
        return origin

    @torch.no_grad()
    def generate(self, batch: dict, generators: list[torch.Generator], normaliser) -> torch.Tensor:
        """The finest level (B, L, P, P) linear density for a collated ContextWindows batch ("context",
        "units", "hour" (B, L) hour of week, "origin" (B, 3)); window b's noise comes from generators[b] only."""
        self._require_fitted()
        dev = self.grid.device  # where the statistics live: the result is computed there (CPU or GPU)
        hour = batch["hour"].long().to(dev)
        B, L = hour.shape
        P = batch["units"].shape[-1]
        if len(generators) != B:
            raise ValueError(f"{len(generators)} generators for a batch of {B}")
        S = int(self.slot_hours)
        slot, hod = hour % S, hour % 24
        noise = self.cfg.noise
        if self.kind == "historical":
            origin = self._origins(batch, P)
            z = torch.empty(B, L, P, P, device=dev)
            for b in range(B):
                ys, xs = slice(int(origin[b, 1]), int(origin[b, 1]) + P), slice(int(origin[b, 2]), int(origin[b, 2]) + P)
                zb = self.profile[:, ys, xs][slot[b]]
                if noise == "residual":
                    day = (hod[b, 0] + torch.arange(L, device=dev)) // 24  # calendar day of each hour, relative to the window
                    pick = torch.randint(self.residuals.shape[0], (int(day[-1]) + 1,), generator=generators[b]).to(dev)
                    zb = zb + self.residuals[:, :, ys, xs][pick[day], hod[b]]
                elif noise == "lognormal":
                    eps = torch.randn((L, P, P), generator=generators[b]).to(dev)
                    zb = zb + self.resid_mean[:, ys, xs][hod[b]] + self.resid_std[:, ys, xs][hod[b]] * eps
                z[b] = zb
            return normaliser.inverse(z)
        ctx = batch["context"]
        aoi = ctx["aoi"].long().to(dev)
        A = self.rate.shape[0]
        if int(aoi.min()) < 0 or int(aoi.max()) >= A:
            raise InputDataError(f"context 'aoi' holds code {int(aoi.max()) if int(aoi.max()) >= A else int(aoi.min())}, outside [0, {A}) the context profile was fitted on")
        a = aoi.unsqueeze(1)  # (B, 1, P, P)
        per = self.rate[a, slot.view(B, L, 1, 1)]  # (B, L, P, P)
        pred = per * ctx["population"].float().to(dev).clamp(min=0) if self.cfg.denominator == "population" else per
        if noise == "none":
            return pred
        eps = torch.stack([torch.randn((L, P, P), generator=g) for g in generators]).to(dev)
        h = hod.view(B, L, 1, 1)
        z = normaliser.forward(pred) + self.resid_mean[a, h] + self.resid_std[a, h] * eps
        return normaliser.inverse(z)

    @torch.no_grad()
    def split(self, k: int, coarse: torch.Tensor, batch: dict) -> torch.Tensor:
        """Spread the density of level STAGES[k] (coarse: (B, L, P, P) linear, piecewise constant over the
        level's units) over the 50 m pixels with ``cfg.refine``; returns (B, L, P, P) linear."""
        if not 0 <= k < len(STAGES) - 1:
            raise ConfigError(f"refinement starts at a stage in [0, {len(STAGES) - 1}) = {[s for s, _ in STAGES[:-1]]}, got {k}")
        method = self.cfg.refine
        coarse = coarse.float()
        if method == "uniform":
            return coarse.clone()
        if method == "zeros":
            return torch.zeros_like(coarse)
        if method == "population":
            pop = batch["context"]["population"].float().to(coarse.device).clamp(min=0)
            mean_pop = ops.segment_mean(pop, batch["units"][:, k].to(coarse.device))
            # pixel share of its unit's part in the patch: pop / (mean pop over that part); uniform without people
            return torch.where(mean_pop > 0, coarse * pop / mean_pop.clamp(min=1e-30), coarse)
        if method == "mean_share":
            self._require_fitted()
            P = coarse.shape[-1]
            origin = self._origins(batch, P)
            w = torch.stack([self.share_weight[k, int(o[1]) : int(o[1]) + P, int(o[2]) : int(o[2]) + P] for o in origin])
            return coarse * w.unsqueeze(1).to(coarse.device)
        raise ConfigError(f"model.refine: unknown method '{method}'")


def stage_stack(fine: torch.Tensor, units: torch.Tensor, coarse: tuple[int, torch.Tensor] | None = None) -> torch.Tensor:
    """(B, K=4, L, P, P): every STAGES level of ``fine`` (B, L, P, P) as its unit means within the patch; with
    ``coarse=(k, c)`` the stages up to k come from the given coarse density c instead (stage k is c itself)."""
    out = []
    for j, (lvl, _) in enumerate(STAGES):
        src = fine if coarse is None or j > coarse[0] else coarse[1]
        if coarse is not None and j == coarse[0]:
            out.append(coarse[1].float())
        elif lvl == "grid50":
            out.append(src.float())
        else:
            out.append(ops.project(src.float(), units[:, j].to(src.device), 1))
    return torch.stack(out, 1)


# ------------------------------------------------------------------------------------------ fitting helpers


class _Reader:
    """Whole-city hourly frames of the training period, one day-sized chunk at a time."""

    def __init__(self, arr, t_lo: int, t_hi: int, normaliser, progress: bool):
        self.arr, self.t_lo, self.t_hi, self.norm, self.progress = arr, t_lo, t_hi, normaliser, progress
        self.side = max(arr.H, arr.W)  # CityArrays reads squares; a larger side clips to the grid

    def chunks(self, desc: str, population: bool = False):
        """Yield (t0, x (n, H, W) float64 linear, z (n, H, W) float64 normalised, population (n, H, W) or None)."""
        a = self.arr
        starts = range(self.t_lo, self.t_hi, HOURS_PER_CHUNK)
        for t0 in tqdm(starts, desc=desc, unit="day", disable=not self.progress, leave=False):
            n = min(HOURS_PER_CHUNK, self.t_hi - t0)
            x = np.asarray(a.grid50(t0, n, 0, 0, self.side), dtype=np.float64)
            if not np.isfinite(x).all():
                raise StoreError(f"{a.path}: traffic_grid50 holds non-finite values in hours {t0}..{t0 + n}")
            z = self.norm.forward(torch.from_numpy(x)).numpy()
            pop = np.asarray(a.population(t0, n, 0, 0, self.side), dtype=np.float64) if population else None
            yield t0, x, z, pop


def _fit_historical(cfg, reader: _Reader, S: int, H: int, W: int) -> dict[str, torch.Tensor]:
    how = reader.arr.hour_of_week
    sums = np.zeros((S, H, W))
    counts = np.zeros(S)
    for t0, _, z, _ in reader.chunks("historical profile"):
        slots = how[t0 : t0 + len(z)] % S
        np.add.at(sums, slots, z)
        np.add.at(counts, slots, 1)
    if (counts == 0).any():
        missing = np.flatnonzero(counts == 0)
        raise ConfigError(
            f"{reader.arr.path}: the training period ({reader.t_hi - reader.t_lo} h) never sees {len(missing)} of the {S} "
            f"time slots (first: {int(missing[0])}); use model.slot=hour_of_day or a longer training period"
        )
    profile = sums / counts[:, None, None]
    out = {"profile": torch.from_numpy(profile.astype(np.float32))}
    if cfg.noise == "none":
        return out
    if cfg.noise == "lognormal":
        s1, s2, n = np.zeros((24, H, W)), np.zeros((24, H, W)), np.zeros(24)
        for t0, _, z, _ in reader.chunks("historical residuals"):
            tt = how[t0 : t0 + len(z)]
            r = z - profile[tt % S]
            np.add.at(s1, tt % 24, r)
            np.add.at(s2, tt % 24, r * r)
            np.add.at(n, tt % 24, 1)
        n = np.maximum(n, 1)[:, None, None]
        mean = s1 / n
        std = np.sqrt(np.maximum(s2 / n - mean**2, 0.0))
        out["resid_mean"] = torch.from_numpy(mean.astype(np.float32))
        out["resid_std"] = torch.from_numpy(std.astype(np.float32))
        return out
    # residual days: calendar days (hour of day 0..23) fully inside the training period, the latest ones
    hod0 = int(how[reader.t_lo] % 24)
    first_full = reader.t_lo + (24 - hod0) % 24
    n_days = (reader.t_hi - first_full) // 24
    if n_days < 1:
        raise ConfigError(f"{reader.arr.path}: the training period holds no whole calendar day for residual resampling; use model.noise=lognormal")
    keep = min(n_days, cfg.max_residual_days)
    d_lo = first_full + (n_days - keep) * 24
    res = np.zeros((keep, 24, H, W), np.float32)
    for t0, _, z, _ in reader.chunks("historical residuals"):
        tt = np.arange(t0, t0 + len(z))
        sel = (tt >= d_lo) & (tt < d_lo + keep * 24)
        if sel.any():
            r = z[sel] - profile[how[tt[sel]] % S]
            res[(tt[sel] - d_lo) // 24, how[tt[sel]] % 24] = r
    out["residuals"] = torch.from_numpy(res)
    return out


def _fit_context_profile(cfg, reader: _Reader, S: int, mask: np.ndarray) -> dict[str, torch.Tensor]:
    arr = reader.arr
    how = arr.hour_of_week
    A = int(arr.n_aoi)
    aoi = arr.aoi
    if aoi.min() < 0 or aoi.max() >= A:
        raise StoreError(f"{arr.path}: aoi holds codes outside [0, {A}) (its flag_values)")
    per_person = cfg.denominator == "population"
    if per_person and arr.pop_by is None:
        raise ConfigError(f"{arr.path}: has no population layer; use model.denominator=pixel")
    a_m = aoi[mask]
    num, den = np.zeros(A * S), np.zeros(A * S)
    for t0, x, _, pop in reader.chunks("context profile", population=per_person):
        slots = how[t0 : t0 + len(x)] % S
        idx = (a_m[None, :] * S + slots[:, None]).ravel()
        num += np.bincount(idx, weights=x[:, mask].ravel(), minlength=A * S)
        d = pop[:, mask].ravel() if per_person else np.ones(idx.size)
        den += np.bincount(idx, weights=d, minlength=A * S)
    num, den = num.reshape(A, S), den.reshape(A, S)
    if per_person and den.sum() <= 0:
        raise ConfigError(f"{arr.path}: population is zero over the whole training split; use model.denominator=pixel")
    pooled = np.where(den.sum(0) > 0, num.sum(0) / np.maximum(den.sum(0), 1e-300), 0.0)  # (S,): every AoI type
    rate = np.where(den > 0, num / np.maximum(den, 1e-300), pooled[None, :])
    out = {"rate": torch.from_numpy(rate.astype(np.float32))}
    if cfg.noise == "none":
        return out
    s1, s2, n = np.zeros(A * 24), np.zeros(A * 24), np.zeros(A * 24)
    rate32 = rate.astype(np.float32)
    for t0, x, z, pop in reader.chunks("context residuals", population=per_person):
        tt = how[t0 : t0 + len(x)]
        pred = rate32[a_m[None, :], (tt % S)[:, None]].astype(np.float64)
        if per_person:
            pred = pred * np.maximum(pop[:, mask], 0)
        r = (z[:, mask] - reader.norm.forward(torch.from_numpy(pred)).numpy()).ravel()
        idx = (a_m[None, :] * 24 + (tt % 24)[:, None]).ravel()
        s1 += np.bincount(idx, weights=r, minlength=A * 24)
        s2 += np.bincount(idx, weights=r * r, minlength=A * 24)
        n += np.bincount(idx, minlength=A * 24)
    mean = s1 / np.maximum(n, 1)
    std = np.sqrt(np.maximum(s2 / np.maximum(n, 1) - mean**2, 0.0))
    # AoI types never seen in training: the residual law of all types at that hour
    seen = (n > 0).reshape(A, 24)
    all_n = np.maximum(n.reshape(A, 24).sum(0), 1)
    all_mean = s1.reshape(A, 24).sum(0) / all_n
    all_std = np.sqrt(np.maximum(s2.reshape(A, 24).sum(0) / all_n - all_mean**2, 0.0))
    mean = np.where(seen, mean.reshape(A, 24), all_mean[None, :])
    std = np.where(seen, std.reshape(A, 24), all_std[None, :])
    out["resid_mean"] = torch.from_numpy(mean.astype(np.float32))
    out["resid_std"] = torch.from_numpy(std.astype(np.float32))
    return out


def level_maps(arr) -> list[tuple[np.ndarray, int]]:
    """(unit map (H, W), unit count) of bs, cell and grid100 over the whole grid of ``arr`` (CityArrays)."""
    H, W = arr.H, arr.W
    yy, xx = np.meshgrid(np.arange(H) // 2, np.arange(W) // 2, indexing="ij")
    return [
        (arr.pixel_bs, len(arr.bs_count)),
        (arr.pixel_cell, len(arr.cell_count)),
        (yy * ((W + 1) // 2) + xx, ((H + 1) // 2) * ((W + 1) // 2)),
    ]


def _fit_share_weights(reader: _Reader, arr) -> torch.Tensor:
    """(3, H, W): per level (bs, cell, grid100) each pixel's share of its unit's training total times the unit's
    pixel count (1 everywhere in a unit with no training traffic: the uniform split)."""
    tot = np.zeros((arr.H, arr.W))
    for _, x, _, _ in reader.chunks("mean shares"):
        tot += x.sum(0)
    out = []
    for umap, n in level_maps(arr):
        unit_tot = pyramid.units_sum(tot, umap, n)
        cnt = pyramid.unit_counts(umap, n).astype(np.float64)
        ut = unit_tot[umap]
        out.append(np.where(ut > 0, tot / np.where(ut > 0, ut, 1.0) * cnt[umap], 1.0))
    return torch.from_numpy(np.stack(out).astype(np.float32))


def build(cfg, data_info: dict) -> StatisticalModel:
    """An unfitted model for ``cfg.model`` (the statistics' shapes come from the data: fit it, or load a state
    dict). ``data_info`` is not needed; the signature is the registry's."""
    return StatisticalModel(cfg.model)
