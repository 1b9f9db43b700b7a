"""The synthetic city: procedural urban context, base stations, cells and hourly traffic at every level.

``synth_city(cfg, out)`` writes a complete city store (schema.py). Seeds and parameters give different cities
(cross-city transfer needs them). Static layers are built in memory (they are small: a 430x430 city is 185k
pixels); traffic is generated and written ``cfg.time_chunk`` hours at a time into a Zarr template, so peak
memory does not grow with the number of days.

Generative story (each step draws from its own RNG stream spawned from the seed, so e.g. changing the user
count does not change the traffic):

1. AoI zones: Voronoi cells of random seeds; the type of a zone depends on its distance to the city's centres
   (business/commercial near a centre, residential and education in between, industrial/green outside); a
   river (water) meanders across; transport hubs are small discs.
2. Roads: a jittered grid of major roads (~1 km) and denser minor roads in built-up zones; house type follows
   AoI and distance to the centre (high-rise near centres).
3. POIs: Poisson counts per pixel and category at AoI-dependent rates (21 categories).
4. Population by hour of week: residents spread over homes, workers/students over work places, visitors over
   leisure places; the share of people in each activity follows weekday/weekend daily profiles.
5. Traffic per pixel-hour = population x per-capita usage(AoI, hour) x static heavy-tailed pixel factor x
   log-normal noise (part i.i.d., part spatially smooth) x day factor, plus rare Pareto spikes and bursty local
   events (Gaussian footprints lasting 1-4 h, more likely where people gather).
6. Base stations: placed by demand (intensity ~ mean traffic^0.7) with a minimum spacing; three sectors per BS;
   each pixel is served by its nearest BS and the sector containing its bearing; empty sectors are dropped.
7. Users (mobscale.data.users): home/work anchors, exploration and preferential return, bursty app sessions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from scipy import ndimage
from scipy.spatial import cKDTree
from tqdm.auto import tqdm

from mobscale.config.data import SynthConfig
from mobscale.data import pyramid, schema
from mobscale.errors import OutputExistsError
from mobscale.data.store import atomic_output, store_attrs_json, write_region, write_template
from mobscale.log import get_logger

log = get_logger(__name__)

AOI, HR = schema.AOI, schema.HOUSE_ROAD
A = {n: AOI.code(n) for n in AOI.names}

# Per-capita usage multiplier by AoI (people at work browse less than people at leisure).
AOI_USAGE = np.array([1.0, 0.8, 1.25, 0.55, 0.9, 1.1, 1.3, 0.0], dtype=np.float64)

# POI rates per pixel (0.25 ha) by AoI (rows: AOI.names order) for the 21 categories (schema.POI_CATEGORIES order).
_POI_RATES = np.array([
    # food shop life sport med hotel scen resid gov edu trans fin comp road car pub bizres ent auto moto place
    [0.40, 0.35, 0.45, 0.08, 0.05, 0.02, 0.01, 0.60, 0.02, 0.05, 0.05, 0.03, 0.05, 0.05, 0.04, 0.08, 0.05, 0.04, 0.03, 0.02, 0.15],  # residential
    [0.60, 0.30, 0.25, 0.05, 0.04, 0.15, 0.01, 0.05, 0.10, 0.03, 0.08, 0.35, 0.90, 0.06, 0.03, 0.05, 0.40, 0.10, 0.01, 0.01, 0.20],  # business
    [1.20, 1.40, 0.50, 0.15, 0.06, 0.20, 0.03, 0.05, 0.02, 0.04, 0.08, 0.15, 0.20, 0.06, 0.05, 0.06, 0.15, 0.45, 0.03, 0.02, 0.15],  # commercial
    [0.15, 0.05, 0.08, 0.01, 0.01, 0.01, 0.00, 0.02, 0.02, 0.01, 0.04, 0.01, 0.50, 0.08, 0.20, 0.04, 0.01, 0.01, 0.25, 0.08, 0.10],  # industrial
    [0.20, 0.10, 0.10, 0.20, 0.03, 0.02, 0.02, 0.05, 0.02, 0.80, 0.04, 0.02, 0.03, 0.04, 0.01, 0.10, 0.02, 0.03, 0.01, 0.01, 0.10],  # education
    [0.03, 0.01, 0.01, 0.25, 0.00, 0.00, 0.30, 0.00, 0.00, 0.02, 0.01, 0.00, 0.00, 0.02, 0.00, 0.08, 0.00, 0.02, 0.00, 0.00, 0.08],  # green
    [0.30, 0.20, 0.10, 0.01, 0.02, 0.10, 0.01, 0.00, 0.02, 0.01, 0.90, 0.03, 0.02, 0.20, 0.10, 0.10, 0.02, 0.02, 0.02, 0.02, 0.10],  # transport
    [0.00] * 21,  # water
], dtype=np.float64)


def _hour_profiles() -> dict[str, np.ndarray]:
    """Daily shares of people (24 hourly values) in each activity, for weekdays and weekends, and per-capita
    usage by hour of day. Hand-made to match the usual mobile-traffic shape: trough ~4-5 h, rise at 7-9 h,
    plateau during the day, peak 20-22 h."""
    h = np.arange(24)

    def bump(c, w):  # circular in the hour of day, so evening activity carries past midnight
        d = np.abs(h - c)
        d = np.minimum(d, 24 - d)
        return np.exp(-0.5 * (d / w) ** 2)

    wd_work = 0.62 * (1 / (1 + np.exp(-(h - 8.0) * 1.6))) * (1 / (1 + np.exp((h - 18.0) * 1.2)))
    wd_leis = 0.05 + 0.10 * bump(12.5, 1.2) + 0.22 * bump(19.5, 1.8)
    wd_trans = 0.10 * bump(8.0, 0.9) + 0.10 * bump(18.0, 1.0)
    we_work = 0.15 * (1 / (1 + np.exp(-(h - 9.0) * 1.2))) * (1 / (1 + np.exp((h - 17.0) * 1.0)))
    we_leis = 0.06 + 0.35 * bump(15.0, 3.5)
    we_trans = 0.05 * bump(11.0, 2.0) + 0.05 * bump(20.0, 2.0)
    out = {}
    for key, (w, l, t) in {"weekday": (wd_work, wd_leis, wd_trans), "weekend": (we_work, we_leis, we_trans)}.items():
        home = np.clip(1.0 - w - l - t, 0.05, 1.0)
        tot = w + l + t + home
        out[key] = np.stack([home, w, l, t]) / tot  # (4 activities, 24)
    usage = 0.15 + 0.55 * bump(9.5, 2.5) + 0.7 * bump(14.0, 3.0) + 1.0 * bump(21.0, 2.2)
    out["usage"] = usage / usage.max()
    return out


@dataclass
class CityLayout:
    """Static layers of a synthetic city (all (H, W) unless stated)."""

    aoi: np.ndarray
    house_road: np.ndarray
    zone: np.ndarray  # Voronoi zone id per pixel (business areas for the KG)
    poi: np.ndarray  # (21, H, W) float32
    home: np.ndarray  # residents distribution (sums to 1)
    work: np.ndarray
    leisure: np.ndarray
    transit: np.ndarray
    residents: float
    pixel_factor: np.ndarray  # static heavy-tailed usage factor
    centres: np.ndarray  # (n, 2) pixel coords of the centres


def _rngs(seed: int, names: list[str]) -> dict[str, np.random.Generator]:
    ss = np.random.SeedSequence(seed)
    return {n: np.random.default_rng(s) for n, s in zip(names, ss.spawn(len(names)))}


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale_px: float) -> np.ndarray:
    """Zero-mean unit-variance spatially correlated noise (Gaussian-filtered white noise)."""
    z = ndimage.gaussian_filter(rng.standard_normal(shape), scale_px, mode="reflect")
    return (z - z.mean()) / (z.std() + 1e-12)


def build_layout(cfg: SynthConfig, rng: np.random.Generator) -> CityLayout:
    H, W = cfg.height, cfg.width
    yy, xx = np.meshgrid(np.arange(H) + 0.5, np.arange(W) + 0.5, indexing="ij")
    km2 = H * W * 0.0025
    # centres: one main CBD near the middle, plus sub-centres that scale with the area
    n_sub = int(rng.integers(1, 3)) + int(km2 // 60)
    main = np.array([H / 2, W / 2]) + rng.normal(0, 0.08, 2) * [H, W]
    subs = np.column_stack([rng.uniform(0.15, 0.85, n_sub) * H, rng.uniform(0.15, 0.85, n_sub) * W])
    centres = np.vstack([main, subs])
    weight = np.r_[1.0, rng.uniform(0.35, 0.7, n_sub)]
    d_px = np.min(np.hypot(yy[..., None] - centres[:, 0], xx[..., None] - centres[:, 1]) / weight, axis=-1)
    r_city = 0.5 * np.hypot(H, W)
    rel = d_px / r_city  # 0 at a centre, ~1 at the edge
    # Voronoi zones and their AoI type
    n_zones = cfg.n_zones or max(12, int(km2 * 3.5))
    seeds = np.column_stack([rng.uniform(0, H, n_zones), rng.uniform(0, W, n_zones)])
    _, zone = cKDTree(seeds).query(np.column_stack([yy.ravel(), xx.ravel()]))
    zone = zone.reshape(H, W).astype(np.int32)
    zrel = rel[np.clip(seeds[:, 0].astype(int), 0, H - 1), np.clip(seeds[:, 1].astype(int), 0, W - 1)]
    ztype = np.empty(n_zones, dtype=np.int8)
    for z in range(n_zones):
        r = zrel[z]
        if r < 0.18:
            p = [0.15, 0.45, 0.32, 0.0, 0.03, 0.05, 0.0, 0.0]
        elif r < 0.45:
            p = [0.55, 0.12, 0.12, 0.03, 0.08, 0.10, 0.0, 0.0]
        else:
            p = [0.45, 0.03, 0.05, 0.22, 0.07, 0.18, 0.0, 0.0]
        ztype[z] = rng.choice(8, p=np.asarray(p) / np.sum(p))
    aoi = ztype[zone].astype(np.int8)
    # transport hubs: small discs at a few zone seeds close to centres
    n_hubs = max(1, int(km2 // 8))
    for c in centres[np.argsort(weight)[::-1]][:n_hubs] + rng.normal(0, 3, (min(n_hubs, len(centres)), 2)):
        aoi[np.hypot(yy - c[0], xx - c[1]) < max(1.5, 0.012 * r_city)] = A["transport"]
    # river: a meandering band across the city (only for cities large enough to have one)
    water = np.zeros((H, W), bool)
    if min(H, W) >= 24:
        horizontal = rng.random() < 0.5
        L, S = (W, H) if horizontal else (H, W)
        pos = np.arange(L) + 0.5
        centre = S * rng.uniform(0.3, 0.7) + S * 0.08 * np.sin(2 * np.pi * pos / (L * rng.uniform(0.6, 1.2)) + rng.uniform(0, 6.3))
        half_w = max(0.8, S * 0.015)
        across = yy if horizontal else xx
        along_idx = (xx if horizontal else yy).astype(int).clip(0, L - 1)
        water = np.abs(across - centre[along_idx]) < half_w
    aoi[water] = A["water"]
    # roads: jittered major grid (~1 km) + minor roads (~250 m) in built-up zones
    roads_major = np.zeros((H, W), bool)
    roads_minor = np.zeros((H, W), bool)
    sp_major = rng.uniform(16, 24)
    for axis in (0, 1):
        n = H if axis == 0 else W
        for p in np.arange(rng.uniform(0, sp_major), n, sp_major):
            line = int(p + rng.normal(0, 1.0))
            if 0 <= line < n:
                if axis == 0:
                    roads_major[line, :] = True
                else:
                    roads_major[:, line] = True
        sp_minor = rng.uniform(4.5, 6.5)
        for p in np.arange(rng.uniform(0, sp_minor), n, sp_minor):
            line = int(p)
            if 0 <= line < n:
                if axis == 0:
                    roads_minor[line, :] = True
                else:
                    roads_minor[:, line] = True
    built = np.isin(aoi, [A["residential"], A["business"], A["commercial"], A["education"]])
    roads_minor &= built & ~roads_major
    house = np.full((H, W), HR.code("open"), dtype=np.int8)
    u = rng.random((H, W))
    high_p = np.clip(0.75 - 1.5 * rel, 0.02, 0.9)
    bld = np.where(u < high_p, HR.code("building_high"), np.where(u < high_p + 0.35, HR.code("building_mid"), HR.code("building_low")))
    for name, mask in (("residential", True), ("business", True), ("commercial", True), ("education", True), ("industrial", True)):
        sel = aoi == A[name]
        house[sel] = bld[sel]
    house[(aoi == A["industrial"])] = np.where(u[aoi == A["industrial"]] < 0.8, HR.code("building_low"), HR.code("building_mid"))
    house[(aoi == A["education"]) & (u < 0.3)] = HR.code("open")
    house[(aoi == A["green"]) & (u < 0.08)] = HR.code("building_low")
    house[roads_minor] = HR.code("road_minor")
    house[roads_major] = HR.code("road_major")
    house[water & ~roads_major] = HR.code("water")
    # POIs
    intensity = np.exp(-1.2 * rel) * (1 + 0.25 * _smooth_noise(rng, (H, W), 4)).clip(0.2)
    rates = _POI_RATES[aoi.astype(int)] * intensity[..., None]  # (H, W, 21)
    poi = rng.poisson(rates).astype(np.float32).transpose(2, 0, 1)
    # people: residents at homes, workers at work places, visitors at leisure places, travellers at hubs/roads
    floors = {HR.code("building_low"): 1.0, HR.code("building_mid"): 3.0, HR.code("building_high"): 7.0}
    fl = np.vectorize(lambda v: floors.get(int(v), 0.08))(house).astype(np.float64)
    smooth = np.exp(0.35 * _smooth_noise(rng, (H, W), 3))
    home = fl * np.isin(aoi, [A["residential"]]) * 1.0 + fl * np.isin(aoi, [A["commercial"], A["business"]]) * 0.12
    home = home * smooth
    work = fl * (1.6 * (aoi == A["business"]) + 0.8 * (aoi == A["industrial"]) + 0.9 * (aoi == A["commercial"])
                 + 1.1 * (aoi == A["education"]) + 0.3 * (aoi == A["transport"]) + 0.08 * (aoi == A["residential"]))
    work = work * smooth * (1 + poi[schema.POI_CATEGORIES.index("company")])
    leis_poi = poi[[schema.POI_CATEGORIES.index(c) for c in ("food", "shopping", "entertainment", "sports_leisure", "scenic")]].sum(0)
    leisure = (0.3 + leis_poi) * (np.isin(aoi, [A["commercial"], A["green"], A["transport"], A["business"]]) * 1.0 + 0.15) * smooth
    transit = (roads_major * 1.0 + (aoi == A["transport"]) * 4.0 + roads_minor * 0.3) * smooth
    for arr in (home, work, leisure, transit):
        arr[water & ~roads_major] = 0.0
    norm = lambda a: (a / a.sum()) if a.sum() > 0 else np.full_like(a, 1.0 / a.size)  # noqa: E731
    residents = float(km2 * rng.uniform(9000, 13000))
    # static per-pixel usage factor: heavy-tailed (log-normal), spatially mixed
    return CityLayout(aoi, house, zone, poi, norm(home), norm(work), norm(leisure), norm(transit), residents,
                      _pixel_factor(rng, H, W), centres)


def _pixel_factor(rng: np.random.Generator, H: int, W: int) -> np.ndarray:
    """Static per-pixel usage factor: heavy-tailed (log-normal, mean 1), part spatially smooth, part i.i.d. Hidden:
    nothing in the context reveals it."""
    return np.exp(0.45 * (0.6 * _smooth_noise(rng, (H, W), 2) + 0.8 * rng.standard_normal((H, W))) - 0.5 * 0.45**2).astype(np.float64)


def population_by_hour_of_week(lay: CityLayout) -> np.ndarray:
    """People present per pixel for each hour of the week (Monday 00:00 = 0): (168, H, W) float32."""
    prof = _hour_profiles()
    H, W = lay.aoi.shape
    out = np.empty((168, H, W), dtype=np.float32)
    maps = np.stack([lay.home, lay.work, lay.leisure, lay.transit])  # (4, H, W)
    for how in range(168):
        day, hour = divmod(how, 24)
        shares = prof["weekend" if day >= 5 else "weekday"][:, hour]
        out[how] = (lay.residents * np.tensordot(shares, maps, axes=1)).astype(np.float32)
    return out


def place_base_stations(cfg: SynthConfig, lay: CityLayout, demand: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """BS positions in metres (n, 2) = (y, x): demand-driven intensity with a minimum spacing (no BS in water)."""
    H, W = demand.shape
    n_bs = max(2, int(round(H * W / cfg.pixels_per_bs)))
    inten = np.power(np.maximum(demand, 0), 0.7) + 0.02 * demand.mean()
    inten[lay.aoi == A["water"]] = 0
    p = (inten / inten.sum()).ravel()
    r_min = 0.45 * np.sqrt(cfg.pixels_per_bs)  # pixels
    accepted: list[np.ndarray] = []
    tree = None
    for _ in range(50):
        cand_idx = rng.choice(p.size, size=max(4 * n_bs, 64), p=p)
        cand = np.column_stack(np.unravel_index(cand_idx, (H, W))).astype(np.float64) + rng.random((cand_idx.size, 2))
        for c in cand:
            if len(accepted) >= n_bs:
                break
            if tree is not None and tree.query_ball_point(c, r_min, return_length=True) > 0:
                continue
            if any(np.hypot(*(c - a)) < r_min for a in accepted[-64:]):
                continue
            accepted.append(c)
            if len(accepted) % 256 == 0:
                tree = cKDTree(np.asarray(accepted))
        if len(accepted) >= n_bs:
            break
        r_min *= 0.85  # crowded: relax the spacing rather than loop forever
    return np.asarray(accepted[:n_bs]) * schema.PIXEL_SIZE_M


def assign_cells(bs_yx_m: np.ndarray, H: int, W: int, rng: np.random.Generator):
    """Nearest BS + sector (3 per BS, random azimuth) per pixel. Returns (pixel_cell (H,W), cell_bs, cell_sector,
    cell_azimuth, bs_keep) with empty sectors/BS removed and ids made contiguous."""
    yy, xx = np.meshgrid((np.arange(H) + 0.5) * schema.PIXEL_SIZE_M, (np.arange(W) + 0.5) * schema.PIXEL_SIZE_M, indexing="ij")
    pts = np.column_stack([yy.ravel(), xx.ravel()])
    _, nearest = cKDTree(bs_yx_m).query(pts)
    az0 = rng.uniform(0, 120, len(bs_yx_m))
    dy, dx = pts[:, 0] - bs_yx_m[nearest, 0], pts[:, 1] - bs_yx_m[nearest, 1]
    bearing = (np.degrees(np.arctan2(dx, dy)) + 360.0) % 360.0  # clockwise from north
    sector = (((bearing - az0[nearest]) % 360.0) // 120.0).astype(np.int64)
    raw_cell = nearest * 3 + sector
    used, pixel_cell = np.unique(raw_cell, return_inverse=True)
    cell_bs_raw = used // 3
    bs_keep, cell_bs = np.unique(cell_bs_raw, return_inverse=True)
    cell_sector = (used % 3).astype(np.int8)
    cell_az = ((az0[cell_bs_raw] + 120.0 * cell_sector + 60.0) % 360.0).astype(np.float32)
    return pixel_cell.reshape(H, W).astype(np.int32), cell_bs.astype(np.int32), cell_sector, cell_az, bs_keep


class TrafficModel:
    """Hourly pixel traffic of a city, generated chunk by chunk with per-hour RNG streams (so any chunk can be
    regenerated alone and the result does not depend on the chunk size)."""

    def __init__(self, cfg: SynthConfig, lay: CityLayout, population: np.ndarray, times: pd.DatetimeIndex, seed_seq: np.random.SeedSequence):
        self.cfg, self.lay, self.pop, self.times = cfg, lay, population, times
        prof = _hour_profiles()
        self.usage = prof["usage"]
        H, W = lay.aoi.shape
        self.aoi_usage = AOI_USAGE[lay.aoi.astype(int)]
        ev_ss, self._hour_ss = seed_seq.spawn(2)
        ev_rng = np.random.default_rng(ev_ss)
        n_days = int(np.ceil(len(times) / 24)) + 1
        self.day_factor = np.exp(ev_rng.normal(0, 0.06, n_days))
        # events for the whole period, drawn up front (cheap) so chunks agree on events crossing their borders
        km2 = H * W * 0.0025
        n_ev = ev_rng.poisson(cfg.event_rate * km2 * len(times))
        gather = (lay.leisure + lay.transit + 0.3 * lay.work).ravel()
        gather = gather / gather.sum()
        idx = ev_rng.choice(H * W, size=n_ev, p=gather) if n_ev else np.zeros(0, int)
        self.events = {
            "t0": ev_rng.integers(0, len(times), n_ev),
            "dur": ev_rng.integers(1, 5, n_ev),
            "y": idx // W + ev_rng.random(n_ev),
            "x": idx % W + ev_rng.random(n_ev),
            "r": ev_rng.uniform(1.5, 6.0, n_ev),  # pixels (75-300 m)
            "amp": ev_rng.lognormal(np.log(3.0), 0.6, n_ev),
        }
        self.mean_pop = population.mean(0)

    def _how(self, t: int) -> int:
        ts = self.times[t]
        return int(ts.day_of_week) * 24 + int(ts.hour)

    def hour(self, t: int) -> np.ndarray:
        """Traffic (MB) of hour index t: (H, W) float64."""
        lay, cfg = self.lay, self.cfg
        rng = np.random.default_rng(np.random.SeedSequence(self._hour_ss.entropy, spawn_key=(*self._hour_ss.spawn_key, t)))
        H, W = lay.aoi.shape
        ts = self.times[t]
        per_capita = 2.0 * self.usage[ts.hour]  # MB per person-hour at the daily peak ~2 MB
        base = self.pop[self._how(t)] * per_capita * self.aoi_usage * lay.pixel_factor * self.day_factor[t // 24]
        s = cfg.noise_sigma
        noise = np.exp(s * (0.7 * rng.standard_normal((H, W)) + 0.7 * _smooth_noise(rng, (H, W), 2.5)) - 0.5 * s**2 * 0.98)
        val = base * noise
        spikes = rng.random((H, W)) < 0.002
        if spikes.any():
            val[spikes] *= 1.0 + rng.pareto(1.5, int(spikes.sum()))
        ev = self.events
        live = np.nonzero((ev["t0"] <= t) & (t < ev["t0"] + ev["dur"]))[0]
        if live.size:
            yy, xx = np.mgrid[0:H, 0:W] + 0.5
            for i in live:
                r = ev["r"][i]
                y0, y1 = int(max(0, ev["y"][i] - 3 * r)), int(min(H, ev["y"][i] + 3 * r + 1))
                x0, x1 = int(max(0, ev["x"][i] - 3 * r)), int(min(W, ev["x"][i] + 3 * r + 1))
                k = np.exp(-0.5 * ((yy[y0:y1, x0:x1] - ev["y"][i]) ** 2 + (xx[y0:y1, x0:x1] - ev["x"][i]) ** 2) / r**2)
                local = self.mean_pop[y0:y1, x0:x1].mean() * 2.0 * lay.pixel_factor[y0:y1, x0:x1].mean()
                val[y0:y1, x0:x1] += ev["amp"][i] * local * k
        val[lay.aoi == A["water"]] *= 0.02  # boats and bridges only
        return val

    def chunk(self, sl: slice) -> np.ndarray:
        return np.stack([self.hour(t) for t in range(sl.start, sl.stop)]).astype(np.float32)


def _static_dataset(cfg: SynthConfig, lay: CityLayout, population: np.ndarray, times, pixel_cell, cell_bs, cell_sector, cell_az, bs_yx) -> xr.Dataset:
    H, W = cfg.height, cfg.width
    y = (np.arange(H) + 0.5) * schema.PIXEL_SIZE_M
    x = (np.arange(W) + 0.5) * schema.PIXEL_SIZE_M
    lat, _ = schema.metres_to_latlon(y, np.zeros_like(y), cfg.lat0, cfg.lon0)
    _, lon = schema.metres_to_latlon(np.zeros_like(x), x, cfg.lat0, cfg.lon0)
    C, B = len(cell_bs), len(bs_yx)
    counts = np.bincount(pixel_cell.ravel(), minlength=C)
    yy, xx = np.meshgrid(y, x, indexing="ij")
    cell_y = np.bincount(pixel_cell.ravel(), weights=yy.ravel(), minlength=C) / counts
    cell_x = np.bincount(pixel_cell.ravel(), weights=xx.ravel(), minlength=C) / counts
    cell_lat, cell_lon = schema.metres_to_latlon(cell_y, cell_x, cfg.lat0, cfg.lon0)
    bs_lat, bs_lon = schema.metres_to_latlon(bs_yx[:, 0], bs_yx[:, 1], cfg.lat0, cfg.lon0)
    m = {"units": "m"}
    coords = {
        "time": ("time", times.values.astype("datetime64[ns]")),
        "y": ("y", y, {**m, "long_name": "pixel centre, metres north of the SW corner"}),
        "x": ("x", x, {**m, "long_name": "pixel centre, metres east of the SW corner"}),
        "lat": ("y", lat, {"units": "degrees_north", "long_name": "latitude of pixel centres"}),
        "lon": ("x", lon, {"units": "degrees_east", "long_name": "longitude of pixel centres"}),
        "y100": ("y100", y.reshape(-1, 2).mean(1), m),
        "x100": ("x100", x.reshape(-1, 2).mean(1), m),
        "cell": ("cell", np.arange(C, dtype=np.int32)),
        "cell_y": ("cell", cell_y, {**m, "long_name": "centroid of the cell's pixels"}),
        "cell_x": ("cell", cell_x, m),
        "cell_lat": ("cell", cell_lat, {"units": "degrees_north"}),
        "cell_lon": ("cell", cell_lon, {"units": "degrees_east"}),
        "cell_bs": ("cell", cell_bs.astype(np.int32), {"long_name": "cell -> bs map"}),
        "cell_sector": ("cell", cell_sector.astype(np.int8)),
        "cell_azimuth": ("cell", cell_az, {"units": "degree", "long_name": "sector centre bearing, clockwise from north"}),
        "bs": ("bs", np.arange(B, dtype=np.int32)),
        "bs_y": ("bs", bs_yx[:, 0], m),
        "bs_x": ("bs", bs_yx[:, 1], m),
        "bs_lat": ("bs", bs_lat, {"units": "degrees_north"}),
        "bs_lon": ("bs", bs_lon, {"units": "degrees_east"}),
        "poi_category": ("poi_category", np.array(schema.POI_CATEGORIES, dtype=object)),
        "hour_of_week": ("hour_of_week", np.arange(168, dtype=np.int16), {"long_name": "hours since Monday 00:00"}),
    }
    data = {
        "pixel_cell": (("y", "x"), pixel_cell.astype(np.int32), {"long_name": "grid50 -> cell map"}),
        "aoi": (("y", "x"), lay.aoi.astype(np.int8), AOI.attrs()),
        "house_road": (("y", "x"), lay.house_road.astype(np.int8), HR.attrs()),
        "zone": (("y", "x"), lay.zone.astype(np.int32), {"long_name": "business area (AoI zone) id"}),
        "poi": (("poi_category", "y", "x"), lay.poi.astype(np.float32), {"units": "1", "long_name": "POI count"}),
        "population": (("hour_of_week", "y", "x"), population, {"units": "person", "long_name": "people present"}),
    }
    return xr.Dataset(data, coords=coords)


def synth_city(cfg: SynthConfig, out: str | Path, overwrite: bool = False, progress: bool = True) -> Path:
    """Generate the synthetic city ``cfg`` into the store ``out`` (atomic; refuses an existing path unless
    ``overwrite``). Returns the path."""
    import dask.array as da

    from mobscale.data.users import synth_users

    out = Path(out)
    if out.exists() and not overwrite:  # fail before any work; atomic_output checks again at the end
        raise OutputExistsError(f"{out}: already exists (pass --overwrite to replace it)")
    r = _rngs(cfg.seed, ["layout", "bs", "cells", "traffic", "users"])
    lay = build_layout(cfg, r["layout"])
    population = population_by_hour_of_week(lay)
    H, W = cfg.height, cfg.width
    start = pd.Timestamp(cfg.start)
    times = pd.date_range(start, periods=24 * cfg.days, freq="h")
    # realisation r > 0: the same city (context, BS, cells) with its random traffic drawn again from its own streams
    key = (101,) if cfg.realisation == 0 else (101, cfg.realisation)
    traffic = TrafficModel(cfg, lay, population, times, np.random.SeedSequence(cfg.seed, spawn_key=key))
    # BS placement needs expected demand; mean population x usage x pixel factor is its noise-free expectation
    demand = population.mean(0) * lay.pixel_factor * traffic.aoi_usage
    bs_yx = place_base_stations(cfg, lay, demand, r["bs"])
    if cfg.realisation and cfg.redraw_pixel_factor:
        # after BS placement, so the network layout stays that of the city; TrafficModel reads lay.pixel_factor per hour
        lay.pixel_factor = _pixel_factor(np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(102, cfg.realisation))), H, W)
    pixel_cell, cell_bs, cell_sector, cell_az, bs_keep = assign_cells(bs_yx, H, W, r["cells"])
    bs_yx = bs_yx[bs_keep]
    ds = _static_dataset(cfg, lay, population, times, pixel_cell, cell_bs, cell_sector, cell_az, bs_yx)
    T, C, B = len(times), len(cell_bs), len(bs_yx)
    tc = min(cfg.time_chunk, T)
    lazy = lambda shape: da.zeros(shape, chunks=(tc, *shape[1:]), dtype=np.float32)  # noqa: E731
    ds["traffic_grid50"] = (("time", "y", "x"), lazy((T, H, W)), dict(schema.TRAFFIC_ATTRS))
    ds["traffic_grid100"] = (("time", "y100", "x100"), lazy((T, H // 2, W // 2)), dict(schema.TRAFFIC_ATTRS))
    ds["traffic_cell"] = (("time", "cell"), lazy((T, C)), dict(schema.TRAFFIC_ATTRS))
    ds["traffic_bs"] = (("time", "bs"), lazy((T, B)), dict(schema.TRAFFIC_ATTRS))
    ds.attrs = {
        "mobscale_schema": schema.SCHEMA_VERSION,
        "city": cfg.city,
        "kind": "synthetic",
        "crs": schema.local_crs(cfg.lat0, cfg.lon0),
        "lat0": cfg.lat0,
        "lon0": cfg.lon0,
        "pixel_size_m": schema.PIXEL_SIZE_M,
        "time_step_minutes": 60,
        "provenance": "mobscale synthetic city generator (mobscale.data.synthetic)",
        "config": store_attrs_json(cfg.model_dump(mode="json")),
        "levels_built_by": store_attrs_json({"grid50": "generated", "grid100": "2x2 sum of grid50",
                                             "cell": "sum of pixels by nearest BS + sector", "bs": "sum of its 3 sectors"}),
        "levels_present": store_attrs_json(list(schema.SPATIAL_LEVELS)),
        "timezone": "local time (naive timestamps)",
    }
    chunks = {"time": tc}
    with atomic_output(out, overwrite=overwrite) as tmp:
        write_template(ds, tmp, chunks=chunks)
        bar = tqdm(total=T, desc=f"synth {cfg.city}", unit="h", disable=not progress, leave=False)
        for s in range(0, T, tc):
            sl = slice(s, min(T, s + tc))
            g50 = traffic.chunk(sl)
            block = xr.Dataset({
                "traffic_grid50": (("time", "y", "x"), g50),
                "traffic_grid100": (("time", "y100", "x100"), pyramid.block_sum(g50)),
                "traffic_cell": (("time", "cell"), (cell := pyramid.units_sum(g50, pixel_cell, C))),
                "traffic_bs": (("time", "bs"), pyramid.units_sum(cell, cell_bs, B)),
            })
            write_region(block, tmp, region={"time": sl})
            bar.update(sl.stop - sl.start)
        bar.close()
        if cfg.users > 0:
            users = synth_users(cfg, lay, ds, population, r["users"])
            from mobscale.data.store import to_zarr

            to_zarr(users, tmp, group=schema.USERS_GROUP, mode="w-", chunks={"time": -1})
        from mobscale.data.validate import validate_store

        validate_store(tmp, display_path=out)
    log.info("synthetic city '%s': %dx%d pixels, %d h, %d BS, %d cells, %d users -> %s", cfg.city, H, W, T, B, C, cfg.users, out)
    return out
