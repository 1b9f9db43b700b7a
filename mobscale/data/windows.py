"""Training windows: patches x time cut from a city store, with the target of every stage as a density.

A window is P x P pixels of the 50 m grid x L hours. For each requested stage (spatial level, temporal
resolution) its target is the per-pixel, per-hour density of that level at that resolution (see
``pyramid.density``): piecewise constant over the level's units and time blocks. Unit densities use the whole
unit (pixels outside the patch included), so a patch sees the true cell/BS values.

Reading: the unit levels (cell, bs: (T, n) tables) are small and held in memory; the grids are read per
window straight from the Zarr store through xarray (each rank reads only its windows), or cached whole in
memory when they are smaller than ``cache_bytes`` (the demo city is a few MB).

Splits are spatial: the non-overlapping patch grid is permuted with ``split_seed`` and cut into
train / val / test fractions, so held-out patches cover the same period with unseen places.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mobscale.config.data import WindowConfig
from mobscale.data import pyramid, schema
from mobscale.data.store import open_city
from mobscale.errors import ConfigError, StoreError
from mobscale.log import get_logger

log = get_logger(__name__)

HOURS = {"1d": 24, "4h": 4, "2h": 2, "1h": 1}
LEVEL_ORDER = ("bs", "cell", "grid100", "grid50")


@dataclass(frozen=True)
class Window:
    t0: int  # hour index of the first step
    y0: int
    x0: int


class Normaliser:
    """Elementwise transform + standardisation shared by every stage.

    ``log1p``: v = log1p(x / scale); ``linear``: v = x / scale; then z = (v - mean) / std. One set of statistics
    for all stages (fitted on finest-level training targets only), so a field that is constant over a unit
    stays constant after the transform and projection commutes with it.
    """

    def __init__(self, transform: str = "log1p", scale: float = 1.0, mean: float = 0.0, std: float = 1.0, z_max: float | None = None):
        if transform not in ("log1p", "linear"):
            raise ValueError(f"unknown transform {transform}")
        self.transform, self.scale, self.mean, self.std = transform, float(scale), float(mean), float(std)
        # generated values above the training maximum (+1 std) are clipped on the way back to traffic: a
        # diffusion sample's tail in log space would otherwise explode through expm1
        self.z_max = None if z_max is None else float(z_max)

    @classmethod
    def fit(cls, samples: np.ndarray, transform: str = "log1p") -> "Normaliser":
        s = np.asarray(samples, dtype=np.float64).ravel()
        if s.size == 0 or not np.isfinite(s).all():
            raise StoreError("cannot fit normalisation: empty or non-finite training targets")
        pos = s[s > 0]
        scale = float(np.median(pos)) if pos.size else 1.0
        v = np.log1p(s / scale) if transform == "log1p" else s / scale
        mean, std = float(v.mean()), float(v.std() + 1e-8)
        return cls(transform, scale, mean, std, z_max=float((v.max() - mean) / std) + 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = torch.log1p(x.clamp(min=0) / self.scale) if self.transform == "log1p" else x / self.scale
        return (v - self.mean) / self.std

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        if self.z_max is not None:
            z = z.clamp(max=self.z_max)
        v = z * self.std + self.mean
        x = torch.expm1(v) * self.scale if self.transform == "log1p" else v * self.scale
        return x.clamp(min=0) if self.transform == "log1p" else x

    def state_dict(self) -> dict:
        return {"transform": self.transform, "scale": self.scale, "mean": self.mean, "std": self.std, "z_max": self.z_max}

    @classmethod
    def from_state(cls, d: dict) -> "Normaliser":
        zm = d.get("z_max")
        return cls(str(d["transform"]), float(d["scale"]), float(d["mean"]), float(d["std"]), None if zm is None else float(zm))


def local_units(ids: np.ndarray) -> np.ndarray:
    """Relabel unit ids of a patch as 0..n-1 (order of first appearance is irrelevant)."""
    _, inv = np.unique(ids, return_inverse=True)
    return inv.reshape(ids.shape).astype(np.int64)


class CityArrays:
    """In-memory/lazy access to the hourly levels and context of one city store."""

    def __init__(self, path: str | Path, cache_bytes: int = 1 << 30, require_traffic: bool = True):
        self.path = Path(path)
        ds = open_city(self.path)
        need = ("traffic_grid50", "pixel_cell") if require_traffic else ("pixel_cell", "cell_bs")
        missing = [v for v in need if v not in ds and v not in ds.coords]
        if missing:
            raise StoreError(f"{self.path}: needs {list(missing)} for {'training' if require_traffic else 'context'} windows (a grid store)")
        self.has_traffic = "traffic_grid50" in ds
        self.ds = ds
        self.native = pyramid.time_step_minutes(ds)
        if 60 % self.native:
            raise StoreError(f"{self.path}: native step {self.native} min does not divide one hour")
        self.f = 60 // self.native
        self.H, self.W = ds.sizes["y"], ds.sizes["x"]
        self.T = ds.sizes["time"] // self.f  # whole hours
        self.pixel_cell = np.asarray(ds["pixel_cell"].values)
        self.cell_bs = np.asarray(ds["cell_bs"].values)
        self.pixel_bs = self.cell_bs[self.pixel_cell]
        self.cell_count = np.bincount(self.pixel_cell.ravel(), minlength=ds.sizes["cell"]).astype(np.float32)
        self.bs_count = np.bincount(self.pixel_bs.ravel(), minlength=ds.sizes["bs"]).astype(np.float32)
        self._tables: dict[str, np.ndarray | None] = {}  # unit-level traffic (T, n), read on first use
        times = ds["time"].values[:: self.f][: self.T]
        t = np.asarray(times, dtype="datetime64[h]")
        dow = ((t.astype("datetime64[D]").astype(np.int64) + 3) % 7)  # 1970-01-01 was a Thursday -> Monday = 0
        self.hour_of_week = (dow * 24 + (t - t.astype("datetime64[D]")).astype(np.int64)).astype(np.int64)
        self.aoi = np.asarray(ds["aoi"].values).astype(np.int64) if "aoi" in ds else np.zeros((self.H, self.W), np.int64)
        self.house_road = np.asarray(ds["house_road"].values).astype(np.int64) if "house_road" in ds else np.zeros((self.H, self.W), np.int64)
        self.poi = np.asarray(ds["poi"].values).astype(np.float32, copy=False) if "poi" in ds else np.zeros((1, self.H, self.W), np.float32)
        self.n_aoi = len(ds["aoi"].attrs.get("flag_values", [0])) if "aoi" in ds else 1
        self.n_house_road = len(ds["house_road"].attrs.get("flag_values", [0])) if "house_road" in ds else 1
        self.pop_by = None
        if "population" in ds:
            self.pop_by = ds["population"].dims[0]
        nbytes = self.T * self.f * self.H * self.W * 4
        self.cached = nbytes <= cache_bytes
        if self.cached:
            self.g50 = self._hourly(np.asarray(ds["traffic_grid50"].values)) if self.has_traffic else None
            self.pop = np.asarray(ds["population"].values).astype(np.float32, copy=False) if self.pop_by else None
        else:
            self.g50 = None
            self.pop = None

    def _table(self, lvl: str) -> np.ndarray | None:
        if lvl not in self._tables:
            var = f"traffic_{lvl}"
            self._tables[lvl] = self._hourly(np.asarray(self.ds[var].values)) if var in self.ds else None
        return self._tables[lvl]

    def level_table(self, lvl: str) -> np.ndarray | None:
        """Hourly unit totals of ``traffic_<lvl>`` as stored ((T, n_bs), (T, n_cell), (T, y100, x100)), or None."""
        return self._table(lvl)

    @property
    def cell(self) -> np.ndarray | None:
        return self._table("cell")

    @property
    def bs(self) -> np.ndarray | None:
        return self._table("bs")

    def _hourly(self, a: np.ndarray) -> np.ndarray:
        """Native steps -> hours (sum), trimming a trailing partial hour."""
        a = np.asarray(a, dtype=np.float32)
        if self.f == 1:
            return a
        n = (a.shape[0] // self.f) * self.f
        return a[:n].reshape(n // self.f, self.f, *a.shape[1:]).sum(1, dtype=np.float64).astype(np.float32)

    def level_density(self, lvl: str, w: Window, L: int, P: int, g50: np.ndarray | None = None) -> np.ndarray:
        """(L, P, P) hourly density of spatial level ``lvl`` over window ``w`` (whole-unit densities)."""
        ys, xs = slice(w.y0, w.y0 + P), slice(w.x0, w.x0 + P)
        if lvl in ("grid50", "grid100"):
            if g50 is None:
                if not self.has_traffic:
                    raise StoreError(f"{self.path}: has no traffic_grid50 for level {lvl}")
                g50 = self.grid50(w.t0, L, w.y0, w.x0, P)
            if lvl == "grid50":
                return g50
            blk = pyramid.block_sum(g50) / 4.0
            return np.repeat(np.repeat(blk, 2, axis=1), 2, axis=2)
        table, ids, count = (self.cell, self.pixel_cell[ys, xs], self.cell_count) if lvl == "cell" else (self.bs, self.pixel_bs[ys, xs], self.bs_count)
        if table is None:
            raise StoreError(f"{self.path}: has no traffic_{lvl}")
        return table[w.t0 : w.t0 + L][:, ids] / count[ids]

    def units(self, w: Window, P: int) -> np.ndarray:
        """(4, P, P) local unit ids of the window's pixels per level (LEVEL_ORDER)."""
        ys, xs = slice(w.y0, w.y0 + P), slice(w.x0, w.x0 + P)
        yy, xx = np.meshgrid(np.arange(P) // 2, np.arange(P) // 2, indexing="ij")
        maps = {
            "bs": self.pixel_bs[ys, xs],
            "cell": self.pixel_cell[ys, xs],
            "grid100": yy * P + xx,
            "grid50": np.arange(P * P).reshape(P, P),
        }
        return np.stack([local_units(maps[l]) for l in LEVEL_ORDER])

    def context(self, w: Window, L: int, P: int) -> dict:
        ys, xs = slice(w.y0, w.y0 + P), slice(w.x0, w.x0 + P)
        return {
            "aoi": torch.from_numpy(self.aoi[ys, xs].copy()),
            "house_road": torch.from_numpy(self.house_road[ys, xs].copy()),
            "poi": torch.from_numpy(self.poi[:, ys, xs].copy()),
            "population": torch.from_numpy(np.ascontiguousarray(self.population(w.t0, L, w.y0, w.x0, P))),
        }

    def grid50(self, t0: int, L: int, y0: int, x0: int, P: int) -> np.ndarray:
        if self.cached:
            return self.g50[t0 : t0 + L, y0 : y0 + P, x0 : x0 + P]
        raw = self.ds["traffic_grid50"].isel(time=slice(t0 * self.f, (t0 + L) * self.f), y=slice(y0, y0 + P), x=slice(x0, x0 + P)).values
        return self._hourly(raw)

    def population(self, t0: int, L: int, y0: int, x0: int, P: int) -> np.ndarray:
        if self.pop_by is None:
            return np.zeros((L, P, P), np.float32)
        if self.pop_by == "hour_of_week":
            idx = self.hour_of_week[t0 : t0 + L] % self.ds.sizes["hour_of_week"]
        else:  # population over time at the native step: take the first step of each hour
            idx = np.arange(t0, t0 + L) * self.f
        if self.cached:
            return self.pop[idx][:, y0 : y0 + P, x0 : x0 + P]
        return np.asarray(self.ds["population"].isel({self.pop_by: idx, "y": slice(y0, y0 + P), "x": slice(x0, x0 + P)}).values, dtype=np.float32)


class CityWindows(torch.utils.data.Dataset):
    """Windows of one city store for one split; item = dict (see module docstring and ``__getitem__``)."""

    def __init__(
        self,
        store: str | Path | CityArrays,
        windows: WindowConfig,
        split: str,
        stages: list[tuple[str, str]],
        rank: int = 0,
        world: int = 1,
        cache_bytes: int = 1 << 30,
    ):
        self.arr = store if isinstance(store, CityArrays) else CityArrays(store, cache_bytes=cache_bytes)
        self.cfg = windows
        self.P, self.L = windows.patch, windows.hours
        self.stages = [(str(s), str(r)) for s, r in stages]
        for s, r in self.stages:
            if s not in LEVEL_ORDER or r not in HOURS:
                raise ConfigError(f"unknown stage ({s}, {r}); levels {LEVEL_ORDER}, resolutions {tuple(HOURS)}")
        self.block = max(HOURS[r] for _, r in self.stages)
        if self.L % self.block:
            raise ConfigError(f"data.windows.hours={self.L} must be a multiple of the coarsest time block ({self.block} h)")
        a = self.arr
        if self.P > a.H or self.P > a.W or self.L > a.T:
            raise ConfigError(f"window {self.L} h x {self.P}x{self.P} px does not fit the store ({a.T} h x {a.H}x{a.W})")
        self.windows = [w for i, w in enumerate(self._split_windows(split)) if i % world == rank]
        if not self.windows:
            raise ConfigError(f"split '{split}' has no windows for rank {rank}/{world} (patch {self.P}, test_fraction {windows.test_fraction})")

    def _patches(self, split: str) -> list[tuple[int, int]]:
        a, P = self.arr, self.P
        grid = [(y, x) for y in range(0, a.H - P + 1, P) for x in range(0, a.W - P + 1, P)]
        if self.cfg.split_by == "time":  # every place in every split; the split is along time
            if split not in ("train", "val", "test", "all"):
                raise ConfigError(f"unknown split '{split}' (train, val, test, all)")
            return grid
        if self.cfg.split_by == "band":  # rows of patches from the south edge: test, then val, then train
            order = np.arange(len(grid))
        else:
            order = np.random.default_rng(self.cfg.split_seed).permutation(len(grid))
        n_test = int(round(self.cfg.test_fraction * len(grid)))
        n_val = int(round(self.cfg.val_fraction * len(grid)))
        if self.cfg.test_fraction > 0 and n_test == 0:
            n_test = 1
        parts = {
            "test": order[:n_test],
            "val": order[n_test : n_test + n_val],
            "train": order[n_test + n_val :],
            "all": order,
        }
        if split not in parts:
            raise ConfigError(f"unknown split '{split}' (train, val, test, all)")
        return [grid[i] for i in sorted(parts[split])]

    def time_ranges(self) -> dict[str, tuple[int, int]]:
        """Hour ranges of each split: the whole period, except for split_by=time (train | val | test in order,
        cut at whole days)."""
        T = self.arr.T
        if self.cfg.split_by != "time":
            return {k: (0, T) for k in ("train", "val", "test", "all")}
        days = T // 24
        n_test = max(1, int(round(self.cfg.test_fraction * days))) if self.cfg.test_fraction > 0 else 0
        n_val = int(round(self.cfg.val_fraction * days))
        a, b = (days - n_test - n_val) * 24, (days - n_test) * 24
        return {"train": (0, a), "val": (a, b), "test": (b, T), "all": (0, T)}

    def _split_windows(self, split: str) -> list[Window]:
        stride = self.cfg.time_stride or self.L
        if stride % self.block:
            raise ConfigError(f"data.windows.time_stride={stride} must be a multiple of {self.block} h")
        lo, hi = self.time_ranges()[split] if split in ("train", "val", "test", "all") else (0, 0)
        starts = range(lo, hi - self.L + 1, stride)
        return [Window(t, y, x) for (y, x) in self._patches(split) for t in starts]

    def test_region(self) -> dict:
        """Where the test split lies: {"patches": [(y0, x0), ...], "hours": (t0, t1), "patch": P} (for evaluation)."""
        return {"patches": self._patches("test"), "hours": self.time_ranges()["test"], "patch": self.P}

    def __len__(self) -> int:
        return len(self.windows)

    def data_info(self) -> dict:
        a = self.arr
        return {"patch": self.P, "hours": self.L, "n_poi": int(a.poi.shape[0]), "n_aoi": int(a.n_aoi),
                "n_house_road": int(a.n_house_road), "stages": self.stages, "has_population": a.pop_by is not None}

    def level_density(self, lvl: str, w: Window, g50: np.ndarray | None = None) -> np.ndarray:
        return self.arr.level_density(lvl, w, self.L, self.P, g50)

    def units(self, w: Window) -> np.ndarray:
        return self.arr.units(w, self.P)

    def __getitem__(self, i: int) -> dict:
        w = self.windows[i]
        a, P, L = self.arr, self.P, self.L
        g50 = a.grid50(w.t0, L, w.y0, w.x0, P)
        dens = {}
        targets = []
        for lvl, res in self.stages:
            if lvl not in dens:
                dens[lvl] = self.level_density(lvl, w, g50)
            d = dens[lvl]
            b = HOURS[res]
            if b > 1:
                d = np.repeat(d.reshape(L // b, b, P, P).mean(1), b, axis=0)
            targets.append(d)
        return {
            "targets": torch.from_numpy(np.stack(targets).astype(np.float32)),
            "context": a.context(w, L, P),
            "units": torch.from_numpy(self.units(w)),
            "hour": torch.from_numpy(a.hour_of_week[w.t0 : w.t0 + L].copy()),
            "origin": torch.tensor([w.t0, w.y0, w.x0], dtype=torch.int64),
        }


def fit_normaliser(ds: CityWindows, transform: str = "log1p", max_windows: int = 256, seed: int = 0) -> Normaliser:
    """Fit on finest-level targets of (up to ``max_windows``) training windows only (no test leak)."""
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(ds))[:max_windows]
    a = ds.arr
    vals = [a.grid50(ds.windows[i].t0, ds.L, ds.windows[i].y0, ds.windows[i].x0, ds.P) for i in idx]
    return Normaliser.fit(np.concatenate([v.ravel() for v in vals]), transform)


class ContextWindows(torch.utils.data.Dataset):
    """Windows at given origins with only what generation needs (context, units, hour, origin); the store may
    hold no traffic (zero-shot generation for a new city from its context). With ``coarse=(level, res)`` an
    item also carries "coarse": (L, P, P) the hourly density of that level at that resolution, read from the
    store's ``traffic_<level>`` (for refinement)."""

    def __init__(self, store: str | Path | CityArrays, windows: list, patch: int, hours: int,
                 coarse: tuple[str, str] | None = None, cache_bytes: int = 1 << 30):
        self.arr = store if isinstance(store, CityArrays) else CityArrays(store, cache_bytes=cache_bytes, require_traffic=False)
        self.windows = [Window(int(w.t0), int(w.y0), int(w.x0)) for w in windows]
        self.P, self.L = int(patch), int(hours)
        self.coarse = coarse
        a = self.arr
        for w in self.windows:
            if w.t0 < 0 or w.t0 + self.L > a.T or w.y0 < 0 or w.y0 + self.P > a.H or w.x0 < 0 or w.x0 + self.P > a.W:
                raise ConfigError(f"window {w} ({self.L} h x {self.P}x{self.P}) outside the store ({a.T} h x {a.H}x{a.W})")

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict:
        w, a = self.windows[i], self.arr
        item = {
            "context": a.context(w, self.L, self.P),
            "units": torch.from_numpy(a.units(w, self.P)),
            "hour": torch.from_numpy(a.hour_of_week[w.t0 : w.t0 + self.L].copy()),
            "origin": torch.tensor([w.t0, w.y0, w.x0], dtype=torch.int64),
        }
        if self.coarse is not None:
            lvl, res = self.coarse
            d = a.level_density(lvl, w, self.L, self.P)
            b = HOURS[res]
            if b > 1:
                d = np.repeat(d.reshape(self.L // b, b, self.P, self.P).mean(1), b, axis=0)
            item["coarse"] = torch.from_numpy(np.ascontiguousarray(d, dtype=np.float32))
        return item
