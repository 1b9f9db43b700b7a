"""Generate per-user traffic and trajectories from an exported MSTDiff model (Algorithm 2) into a users group.

``sample_users(export, n_users, seed)`` returns an ``xr.Dataset`` in the layout of a store's ``users`` group
(``traffic (user, time)`` float32 volumes, ``trajectory (user, time)`` int32 BS ids into the root ``bs``
dimension, ``time`` at the training data's step from the training window's start). Either variable is absent
when the model was trained without that modality. Exports of the CSDI-style per-user traffic baseline
(``model.kind = "csdi_users"``, Table I) go through the same functions and give traffic only: ancestral DDPM
over the configured steps (CSDI's sampler), with ``diffusion.clip_x0="data"`` clamping each clean estimate to
[normalised 0, training maximum + 1 std].

``sample_users_to_store(export, context, out)`` checks that the context store is the training city (same
base stations), then writes a users-only city store: the context's BS coordinates and attrs at the root
(``kind="generated"``), the generated users plus the context's KG triples in ``users``. ``write_users_group``
adds (or replaces) the users group of an existing store instead, e.g. one written by the traffic sampler.

Determinism: the same export, ``seed`` and ``batch_size`` give bit-identical output on CPU (``csdi_users``: each
user's noise comes from its own generator, so another ``batch_size`` gives the same output up to float32 rounding,
which batched matrix products may do differently for another batch shape).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr
from tqdm.auto import tqdm

from mobscale.data import schema
from mobscale.data.store import has_group, open_city, open_users, to_zarr, write_city
from mobscale.data.wavelets import BandLayout, TrafficTransform, dwt_matrix, idwt
from mobscale.diffusion.gaussian import GaussianDiffusion
from mobscale.diffusion.mstdiff_process import MSTDiffProcess
from mobscale.errors import CheckpointError, ConfigError, OutputExistsError, StoreError
from mobscale.log import get_logger
from mobscale.model.csdi_users import CSDIUsersDenoiser
from mobscale.model.export import Export, load_export
from mobscale.model.mstdiff import MSTDiffDenoiser, build
from mobscale.model.registry import build_model

log = get_logger(__name__)

#: model kinds that generate a users group (``mobscale sample`` routes their exports here)
USER_MODEL_KINDS = ("mstdiff", "csdi_users")


def _as_numpy(v) -> np.ndarray:
    return v.numpy() if torch.is_tensor(v) else np.asarray(v)


def load_mstdiff(export: Export | str | Path, device: str | torch.device = "cpu") -> tuple[object, MSTDiffDenoiser, MSTDiffProcess, dict]:
    """(run config, denoiser in eval mode, process, normalisation) of an MSTDiff export."""
    ex = export if isinstance(export, Export) else load_export(export)
    if ex.kind != "mstdiff":
        raise CheckpointError(f"export is a '{ex.kind}' model, not mstdiff")
    cfg = ex.config
    norm = ex.normalisation
    info = ex.extra.get("data_info")
    if not info:
        raise CheckpointError("mstdiff export lacks extra['data_info'] (written by MSTDiffTask.export_extra)")
    model = build(cfg, info)
    missing, unexpected = model.load_state_dict(ex.state_dict, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"mstdiff export weights do not fit the network: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.to(device).eval()
    nbr = _as_numpy(norm["neighbours"]) if "neighbours" in norm else None
    rates = _as_numpy(norm["rates"]) if "rates" in norm else None
    process = MSTDiffProcess.from_config(cfg.diffusion, cfg.model, neighbours=nbr, rates=rates)
    if process.trajectory is not None:
        process.trajectory.to(device)
    return cfg, model, process, norm


def sample_users(
    export: Export | str | Path,
    n_users: int,
    seed: int = 0,
    *,
    batch_size: int | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    last_step: str | None = None,
    traffic_clip: str | None = None,
    temperature: float | None = None,
) -> xr.Dataset:
    """Generate ``n_users`` users (one window of ``model.users.seq_len`` steps each) -> users-group Dataset.
    ``last_step`` ("mode" | "sample") overrides the config's ``diffusion.trajectory_last_step``, ``traffic_clip``
    ("none" | "max") its ``diffusion.traffic_clip_x0``, ``temperature`` its ``diffusion.trajectory_temperature``
    (MSTDiff only)."""
    if n_users < 1:
        raise ValueError(f"n_users must be >= 1, got {n_users}")
    ex = export if isinstance(export, Export) else load_export(export)
    if ex.kind == "csdi_users":
        if last_step is not None or traffic_clip is not None or temperature is not None:
            raise ConfigError("last_step, traffic_clip and temperature apply to MSTDiff; a csdi_users export has its own diffusion.clip_x0")
        return _sample_csdi_users(ex, n_users, seed, batch_size=batch_size, device=device, progress=progress)
    cfg, model, process, norm = load_mstdiff(ex, device)
    if last_step is not None:
        if last_step not in ("mode", "sample"):
            raise ValueError(f"last_step must be 'mode' or 'sample', got {last_step!r}")
        process.last_step = last_step
    if temperature is not None:
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        process.temperature = float(temperature)
    m = cfg.model
    T = m.users.seq_len
    layout = BandLayout(T, m.wavelet, m.wavelet_level)
    bs = batch_size or cfg.sample.batch_size
    gen = torch.Generator().manual_seed(int(seed))
    offset = int(norm.get("offset", 0))
    clip = cfg.diffusion.traffic_clip_x0 if traffic_clip is None else traffic_clip
    if clip not in ("none", "max"):
        raise ValueError(f"traffic_clip must be 'none' or 'max', got {clip!r}")
    cap = traffic_cap(clip, norm, layout, device) if m.use_traffic else None
    ws, ls = [], []
    starts = range(0, n_users, bs)
    for i in tqdm(starts, desc="MSTDiff users", disable=not progress, leave=False):
        n = min(bs, n_users - i)
        off = torch.full((n,), offset, dtype=torch.long, device=device)
        w, l = process.sample(model, n, T, offset=off, generator=gen, device=device, traffic_x0=cap)
        if w is not None:
            ws.append(w.cpu().numpy())
        if l is not None:
            ls.append(l.cpu().numpy())
    data = {}
    if ws:
        data["traffic"] = _traffic_var(TrafficTransform.from_state(norm), idwt(np.concatenate(ws), layout), seed)
    if ls:
        vocab = _as_numpy(norm["vocab"]).astype(np.int64)
        data["trajectory"] = (("user", "time"), vocab[np.concatenate(ls)].astype(np.int32), {"long_name": "serving BS index (into root bs)"})
    return _users_dataset(
        data, norm, n_users, T,
        f"generated by MSTDiff (seed {seed}, {process.steps} steps, posterior={process.posterior}, last step={process.last_step}, trajectory temperature={process.temperature:g}, "
        f"traffic clip={clip})",
    )


def traffic_cap(clip: str, norm: dict, layout: BandLayout, device: str | torch.device = "cpu"):
    """The clean-estimate constraint of ``diffusion.traffic_clip_x0="max"`` (None for "none"): band layout -> time
    (the DWT is orthonormal: one matmul), cap at the largest normalised training volume (log1p; user_max: 1), back
    to the band layout. Why: a few clean estimates of the Gaussian chain
    overshoot by orders of magnitude once exponentiated (measured on the synthetic users: 0.01% of generated
    half-hours above 28 000 MB where the training users' 99.99% quantile is 1 061 MB), and those few values set
    the mean user's volume (MSTDiff Table I's periodic RMSE)."""
    if clip == "none":
        return None
    tf = TrafficTransform.from_state(norm)
    hi = float(tf.z_max) if tf.kind == "log1p" else 1.0
    M = torch.as_tensor(dwt_matrix(layout), dtype=torch.float32, device=device)
    return lambda w0: (w0 @ M.T).clamp(max=hi) @ M


def _traffic_var(tf: TrafficTransform, z: np.ndarray, seed: int) -> tuple:
    """Normalised (U, T) -> the users group's ``traffic`` variable (volumes, float32)."""
    vol = tf.inverse(z, rng=np.random.default_rng(seed))
    return (("user", "time"), vol.astype(np.float32), {"units": "MB", "long_name": "generated traffic per user per step"})


