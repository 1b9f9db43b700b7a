"""Pictures of a city store (``mobscale data plot``): maps per level and context layer, series per level."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import BoundaryNorm, ListedColormap, LogNorm  # noqa: E402

from mobscale.data import pyramid, schema  # noqa: E402
from mobscale.data.store import has_group, open_city, open_users  # noqa: E402
from mobscale.data.validate import levels_present  # noqa: E402
from mobscale.log import get_logger  # noqa: E402

log = get_logger(__name__)

AOI_COLOURS = ["#f4d35e", "#ee964b", "#f95738", "#8d99ae", "#5e60ce", "#57cc99", "#6c757d", "#4ea8de"]
HR_COLOURS = ["#e9f5db", "#cfe1b9", "#97a97c", "#718355", "#adb5bd", "#343a40", "#4ea8de"]


def _extent(ds):
    y, x = ds["y"].values, ds["x"].values
    h = schema.PIXEL_SIZE_M / 2
    return [(x[0] - h) / 1000, (x[-1] + h) / 1000, (y[0] - h) / 1000, (y[-1] + h) / 1000]


def _categorical(ax, ds, name, colours):
    da = ds[name]
    names = da.attrs.get("flag_meanings", "").split()
    k = len(names)
    cmap = ListedColormap(colours[:k])
    im = ax.imshow(np.asarray(da.values), origin="lower", extent=_extent(ds), cmap=cmap, norm=BoundaryNorm(np.arange(-0.5, k), k), interpolation="nearest")
    cb = plt.colorbar(im, ax=ax, ticks=range(k), fraction=0.046)
    cb.ax.set_yticklabels(names, fontsize=7)
    ax.set_title(da.attrs.get("long_name", name))


def plot_store(path: str | Path, out: str | Path) -> list[Path]:
    """Write PNGs into ``out``; returns their paths."""
    path, out = Path(path), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ds = open_city(path)
    files: list[Path] = []
    city = ds.attrs.get("city", path.stem)
    present = levels_present(ds)
    grid = "traffic_grid50" in ds
    if grid:
        # 1. mean density of every level on the 50 m grid (log colour scale shared by all levels)
        dens = {lvl: pyramid.density(ds, lvl).mean("time").compute().values for lvl in schema.SPATIAL_LEVELS}
        pos = np.concatenate([d[d > 0] for d in dens.values()])
        norm = LogNorm(vmin=max(float(np.percentile(pos, 1)), 1e-6), vmax=float(pos.max())) if pos.size else None
        fig, axes = plt.subplots(1, 4, figsize=(18, 4.6), constrained_layout=True)
        for ax, lvl in zip(axes, schema.SPATIAL_LEVELS):
            im = ax.imshow(np.where(dens[lvl] > 0, dens[lvl], np.nan), origin="lower", extent=_extent(ds), cmap="magma", norm=norm, interpolation="nearest")
            ax.set_title(f"{lvl}: mean density")
            ax.set_xlabel("km east")
        axes[0].set_ylabel("km north")
        fig.colorbar(im, ax=axes, label="MB per 50 m pixel per step (time mean)", fraction=0.02)
        fig.suptitle(f"{city}: traffic at every level, projected onto the 50 m grid")
        files.append(out / "levels_density.png")
        fig.savefig(files[-1], dpi=110)
        plt.close(fig)
        # 2. network layout: cells coloured, BS markers
        fig, ax = plt.subplots(figsize=(7, 6.2), constrained_layout=True)
        pc = np.asarray(ds["pixel_cell"].values)
        rng = np.random.default_rng(0)
        ax.imshow(rng.permutation(pc.max() + 1)[pc], origin="lower", extent=_extent(ds), cmap="tab20", interpolation="nearest", alpha=0.75)
        ax.scatter(ds["bs_x"].values / 1000, ds["bs_y"].values / 1000, s=8, c="k", marker="^", label="BS")
        ax.set_title(f"{city}: {ds.sizes['bs']} BS, {ds.sizes['cell']} cells (colours = cells)")
        ax.legend(loc="upper right")
        files.append(out / "network.png")
        fig.savefig(files[-1], dpi=110)
        plt.close(fig)
    # 3. context layers
    ctx = [v for v in ("aoi", "house_road", "poi", "population") if v in ds]
    if ctx:
        fig, axes = plt.subplots(1, len(ctx), figsize=(5.2 * len(ctx), 4.6), constrained_layout=True, squeeze=False)
        for ax, name in zip(axes[0], ctx):
            if name == "aoi":
                _categorical(ax, ds, name, AOI_COLOURS)
            elif name == "house_road":
                _categorical(ax, ds, name, HR_COLOURS)
            elif name == "poi":
                tot = ds["poi"].sum("poi_category").values
                im = ax.imshow(tot, origin="lower", extent=_extent(ds), cmap="viridis", interpolation="nearest")
                plt.colorbar(im, ax=ax, fraction=0.046, label="POIs per pixel")
                ax.set_title(f"POI count ({ds.sizes['poi_category']} categories)")
            else:
                p = ds["population"]
                p = p.mean(p.dims[0]).values
                im = ax.imshow(p, origin="lower", extent=_extent(ds), cmap="cividis", interpolation="nearest")
                plt.colorbar(im, ax=ax, fraction=0.046, label="people (mean over time)")
                ax.set_title("population")
        files.append(out / "context.png")
        fig.savefig(files[-1], dpi=110)
        plt.close(fig)
    # 4. time series per level: one BS and its children, plus the city total at 1h/4h/1d
    if present:
        step = int(ds.attrs["time_step_minutes"])
        fig, axes = plt.subplots(2, 1, figsize=(13, 7), constrained_layout=True)
        tot = ds[schema.TRAFFIC_VAR[present[0]]].sum([d for d in ds[schema.TRAFFIC_VAR[present[0]]].dims if d != "time"])
        for res in [r for r in ("1h", "4h", "1d") if schema.TEMPORAL_RESOLUTIONS[r] % step == 0 and schema.TEMPORAL_RESOLUTIONS[r] >= step]:
            s = pyramid.temporal(tot, res, step) / (schema.TEMPORAL_RESOLUTIONS[res] // step)
            axes[0].step(s["time"].values, s.values, where="post", label=f"{res} (per-step mean)")
        axes[0].set_title(f"{city}: city total per {step}-min step at several temporal resolutions")
        axes[0].legend()
        if grid:
            bs_tot = ds["traffic_bs"].sum("time").values
            b = int(np.argsort(bs_tot)[len(bs_tot) // 2 + len(bs_tot) // 4])  # a busy-ish, not extreme BS
            cells = np.nonzero(ds["cell_bs"].values == b)[0]
            pc = np.asarray(ds["pixel_cell"].values)
            yy, xx = np.nonzero(pc == cells[0])
            j = len(yy) // 2
            series = {
                f"bs {b}": ds["traffic_bs"].isel(bs=b),
                f"cell {int(cells[0])} (of bs {b})": ds["traffic_cell"].isel(cell=int(cells[0])),
                f"grid100 ({yy[j] // 2},{xx[j] // 2})": ds["traffic_grid100"].isel(y100=int(yy[j] // 2), x100=int(xx[j] // 2)),
                f"grid50 ({yy[j]},{xx[j]})": ds["traffic_grid50"].isel(y=int(yy[j]), x=int(xx[j])),
            }
            for name, s in series.items():
                axes[1].plot(s["time"].values, s.values, lw=1, label=name)
            axes[1].set_yscale("log")
            axes[1].set_title("one BS and, nested inside it, a cell, a 100 m and a 50 m pixel")
            axes[1].legend(fontsize=8)
        else:
            axes[1].set_visible(False)
        files.append(out / "timeseries.png")
        fig.savefig(files[-1], dpi=110)
        plt.close(fig)
    # 5. users
    if has_group(path, schema.USERS_GROUP):
        u = open_users(path)
        n_panels = int("traffic" in u) + int("trajectory" in u and "bs_x" in ds.coords)
        if n_panels:
            fig, axes = plt.subplots(1, n_panels, figsize=(7 * n_panels, 5.5), constrained_layout=True, squeeze=False)
            k = 0
            if "traffic" in u:
                tr = np.asarray(u["traffic"].values[: min(60, u.sizes["user"])])
                im = axes[0][k].imshow(np.log1p(tr), aspect="auto", cmap="magma", interpolation="nearest")
                plt.colorbar(im, ax=axes[0][k], label="log1p(MB)")
                axes[0][k].set_title("per-user traffic (first users x half-hours)")
                axes[0][k].set_xlabel("half-hour")
                axes[0][k].set_ylabel("user")
                k += 1
            if "trajectory" in u and "bs_x" in ds.coords:
                ax = axes[0][k]
                bx, by = ds["bs_x"].values / 1000, ds["bs_y"].values / 1000
                ax.scatter(bx, by, s=4, c="lightgrey")
                traj = np.asarray(u["trajectory"].values)
                for i in range(min(5, traj.shape[0])):
                    t = traj[i, : 48 * 2]
                    ax.plot(bx[t], by[t], "-o", ms=3, lw=1, label=f"user {i}")
                ax.set_title("trajectories over BS (first 2 days)")
                ax.legend(fontsize=7)
            files.append(out / "users.png")
            fig.savefig(files[-1], dpi=110)
            plt.close(fig)
    log.info("wrote %d figures to %s", len(files), out)
    return files
