"""Tiny seeded source files in every importer format, written by the tests themselves, with the values the
importers must reproduce."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# a synthetic Milano-like grid: SW corner, square size in degrees (about 235 m x 233 m at 45 deg N)
LAT0, LON0, DLAT, DLON = 45.0, 9.0, 0.0021, 0.003
CET_MIDNIGHT_MS = 1383260400000  # 2013-11-01 00:00 CET
STEP_MS = 600_000


def write_milano_grid(path: Path, rows: range, cols: range, geojson: bool = False) -> Path:
    """Squares (row from the south, col from the west; cellId = row * 100 + col + 1) as the shared CSV layout
    or as a GeoJSON FeatureCollection."""
    recs = []
    for r in rows:
        for c in cols:
            s, w = LAT0 + r * DLAT, LON0 + c * DLON
            n, e = s + DLAT, w + DLON
            recs.append((r * 100 + c + 1, w, n, e, n, e, s, w, s, w + DLON / 2, s + DLAT / 2))
    if geojson:
        feats = [{"type": "Feature", "properties": {"cellId": cid},
                  "geometry": {"type": "Polygon", "coordinates": [[[w, n], [e, n], [e, s], [w, s], [w, n]]]}}
                 for cid, w, n, e, _, _, s, *_ in recs]
        path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
        return path
    lines = ["cellId,lon_nw,lat_nw,lon_ne,lat_ne,lon_se,lat_se,lon_sw,lat_sw,lon_c,lat_c"]
    lines += [",".join([str(r[0])] + [f"{v:.12f}" for v in r[1:]]) for r in recs]
    path.write_text("\n".join(lines) + "\n")
    return path


def milan_raw_records(seed: int, squares: list[int], n_steps: int, t0_ms: int = CET_MIDNIGHT_MS):
    """Random raw records: several country codes per (square, interval), some fields empty, some (square,
    interval) pairs without any record. Returns (lines, expected {activity: {(step, square): sum}})."""
    rng = np.random.default_rng(seed)
    acts = ("smsin", "smsout", "callin", "callout", "internet")
    expected = {a: {} for a in acts}
    lines = []
    for k in range(n_steps):
        for sq in squares:
            if rng.random() < 0.15 and not (k == 0 or k == n_steps - 1):
                continue  # no activity in this square and interval
            for cc in rng.choice([0, 39, 33, 49, 86], size=rng.integers(1, 4), replace=False):
                vals = []
                for a in acts:
                    if rng.random() < 0.3:
                        vals.append("")
                    else:
                        v = float(rng.gamma(2.0, 3.0))
                        vals.append(repr(v))
                        expected[a][(k, sq)] = expected[a].get((k, sq), 0.0) + v
                lines.append("\t".join([str(sq), str(t0_ms + k * STEP_MS), str(int(cc)), *vals]))
    order = rng.permutation(len(lines))  # the files are not sorted in the wild either
    return [lines[i] for i in order], expected


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def uomo_series(seed: int, n_patches: int, S: int, C: int = 3):
    """Continuous ground truth: traffic/users (P, S, 4, 4) and poi (P, C, 4, 4)."""
    rng = np.random.default_rng(seed)
    traffic = rng.gamma(1.5, 100.0, size=(n_patches, S, 4, 4)).astype(np.float32)
    users = (traffic / 50.0).astype(np.float32)
    poi = rng.integers(0, 9, size=(n_patches, C, 4, 4)).astype(np.float32)
    return traffic, users, poi


def uomo_windows(traffic, users, poi, L: int, stride: int, start_slot: int, per_day: int, rng):
    """Cut every patch series into windows of L steps every ``stride`` steps from week slot ``start_slot``,
    shuffled across patches. Returns the split's arrays (traffic, users, poi, timestamps)."""
    P, S = traffic.shape[:2]
    n = (S - L) // stride + 1
    tr, us, po, ts = [], [], [], []
    week = 7 * per_day
    for p in range(P):
        for k in range(n):
            a = k * stride
            tr.append(traffic[p, a : a + L])
            us.append(users[p, a : a + L])
            po.append(poi[p])
            slots = (start_slot + a + np.arange(L)) % week
            ts.append(np.stack([slots // per_day, slots % per_day], axis=1))
    order = rng.permutation(len(tr))
    pick = lambda xs: np.stack(xs)[order]  # noqa: E731
    return pick(tr), pick(us), pick(po), pick(ts).astype(np.int16)


def write_uomo(path: Path, seed: int, patches: dict[str, int], S: int, L: int, stride: int, start_slot: int, per_day: int):
    """A UoMo-format npz; returns {split: (traffic, users, poi)} ground truth series."""
    rng = np.random.default_rng(seed)
    arrays, truth = {}, {}
    for i, (split, P) in enumerate(patches.items()):
        tr, us, po = uomo_series(seed + 17 * i, P, S)
        truth[split] = (tr, us, po)
        w = uomo_windows(tr, us, po, L, stride, start_slot, per_day, rng)
        for name, a in zip(("traffic", "users", "poi", "timestamps"), w):
            arrays[f"{name}_{split}"] = a
    np.savez(path, **arrays)
    return truth


def geolife_like(seed: int, n_loc: int = 60, n_far: int = 3):
    """Location table on a 0.001 deg lattice around Beijing plus ``n_far`` far-away locations (last ids)."""
    rng = np.random.default_rng(seed)
    lat = 39.98 + rng.integers(-20, 20, n_loc) * 0.001
    lon = 116.33 + rng.integers(-20, 20, n_loc) * 0.001
    far_lat = np.array([31.2, 22.8, 45.0][:n_far])
    far_lon = np.array([121.5, 108.3, 126.6][:n_far])
    return np.concatenate([lat, far_lat]), np.concatenate([lon, far_lon])


def write_movesim(folder: Path, seed: int, files: dict[str, int], n_loc: int = 60):
    """gps + X.data files (rows of 48 ids). Rows 0 of 'real' visit a far location. Returns (lat, lon, rows)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lat, lon = geolife_like(seed, n_loc)
    (folder / "gps").write_text("".join(f"{a:.3f} {b:.3f}\n" for a, b in zip(lat, lon)))
    rows = {}
    for name, n in files.items():
        r = rng.integers(0, n_loc, size=(n, 48))
        if name == "real":
            r[0, 10:12] = n_loc  # a trip to Shanghai
        rows[name] = r
        (folder / f"{name}.data").write_text("".join(" ".join(map(str, row)) + "\n" for row in r))
    return lat, lon, rows