def _users_dataset(data: dict, norm: dict, n_users: int, T: int, provenance: str) -> xr.Dataset:
    """The users-group Dataset on the training data's time axis (``norm["start"]``, ``norm["step_minutes"]``)."""
    step = int(norm["step_minutes"])
    times = pd.date_range(pd.Timestamp(str(norm["start"])), periods=T, freq=f"{step}min")
    return xr.Dataset(
        data,
        coords={"user": np.arange(n_users, dtype=np.int32), "time": times.values.astype("datetime64[ns]")},
        attrs={"provenance": provenance, "time_step_minutes": step, "kind": "generated"},
    )


def load_csdi_users(export: Export | str | Path, device: str | torch.device = "cpu") -> tuple[object, CSDIUsersDenoiser, GaussianDiffusion, dict]:
    """(run config, denoiser in eval mode, DDPM process, normalisation) of a ``csdi_users`` export."""
    ex = export if isinstance(export, Export) else load_export(export)
    if ex.kind != "csdi_users":
        raise CheckpointError(f"export is a '{ex.kind}' model, not csdi_users")
    info = ex.extra.get("data_info")
    if not info:
        raise CheckpointError("csdi_users export lacks extra['data_info'] (written by CSDIUsersTask.export_extra)")
    cfg = ex.config
    model = build_model(cfg, info)
    missing, unexpected = model.load_state_dict(ex.state_dict, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"csdi_users export weights do not fit the network: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return cfg, model.to(device).eval(), GaussianDiffusion(cfg.diffusion), ex.normalisation


def x0_range(tf: TrafficTransform) -> tuple[float, float]:
    """What a normalised clean value can be (``diffusion.clip_x0="data"``): log1p: [forward(0), training maximum
    + 1 std], the range the inverse transform keeps (it caps one std above the maximum); user_max: [-1, 1]."""
    if tf.kind == "log1p":
        return float(tf.forward(np.zeros((1, 1)))[0, 0]), float(tf.z_max) + 1.0
    return -1.0, 1.0


def _user_generators(seed: int, first: int, n: int) -> list[torch.Generator]:
    """One generator per user, seeded from (seed, user index): a user's draw is independent of the batching."""
    return [torch.Generator().manual_seed(int(np.random.SeedSequence([int(seed), first + i]).generate_state(1)[0])) for i in range(n)]


def _sample_csdi_users(ex: Export, n_users: int, seed: int, *, batch_size: int | None, device, progress: bool) -> xr.Dataset:
    """Traffic-only users from a ``csdi_users`` export (ancestral DDPM, CSDI's sampler)."""
    cfg, model, diffusion, norm = load_csdi_users(ex, device)
    T = int(model.seq_len)
    tf = TrafficTransform.from_state(norm)
    clean_range = x0_range(tf)
    bs = batch_size or cfg.sample.batch_size
    offset = int(norm.get("offset", 0))
    zs = []
    for i in tqdm(range(0, n_users, bs), desc="CSDI users", disable=not progress, leave=False):
        n = min(bs, n_users - i)
        cond = {"offset": torch.full((n,), offset, dtype=torch.long, device=device)}
        z = diffusion.sample(model, cond, (n, T), generator=_user_generators(seed, i, n), device=device, x0_range=clean_range)
        zs.append(z.cpu().numpy())
    data = {"traffic": _traffic_var(tf, np.concatenate(zs).astype(np.float64), seed)}
    clip = cfg.diffusion.clip_x0
    return _users_dataset(data, norm, n_users, T, f"generated by the CSDI-style users baseline (seed {seed}, {diffusion.T} ancestral steps, clip_x0={clip})")


def check_context(norm: dict, root: xr.Dataset, context: Path) -> None:
    """StoreError unless ``root`` (opened from ``context``) has the training city's base stations: the same
    count, and the model's locations at the same positions within 1 m."""
    n_bs = int(norm["n_bs"])
    if root.sizes.get("bs", 0) != n_bs:
        raise StoreError(f"{context}: has {root.sizes.get('bs')} base stations, the model was trained on a city with {n_bs}")
    if "loc_xy_km" in norm and "bs_y" in root.variables and "bs_x" in root.variables:
        vocab = _as_numpy(norm["vocab"]).astype(np.int64)
        xy = np.column_stack([root["bs_y"].values, root["bs_x"].values]).astype(np.float64)[vocab] / 1000.0
        d = float(np.abs(xy - _as_numpy(norm["loc_xy_km"])).max())
        if d > 1e-3:
            raise StoreError(f"{context}: base stations differ from the training city's (max offset {d * 1000:.1f} m); sample with the training city as --context")


def _users_group(gen: xr.Dataset, context: Path) -> xr.Dataset:
    """Generated users + the context's KG triples (same city, same graph)."""
    out = gen
    if has_group(context, schema.USERS_GROUP):
        cu = open_users(context)
        kg = [v for v in ("kg_head", "kg_relation", "kg_tail") if v in cu]
        if len(kg) == 3:
            out = gen.assign({v: (("triple",), np.asarray([str(s) for s in cu[v].values], dtype=object)) for v in kg})
    return out


def sample_users_to_store(
    export: Export | str | Path,
    context: str | Path,
    out: str | Path,
    *,
    n_users: int | None = None,
    seed: int | None = None,
    batch_size: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Generate users (MSTDiff or csdi_users export) and write a users-only city store at ``out`` (see module
    docstring). ``n_users`` defaults to the context's user count, else the number of training users."""
    context, out = Path(context), Path(out)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out}: already exists (pass --overwrite to replace it)")
    ex = export if isinstance(export, Export) else load_export(export)
    if ex.kind not in USER_MODEL_KINDS:
        raise CheckpointError(f"export is a '{ex.kind}' model; users are generated by {', '.join(USER_MODEL_KINDS)} exports")
    root = open_city(context)
    check_context(ex.normalisation, root, context)
    if n_users is None:
        n_users = open_users(context).sizes["user"] if has_group(context, schema.USERS_GROUP) else int(ex.normalisation["n_train_users"])
    seed = ex.config.sample.seed if seed is None else seed
    gen = sample_users(ex, n_users, seed, batch_size=batch_size, progress=progress)
    keep = [v for v in root.variables if root[v].dims == ("bs",) or v == "bs"]
    base = root[[v for v in keep if v in root.data_vars]] if any(v in root.data_vars for v in keep) else xr.Dataset()
    base = base.assign_coords({c: root[c] for c in keep if c in root.coords}).load()
    attrs = {k: v for k, v in root.attrs.items() if k != "levels_present"}
    attrs.update(
        {
            "kind": "generated",
            "levels_present": json.dumps([]),
            "provenance": f"{ex.kind} users from {Path(str(ex.extra.get('source_run', 'export')))}; context {context}",
        }
    )
    base.attrs = attrs
    write_city(base, out, users=_users_group(gen, context), overwrite=overwrite)
    log.info("wrote %d generated users (%s) to %s/users", n_users, ", ".join(gen.data_vars), out)
    return out


def write_users_group(users: xr.Dataset, store: str | Path, *, overwrite: bool = False) -> Path:
    """Add ``users`` as the users group of the existing ``store`` (written to a temporary group, then renamed
    into place, so a failure never leaves a half-written group)."""
    store = Path(store)
    open_city(store)  # StoreError when it is not a store
    target = store / schema.USERS_GROUP
    if target.exists() and not overwrite:
        raise OutputExistsError(f"{store}: already has a users group (pass overwrite=True to replace it)")
    tmp_name = f".{schema.USERS_GROUP}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        to_zarr(users, store, group=tmp_name, mode="w-")
    except BaseException:
        shutil.rmtree(store / tmp_name, ignore_errors=True)
        raise
    if target.exists():
        old = store / f".{schema.USERS_GROUP}.old-{uuid.uuid4().hex[:8]}"
        os.replace(target, old)
        os.replace(store / tmp_name, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(store / tmp_name, target)
    return target
