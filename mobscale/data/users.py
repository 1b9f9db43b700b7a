"""Synthetic users of a synthetic city (the ``users`` group) and the base-station urban knowledge graph.

Each user lives at a home BS and (if employed or a student) works at a work BS chosen by a gravity rule from
home. Days are simulated in 30-min slots: at home at night, commuting (through the BS nearest the midpoint
of the trip), at work on weekdays, and going out by the exploration-and-preferential-return model (Song et
al. 2010: explore a new place with probability rho * S^-gamma, else return to a visited place in proportion
to past visits; new places drawn by attractiveness and distance decay). Attachment occasionally flips to a
neighbouring BS (handover ping-pong, as in real CDR data).

Per-user traffic per slot = user scale x hour-of-day usage x place factor x log-normal noise when active,
plus bursty app sessions (Pareto volumes lasting one or two slots); often zero at night.

The KG holds, per BS (entity "bs:<id>"): BaseLocateAt -> "region:<ry>_<rx>" (1 km blocks), BaseBelongTo ->
"area:<zone>" (the business area / AoI zone it stands in), BaseBorderBy -> neighbouring BS whose coverage
touches its own (both directions), ServedBy -> "poi:<category>:<region>" for POI categories with at least
two POIs in its coverage.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from mobscale.data import schema
from mobscale.log import get_logger

log = get_logger(__name__)

SLOTS_PER_DAY = 24 * 60 // schema.USER_STEP_MINUTES  # 48
RHO, GAMMA = 0.6, 0.21  # EPR exploration parameters (Song et al., Nat. Phys. 2010)


def bs_neighbours(pixel_bs: np.ndarray, n_bs: int) -> list[np.ndarray]:
    """BS pairs whose coverage areas share a pixel edge."""
    a = np.concatenate([pixel_bs[:, :-1].ravel(), pixel_bs[:-1, :].ravel()])
    b = np.concatenate([pixel_bs[:, 1:].ravel(), pixel_bs[1:, :].ravel()])
    m = a != b
    pairs = np.unique(np.sort(np.column_stack([a[m], b[m]]), axis=1), axis=0)
    nb: list[list[int]] = [[] for _ in range(n_bs)]
    for i, j in pairs:
        nb[i].append(j)
        nb[j].append(i)
    return [np.asarray(x, dtype=np.int64) for x in nb]


def knowledge_graph(ds: xr.Dataset, pixel_bs: np.ndarray, neighbours: list[np.ndarray]) -> pd.DataFrame:
    """BS urban KG triples (head, relation, tail) as a DataFrame."""
    B = ds.sizes["bs"]
    rows: list[tuple[str, str, str]] = []
    by = np.asarray(ds["bs_y"].values)
    bx = np.asarray(ds["bs_x"].values)
    zone = np.asarray(ds["zone"].values)
    H, W = zone.shape
    ry, rx = (by // 1000).astype(int), (bx // 1000).astype(int)
    py = np.clip((by / schema.PIXEL_SIZE_M).astype(int), 0, H - 1)
    px = np.clip((bx / schema.PIXEL_SIZE_M).astype(int), 0, W - 1)
    poi = np.asarray(ds["poi"].values)  # (C, H, W)
    cats = [str(c) for c in ds["poi_category"].values]
    counts = np.stack([np.bincount(pixel_bs.ravel(), weights=poi[c].ravel(), minlength=B) for c in range(len(cats))], 1)
    for b in range(B):
        h = f"bs:{b}"
        rows.append((h, "BaseLocateAt", f"region:{ry[b]}_{rx[b]}"))
        rows.append((h, "BaseBelongTo", f"area:{int(zone[py[b], px[b]])}"))
        for n in neighbours[b]:
            rows.append((h, "BaseBorderBy", f"bs:{int(n)}"))
        for c in np.nonzero(counts[b] >= 2)[0]:
            rows.append((h, "ServedBy", f"poi:{cats[c]}:{ry[b]}_{rx[b]}"))
    return pd.DataFrame(rows, columns=["head", "relation", "tail"])


def synth_users(cfg, lay, ds: xr.Dataset, population: np.ndarray, rng: np.random.Generator) -> xr.Dataset:
    """Users group for a synthetic city (see module docstring). ``lay`` is synthetic.CityLayout."""
    from mobscale.data.synthetic import AOI_USAGE, _hour_profiles

    B = ds.sizes["bs"]
    pixel_bs = np.asarray(ds["cell_bs"].values)[np.asarray(ds["pixel_cell"].values)]
    mass = lambda m: np.bincount(pixel_bs.ravel(), weights=m.ravel(), minlength=B)  # noqa: E731
    home_m, work_m, leis_m = mass(lay.home), mass(lay.work), mass(lay.leisure + 0.3 * lay.transit)
    # dominant AoI per BS -> place usage factor
    aoi_counts = np.stack([np.bincount(pixel_bs.ravel(), weights=(lay.aoi == k).ravel(), minlength=B) for k in range(len(schema.AOI.names))], 1)
    bs_aoi = aoi_counts.argmax(1)
    place_factor = AOI_USAGE[bs_aoi]
    place_factor[bs_aoi == schema.AOI.code("water")] = 1.0
    yx = np.column_stack([ds["bs_y"].values, ds["bs_x"].values]).astype(np.float64)
    neighbours = bs_neighbours(pixel_bs, B)
    n_users, days = cfg.users, cfg.user_days
    S = days * SLOTS_PER_DAY
    times = pd.date_range(pd.Timestamp(cfg.start), periods=S, freq=f"{schema.USER_STEP_MINUTES}min")
    usage = _hour_profiles()["usage"]
    traj = np.empty((n_users, S), dtype=np.int32)
    traffic = np.zeros((n_users, S), dtype=np.float32)
    home_p = home_m / home_m.sum()
    home_bs = rng.choice(B, size=n_users, p=home_p)
    work_bs = np.full(n_users, -1, dtype=np.int64)
    scale = rng.lognormal(np.log(3.0), 0.8, n_users)  # MB per active half-hour at peak usage

    def dist_from(i: int) -> np.ndarray:
        return np.hypot(yx[:, 0] - yx[i, 0], yx[:, 1] - yx[i, 1])

    def nearest_to(p: np.ndarray) -> int:
        return int(np.argmin(np.hypot(yx[:, 0] - p[0], yx[:, 1] - p[1])))

    for u in range(n_users):
        h = int(home_bs[u])
        employed = rng.random() < 0.78
        if employed:
            w = work_m * np.exp(-dist_from(h) / 6000.0)
            work_bs[u] = rng.choice(B, p=w / w.sum())
        visits: dict[int, int] = {h: 1}
        if employed:
            visits[int(work_bs[u])] = 1
        loc = np.empty(S, dtype=np.int64)
        for d in range(days):
            day = times[d * SLOTS_PER_DAY]
            weekend = day.day_of_week >= 5
            base = d * SLOTS_PER_DAY
            row = np.full(SLOTS_PER_DAY, h, dtype=np.int64)
            cur_end = 0
            if employed and not weekend and rng.random() < 0.93:
                ws = int(np.clip(rng.normal(17.5, 1.0), 13, 21))  # slot 17.5 = 08:45
                we = int(np.clip(rng.normal(36, 1.6), ws + 8, 44))  # slot 36 = 18:00
                wb = int(work_bs[u])
                mid = nearest_to((yx[h] + yx[wb]) / 2)
                row[ws - 1] = mid
                row[ws:we] = wb
                if rng.random() < 0.3:  # lunch nearby
                    near = leis_m * np.exp(-dist_from(wb) / 800.0)
                    row[24:26] = rng.choice(B, p=near / near.sum())
                row[we] = mid
                cur_end = we + 1
                visits[wb] = visits.get(wb, 0) + 1
            n_out = rng.poisson(1.1 if weekend else 0.45)
            t = max(cur_end, int(rng.normal(26 if weekend else 38, 2)))
            cur = h
            for _ in range(n_out):
                if t >= SLOTS_PER_DAY - 3:
                    break
                if rng.random() < RHO * len(visits) ** (-GAMMA):
                    p = leis_m * np.exp(-dist_from(cur) / 3000.0)
                    p[list(visits)] = 0.0
                    if p.sum() <= 0:
                        p = leis_m.copy()
                    dest = int(rng.choice(B, p=p / p.sum()))
                else:
                    keys = np.array([k for k in visits if k != cur])
                    if keys.size == 0:
                        continue
                    wts = np.array([visits[k] for k in keys], dtype=np.float64)
                    dest = int(rng.choice(keys, p=wts / wts.sum()))
                stay = int(rng.integers(2, 8))
                row[t] = nearest_to((yx[cur] + yx[dest]) / 2)
                row[t + 1 : min(SLOTS_PER_DAY, t + 1 + stay)] = dest
                visits[dest] = visits.get(dest, 0) + 1
                cur = dest
                t = t + 1 + stay
            if cur != h and t < SLOTS_PER_DAY:
                row[t] = nearest_to((yx[cur] + yx[h]) / 2)
            loc[base : base + SLOTS_PER_DAY] = row
        # handover ping-pong: occasionally attach to a neighbouring BS
        flip = rng.random(S) < 0.03
        for s in np.nonzero(flip)[0]:
            nb = neighbours[loc[s]]
            if nb.size:
                loc[s] = nb[rng.integers(nb.size)]
        traj[u] = loc
        # traffic
        hours = (np.arange(S) % SLOTS_PER_DAY) // 2
        asleep = (hours < 6) & (loc == h)
        act_p = np.clip(0.12 + 0.75 * usage[hours], 0, 1) * np.where(asleep, 0.25, 1.0)
        active = rng.random(S) < act_p
        vol = scale[u] * usage[hours] * place_factor[loc] * rng.lognormal(-0.18, 0.6, S)
        tr = np.where(active, vol, 0.0)
        n_sess = rng.poisson(0.12 * (0.3 + usage[hours]) * np.where(asleep, 0.2, 1.0))
        for s in np.nonzero(n_sess)[0]:
            v = float((rng.pareto(1.4, n_sess[s]) + 1).sum() * scale[u] * 1.5)
            if s + 1 < S and rng.random() < 0.4:
                tr[s] += 0.6 * v
                tr[s + 1] += 0.4 * v
            else:
                tr[s] += v
        traffic[u] = tr.astype(np.float32)
    kg = knowledge_graph(ds, pixel_bs, neighbours)
    out = xr.Dataset(
        {
            "traffic": (("user", "time"), traffic, {"units": "MB", "long_name": "traffic per user per half-hour"}),
            "trajectory": (("user", "time"), traj, {"long_name": "serving BS index (into root bs)"}),
            "home_bs": (("user",), home_bs.astype(np.int32)),
            "work_bs": (("user",), work_bs.astype(np.int32), {"long_name": "work BS, -1 = none"}),
            "kg_head": (("triple",), kg["head"].to_numpy(dtype=object)),
            "kg_relation": (("triple",), kg["relation"].to_numpy(dtype=object)),
            "kg_tail": (("triple",), kg["tail"].to_numpy(dtype=object)),
        },
        coords={"user": np.arange(n_users, dtype=np.int32), "time": times.values.astype("datetime64[ns]")},
        attrs={
            "provenance": "mobscale synthetic users (home/work anchors + EPR, bursty sessions)",
            "time_step_minutes": schema.USER_STEP_MINUTES,
            "epr_rho": RHO,
            "epr_gamma": GAMMA,
        },
    )
    return out
