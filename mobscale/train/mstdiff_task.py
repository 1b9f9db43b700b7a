"""Training task of MSTDiff (mobscale.train.task.Task; ``model.kind = "mstdiff"``).

``prepare(run_dir)`` (driver, once; reused on resume):

1. open the configured store (or synthesize ``data.synth`` into ``RUN/data/city.zarr``) and its ``users``
   group; cut every user's series into non-overlapping windows of ``model.users.seq_len`` steps; split
   USERS (not windows) into train / test with ``model.users.split_seed``;
2. trajectory state space: the BS visited by training users (``locations="visited"``) or every BS;
3. traffic: fit the :class:`~mobscale.data.wavelets.TrafficTransform` on the training users only, then
   the level-L DWT of every window (band layout);
4. urban KG: TuckER on the store's ``kg_*`` triples (pykeen), the BS embeddings, the top-K neighbours within
   ``kg_max_distance_km`` (eq. 10); without triples (real trajectory-only stores) the neighbours are the
   geographic ones and a warning says so; the trajectory chain's rates are resolved (auto scale);
5. pretrain the wavelet VQ-VAE on the training coefficients (eq. 9);
6. write ``RUN/mstdiff_data.pt`` (tensors + a JSON string; loads with ``weights_only=True``).

Workers: ``setup`` reads that file and builds the joint process; ``build_model`` builds the denoiser with
the pretrained VQ-VAE loaded and (by default) frozen; ``trainable_parameters`` leaves it out of the
optimizer; ``loss`` is :meth:`MSTDiffProcess.training_losses`. Batches are dicts: ``w0`` (B, T) float32
coefficients, ``l0`` (B, T) long location indices, ``offset`` (B,) long time-of-week step of the window start.

Export: ``normalisation()`` holds what sampling needs besides the weights (traffic transform, location
vocabulary -> BS ids, neighbour table, resolved trajectory rates, BS coordinates, time axis);
``export_extra()["data_info"]`` shapes the network (:func:`mobscale.model.mstdiff.build`).

:class:`CSDIUsersTask` (``model.kind = "csdi_users"``, Table I's single-resolution traffic baseline) shares
steps 1 and 3 (:func:`split_user_windows`, the same ``model.users`` settings give the same held-out users, and
the same :class:`~mobscale.data.wavelets.TrafficTransform` fitted on the training users), skips the wavelets,
KG and VQ-VAE, and trains a CSDI-style denoiser (:mod:`mobscale.model.csdi_users`) with plain DDPM
(:class:`~mobscale.diffusion.gaussian.GaussianDiffusion`) on the normalised series. Batches: ``x0`` (B, T)
float32 normalised traffic, ``offset`` (B,) long. Prepared data: ``RUN/csdi_users_data.pt``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mobscale.data import schema
from mobscale.data.store import is_store, open_city, open_users
from mobscale.data.wavelets import BandLayout, TrafficTransform, dwt
from mobscale.diffusion.gaussian import GaussianDiffusion
from mobscale.diffusion.mstdiff_process import MSTDiffProcess
from mobscale.errors import CheckpointError, ConfigError, InputDataError, StoreError
from mobscale.log import get_logger
from mobscale.model.csdi_users import build as build_csdi_users
from mobscale.model.kg_embed import bs_embeddings, knn_neighbours, train_tucker
from mobscale.model.mstdiff import build
from mobscale.model.vqvae import WaveletVQVAE, pretrain_vqvae

log = get_logger(__name__)

DATA_FILE = "mstdiff_data.pt"
CSDI_USERS_DATA_FILE = "csdi_users_data.pt"


# ----------------------------------------------------------------------------------------------- data


def coord_fourier(xy_km: np.ndarray, shortest_km: float = 0.5, longest_km: float = 512.0) -> np.ndarray:
    """(N, 4 * S) sin/cos of planar coordinates (km) at S wavelengths doubling from ``shortest_km`` to ``longest_km``:
    fixed location features that separate places 0.5 km apart and still order places hundreds of km apart (a
    NeRF-style positional encoding; one linear scale cannot do both over a country-wide span)."""
    waves = shortest_km * 2.0 ** np.arange(int(round(np.log2(longest_km / shortest_km))) + 1)
    ang = 2 * np.pi * (xy_km - np.median(xy_km, axis=0))[:, :, None] / waves  # (N, 2, S)
    return np.concatenate([np.sin(ang), np.cos(ang)], axis=1).reshape(len(xy_km), -1)


def bs_coords_km(root) -> np.ndarray:
    """(B, 2) planar BS coordinates (y, x) in km from the root ``bs_y``/``bs_x`` (metres), else from
    ``bs_lat``/``bs_lon`` by the local equirectangular projection."""
    if "bs_y" in root.variables and "bs_x" in root.variables:
        return np.column_stack([np.asarray(root["bs_y"].values, np.float64), np.asarray(root["bs_x"].values, np.float64)]) / 1000.0
    if "bs_lat" in root.variables and "bs_lon" in root.variables:
        lat, lon = np.asarray(root["bs_lat"].values, np.float64), np.asarray(root["bs_lon"].values, np.float64)
        y, x = schema.latlon_to_metres(lat, lon, float(lat.min()), float(lon.min()))
        return np.column_stack([y, x]) / 1000.0
    raise StoreError("store root has neither bs_x/bs_y nor bs_lat/bs_lon: cannot place base stations (needed for trajectory neighbours)")


@dataclass
class UserWindows:
    """Windows of the users group. Arrays: traffic (n, T) float32 volumes or None; trajectory (n, T) int64
    BS ids or None; user (n,) source user index; start (n,) datetime64 of the window start."""

    traffic: np.ndarray | None
    trajectory: np.ndarray | None
    user: np.ndarray
    start: np.ndarray
    step_minutes: int

    @property
    def n(self) -> int:
        return int(self.user.size)

    def offsets(self) -> np.ndarray:
        """(n,) time-of-week step of each window start."""
        ts = pd.DatetimeIndex(self.start)
        minutes = ts.day_of_week.to_numpy() * 1440 + ts.hour.to_numpy() * 60 + ts.minute.to_numpy()
        return (minutes // self.step_minutes).astype(np.int64)

    def take(self, idx: np.ndarray) -> "UserWindows":
        return UserWindows(
            None if self.traffic is None else self.traffic[idx],
            None if self.trajectory is None else self.trajectory[idx],
            self.user[idx], self.start[idx], self.step_minutes,
        )


def load_user_windows(store: str | Path, seq_len: int, *, traffic: bool, trajectory: bool) -> UserWindows:
    """Cut the users group of ``store`` into windows of ``seq_len`` steps (the remainder is dropped)."""
    users = open_users(store)
    n_bs = open_city(store).sizes.get("bs")
    U, Tu = users.sizes.get("user", 0), users.sizes.get("time", 0)
    if U == 0 or Tu == 0:
        raise StoreError(f"{store}/users: empty (user={U}, time={Tu})")
    if Tu < seq_len:
        raise ConfigError(f"{store}/users: {Tu} time steps, fewer than model.users.seq_len={seq_len}")
    nw = Tu // seq_len
    if Tu % seq_len:
        log.info("%s/users: %d steps -> %d windows of %d per user (last %d steps dropped)", store, Tu, nw, seq_len, Tu % seq_len)
    times = np.asarray(users["time"].values)
    step = int(users.attrs.get("time_step_minutes", 0) or 0)
    if not step:
        step = int(round((times[1] - times[0]) / np.timedelta64(1, "m"))) if Tu > 1 else schema.USER_STEP_MINUTES

    def cut(a: np.ndarray) -> np.ndarray:
        return a[:, : nw * seq_len].reshape(U * nw, seq_len)

    tr = tj = None
    if traffic:
        if "traffic" not in users:
            raise ConfigError(f"{store}/users has no 'traffic' (trajectory-only data): set model.use_traffic=false")
        tr = cut(np.asarray(users["traffic"].values, dtype=np.float32))
        bad = ~np.isfinite(tr)
        if bad.any():
            u, t = np.argwhere(bad)[0]
            raise InputDataError(f"{store}/users/traffic: {int(bad.sum())} non-finite values (first at window {u}, step {t})")
    if trajectory:
        if "trajectory" not in users:
            raise ConfigError(f"{store}/users has no 'trajectory': set model.use_trajectory=false")
        tj = cut(np.asarray(users["trajectory"].values).astype(np.int64))
        bad = (tj < 0) | (n_bs is not None and tj >= n_bs)
        if bad.any():
            u, t = np.argwhere(bad)[0]
            raise InputDataError(
                f"{store}/users/trajectory: {int(bad.sum())} ids outside the root bs dimension [0, {n_bs}) "
                f"(first: window {u}, step {t}, value {tj[u, t]})"
            )
    user = np.repeat(np.arange(U), nw)
    start = np.tile(times[np.arange(nw) * seq_len], U)
    return UserWindows(tr, tj, user, start, step)


def split_users(n_users: int, test_fraction: float, seed: int, max_users: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(train user ids, test user ids), disjoint, from one seeded permutation."""
    perm = np.random.default_rng(seed).permutation(n_users)
    if max_users is not None:
        perm = perm[:max_users]
    n_test = int(round(test_fraction * perm.size))
    if test_fraction > 0 and perm.size > 1:
        n_test = max(n_test, 1)
    if n_test >= perm.size:
        raise ConfigError(f"model.users.test_fraction={test_fraction} leaves no training users out of {perm.size}")
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


@dataclass
class UserSplit:
    """Windows of the training and the held-out users (disjoint user sets), and the user ids of each."""

    train: UserWindows
    test: UserWindows
    n_users: int
    train_users: np.ndarray
    test_users: np.ndarray


def split_user_windows(store: str | Path, users_cfg, *, traffic: bool, trajectory: bool) -> UserSplit:
    """Cut the users group of ``store`` into windows (:func:`load_user_windows`) and split them by user
    (:func:`split_users` with ``users_cfg``: a ``MSTDiffUsersConfig``). Every task that takes the same
    ``model.users`` settings gets the same held-out users."""
    win = load_user_windows(store, users_cfg.seq_len, traffic=traffic, trajectory=trajectory)
    n_users = int(win.user.max()) + 1
    tr_users, te_users = split_users(n_users, users_cfg.test_fraction, users_cfg.split_seed, users_cfg.max_users)
    return UserSplit(win.take(np.isin(win.user, tr_users)), win.take(np.isin(win.user, te_users)), n_users, tr_users, te_users)


def synthesize_if_needed(cfg, store: Path) -> None:
    """Write the synthetic city ``cfg.data.synth`` to ``store`` when the run has no ``data.store`` and it is absent."""
    if cfg.data.store is None and not is_store(store):
        from mobscale.data.synthetic import synth_city

        log.info("synthesizing city '%s' into %s", cfg.data.synth.city, store)
        store.parent.mkdir(parents=True, exist_ok=True)
        synth_city(cfg.data.synth, store)


def read_prepared(path: Path) -> dict:
    """A prepared-data file (tensors + strings), loaded with ``weights_only=True``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; Task.prepare(run_dir) must run before setup") from None
    except Exception as e:  # torch raises pickle/zip errors of many types for damaged files
        raise CheckpointError(f"{path}: cannot be read ({type(e).__name__}: {e})") from None


def write_prepared(path: Path, state: dict) -> None:
    """Write a prepared-data file atomically (temporary name, then rename); creates the run folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    tmp.replace(path)


class _Windows(torch.utils.data.Dataset):
    """Map-style dataset of prepared windows; item i is a pure function of i."""

    def __init__(self, w0: torch.Tensor | None, l0: torch.Tensor | None, offset: torch.Tensor):
        self.w0, self.l0, self.offset = w0, l0, offset

    def __len__(self) -> int:
        return int(self.offset.numel())

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = {"offset": self.offset[i]}
        if self.w0 is not None:
            item["w0"] = self.w0[i]
        if self.l0 is not None:
            item["l0"] = self.l0[i]
        return item


# ----------------------------------------------------------------------------------------------- task


class MSTDiffTask:
    """The Task of ``model.kind = "mstdiff"`` (see module docstring)."""

    def __init__(self, cfg):
        if cfg.model.kind != "mstdiff":
            raise ConfigError(f"MSTDiffTask needs model.kind=mstdiff, got {cfg.model.kind}")
        self.cfg = cfg
        self.state: dict[str, Any] | None = None
        self.meta: dict[str, Any] | None = None
        self.process: MSTDiffProcess | None = None

    @property
    def layout(self) -> BandLayout:
        m = self.cfg.model
        return BandLayout(m.users.seq_len, m.wavelet, m.wavelet_level)

    def store_path(self, run_dir: Path) -> Path:
        """The configured store, or RUN/data/city.zarr for the synthetic city."""
        return Path(self.cfg.data.store) if self.cfg.data.store is not None else Path(run_dir) / "data" / "city.zarr"

    # ------------------------------------------------------------------ driver side
    def prepare(self, run_dir: Path) -> None:
        run_dir = Path(run_dir)
        path = run_dir / DATA_FILE
        store = self.store_path(run_dir)
        synthesize_if_needed(self.cfg, store)
        if path.exists():
            meta = json.loads(self._read(path)["meta_json"])
            if meta["store"] != str(store.resolve()) or meta["fingerprint"] != self.fingerprint():
                raise CheckpointError(f"{path}: prepared for another store or data/model settings ({meta['store']}); use a new run folder")
            log.info("reusing the prepared MSTDiff data of %s", path)
            return
        write_prepared(path, self._prepare_arrays(store))

    def fingerprint(self) -> str:
        """Settings that change the prepared data (a resumed run must match them)."""
        m, d = self.cfg.model, self.cfg.diffusion
        keys = {
            "users": m.users.model_dump(mode="json"), "wavelet": m.wavelet, "level": m.wavelet_level, "use_traffic": m.use_traffic,
            "use_trajectory": m.use_trajectory, "kg": [m.kg_neighbours, m.kg_max_distance_km, m.kg_dim, m.kg_relation_dim, m.kg_epochs, m.kg_lr],
            "vq": [m.vq_hidden, m.code_dim, m.codebook_size, m.commitment, m.vq_pretrain_steps, m.vq_lr, m.vq_batch_size],
            "rates": [d.steps, d.rate_start, d.rate_end, d.rate_scale, d.teleport, d.uniform_tol], "seed": self.cfg.seed,
        }
        return json.dumps(keys, sort_keys=True)

    def _prepare_arrays(self, store: Path) -> dict:
        m, uc = self.cfg.model, self.cfg.model.users
        layout = self.layout
        sp = split_user_windows(store, uc, traffic=m.use_traffic, trajectory=m.use_trajectory)
        train, test, n_users, tr_users, te_users = sp.train, sp.test, sp.n_users, sp.train_users, sp.test_users
        log.info("MSTDiff data: %s, %d users (%d train / %d test), %d train windows of %d steps", store, n_users, tr_users.size, te_users.size, train.n, uc.seq_len)
        root = open_city(store)
        n_bs = int(root.sizes.get("bs", 0))
        if m.use_trajectory and n_bs == 0:
            raise StoreError(f"{store}: the root has no 'bs' dimension; trajectories index base stations")
        state: dict[str, Any] = {"offset_train": torch.as_tensor(train.offsets()), "offset_test": torch.as_tensor(test.offsets())}
        meta: dict[str, Any] = {
            "store": str(store.resolve()), "fingerprint": self.fingerprint(), "n_users": n_users,
            "n_train_users": int(tr_users.size), "n_test_users": int(te_users.size), "step_minutes": train.step_minutes,
            "start": str(pd.Timestamp(train.start[0])), "n_bs": n_bs, "city": str(root.attrs.get("city", "")),
        }
        # traffic: transform fitted on training users only, then the DWT
        if m.use_traffic:
            tf = TrafficTransform.fit(train.traffic, uc.traffic_transform, uc.zero_gap)
            state["traffic_state"] = {k: (torch.as_tensor(v) if isinstance(v, np.ndarray) else v) for k, v in tf.state().items()}
            state["w_train"] = torch.as_tensor(dwt(tf.forward(train.traffic), layout), dtype=torch.float32)
            state["w_test"] = torch.as_tensor(dwt(tf.forward(test.traffic), layout), dtype=torch.float32) if test.n else torch.zeros(0, uc.seq_len)
            state["traffic_test"] = torch.as_tensor(test.traffic) if test.n else torch.zeros(0, uc.seq_len)
            # the training volumes as read (evaluation references); inverting w_train would turn zeros into
            # float32 round-off (~1e-7 MB), which the volume histograms do not read as zero
            state["traffic_train"] = torch.as_tensor(train.traffic)
            vq = WaveletVQVAE(layout.lengths, hidden=m.vq_hidden, code_dim=m.code_dim, codebook_size=m.codebook_size, commitment=m.commitment)
            losses = pretrain_vqvae(vq, state["w_train"], steps=m.vq_pretrain_steps, batch_size=m.vq_batch_size, lr=m.vq_lr, seed=self.cfg.seed)
            state["vq_state"] = {k: v.detach().clone() for k, v in vq.state_dict().items()}
            meta["vq_loss"] = [losses[0], losses[-1]] if losses else None
        # trajectory: state space, KG embeddings, neighbours, resolved rates
        if m.use_trajectory:
            coords = bs_coords_km(root)
            vocab = np.unique(train.trajectory) if uc.locations == "visited" else np.arange(n_bs)
            if vocab.size < 2:
                raise InputDataError(f"{store}/users/trajectory: training users visit {vocab.size} location(s); need at least 2")
            lookup = np.full(n_bs, -1, dtype=np.int64)
            lookup[vocab] = np.arange(vocab.size)
            users = open_users(store)
            if all(k in users for k in ("kg_head", "kg_relation", "kg_tail")) and users.sizes.get("triple", 0) > 0:
                ent, emb, kg_losses = train_tucker(
                    users["kg_head"].values, users["kg_relation"].values, users["kg_tail"].values,
                    dim=m.kg_dim, relation_dim=m.kg_relation_dim, epochs=m.kg_epochs, lr=m.kg_lr, seed=self.cfg.seed,
                )
                feats, found = bs_embeddings(ent, emb, vocab)
                graph_feats = feats
                if not found.all():
                    log.warning("KG: %d of %d locations have no 'bs:<id>' entity; they get the mean embedding", int((~found).sum()), vocab.size)
                meta["kg"] = {"triples": int(users.sizes["triple"]), "loss": [kg_losses[0], kg_losses[-1]] if kg_losses else None, "missing": int((~found).sum())}
            else:
                log.warning("%s/users has no KG triples: neighbours are the geographic ones (embedding = BS coordinates)", store)
                # The network adds a linear map of these features to every location's learned embedding. Raw km
                # (thousands across a country-wide dataset: GeoLife spans ~2000 km) swamped the learned part, so nearby
                # locations looked alike: on GeoLife the trained network recovered 6.5% of clean tokens at the last
                # step and its loss stayed near log N. Centred and divided by one scale, so distances keep their ranking;
                # by default also sin/cos at wavelengths 0.5-512 km (model.coord_features), since one scale over
                # ~2000 km leaves the places of one city nearly alike (generated moves of median 10 km, real 1.7 km).
                xy = coords[vocab]
                feats = ((xy - xy.mean(0)) / max(float(xy.std()), 1e-9)).astype(np.float32)
                graph_feats = feats  # the neighbour ranking stays geographic
                if m.coord_features == "multiscale":
                    feats = np.concatenate([feats, coord_fourier(xy)], axis=1).astype(np.float32)
                meta["kg"] = None
            nbr = knn_neighbours(graph_feats, coords[vocab], m.kg_neighbours, m.kg_max_distance_km)
            proc = MSTDiffProcess.from_config(self.cfg.diffusion, m, neighbours=nbr)
            meta["trajectory_process"] = {**proc.trajectory.report(), "n_components": proc.trajectory.n_components, "rate_scale": proc.trajectory.rate_scale}
            # test trajectories: raw BS ids for metrics; vocabulary ids (unseen -> geographically nearest) for losses
            tj_test = test.trajectory if test.n else np.zeros((0, uc.seq_len), np.int64)
            near = lookup.copy()
            unseen = np.flatnonzero(near < 0)
            if unseen.size:
                d = np.hypot(coords[unseen, None, 0] - coords[None, vocab, 0], coords[unseen, None, 1] - coords[None, vocab, 1])
                near[unseen] = d.argmin(1)
            state.update(
                {
                    "vocab": torch.as_tensor(vocab, dtype=torch.int64),
                    "l_train": torch.as_tensor(lookup[train.trajectory]),
                    "l_test": torch.as_tensor(near[tj_test]),
                    "trajectory_test": torch.as_tensor(tj_test),
                    "neighbours": torch.as_tensor(nbr),
                    "loc_features": torch.as_tensor(feats, dtype=torch.float32),
                    "loc_xy_km": torch.as_tensor(coords[vocab], dtype=torch.float64),
                    "rates": torch.as_tensor(proc.trajectory.rates, dtype=torch.float64),
                }
            )
        state["meta_json"] = json.dumps(meta, sort_keys=True, default=str)
        return state

    @staticmethod
    def _read(path: Path) -> dict:
        return read_prepared(path)

    # ------------------------------------------------------------------ worker side
    def setup(self, run_dir: Path) -> None:
        self.state = self._read(Path(run_dir) / DATA_FILE)
        self.meta = json.loads(self.state["meta_json"])
        if self.meta.get("fingerprint") != self.fingerprint():
            raise CheckpointError(f"{run_dir}/{DATA_FILE}: prepared with other data/model settings; use a new run folder")
        nbr = self.state["neighbours"].numpy() if "neighbours" in self.state else None
        rates = self.state["rates"].numpy() if "rates" in self.state else None
        self.process = MSTDiffProcess.from_config(self.cfg.diffusion, self.cfg.model, neighbours=nbr, rates=rates)

    def _ready(self) -> None:
        if self.state is None or self.process is None:
            raise ConfigError("MSTDiffTask: call prepare(run_dir) then setup(run_dir) first")

    @property
    def n_locations(self) -> int:
        self._ready()
        return int(self.state["vocab"].numel()) if "vocab" in self.state else 0

    def data_info(self) -> dict[str, Any]:
        """What shapes the network (saved in the export for :func:`mobscale.model.mstdiff.build`)."""
        self._ready()
        feats = self.state.get("loc_features")
        return {
            "band_lengths": list(self.layout.lengths),
            "n_locations": self.n_locations,
            "loc_feature_dim": int(feats.shape[1]) if feats is not None else 0,
            "steps_per_day": 1440 // int(self.meta["step_minutes"]),
        }

    def build_model(self) -> torch.nn.Module:
        self._ready()
        model = build(self.cfg, self.data_info())
        if self.cfg.model.use_trajectory:
            model.loc_features.copy_(self.state["loc_features"])
        if self.cfg.model.use_traffic:
            model.vqvae.load_state_dict(self.state["vq_state"])
            if self.cfg.model.freeze_vqvae:
                model.vqvae.requires_grad_(False)
                model.vqvae.eval()
        return model

    def trainable_parameters(self, model: torch.nn.Module) -> list[torch.nn.Parameter]:
        """Everything but the frozen VQ-VAE (``model.freeze_vqvae``); the fine-tuned ablation trains it too."""
        inner = model
        while isinstance(getattr(inner, "module", None), torch.nn.Module):
            inner = inner.module
        frozen = {id(p) for p in inner.vqvae.parameters()} if (self.cfg.model.use_traffic and self.cfg.model.freeze_vqvae) else set()
        return [p for p in inner.parameters() if id(p) not in frozen]

    def dataset(self, split: str, rank: int = 0, world: int = 1) -> torch.utils.data.Dataset:
        """Windows of ``split`` ("train"; "test"/"val" = the held-out users); rank r of ``world`` gets r, r+world, ..."""
        self._ready()
        key, off, sel = _split_rows(self.state, split, rank, world, "MSTDiffTask")
        w0 = self.state[f"w_{key}"][sel] if self.cfg.model.use_traffic else None
        l0 = self.state[f"l_{key}"][sel] if self.cfg.model.use_trajectory else None
        return _Windows(w0, l0, off[sel])

    def loss(self, model: torch.nn.Module, batch: dict, generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        self._ready()
        return self.process.training_losses(model, batch.get("w0"), batch.get("l0"), batch.get("offset"), generator)

    def normalisation(self) -> dict[str, Any]:
        """Tensors / numbers / strings the sampler needs besides the weights."""
        self._ready()
        out: dict[str, Any] = {
            "step_minutes": int(self.meta["step_minutes"]),
            "start": str(self.meta["start"]),
            "offset": int(self.state["offset_train"][0]) if self.state["offset_train"].numel() else 0,
            "n_bs": int(self.meta["n_bs"]),
            "n_train_users": int(self.meta["n_train_users"]),
        }
        if "traffic_state" in self.state:
            out.update(self.state["traffic_state"])
        for k in ("vocab", "neighbours", "rates", "loc_xy_km"):
            if k in self.state:
                out[k] = self.state[k]
        return out

    def export_extra(self) -> dict[str, Any]:
        self._ready()
        return {"data_info": self.data_info(), "mstdiff": {k: v for k, v in self.meta.items() if k != "fingerprint"}}


# ----------------------------------------------------------------------------------------------- CSDI-style baseline


class _Series(torch.utils.data.Dataset):
    """Map-style dataset of normalised series x0 (n, T) float32 and window offsets (n,) long."""

    def __init__(self, x0: torch.Tensor, offset: torch.Tensor):
        self.x0, self.offset = x0, offset

    def __len__(self) -> int:
        return int(self.offset.numel())

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x0": self.x0[i], "offset": self.offset[i]}


class CSDIUsersTask:
    """The Task of ``model.kind = "csdi_users"``: CSDI-style DDPM on normalised per-user traffic (module docstring).

    Same users, split and traffic normalisation as :class:`MSTDiffTask` with the same ``model.users`` block;
    prepared data in ``RUN/csdi_users_data.pt``: ``x_train`` / ``x_test`` (n, T) float32 normalised,
    ``traffic_test`` (n, T) float32 volumes of the held-out users, ``offset_train`` / ``offset_test`` (n,) long,
    ``traffic_state`` (the fitted transform) and ``meta_json``."""

    def __init__(self, cfg):
        if cfg.model.kind != "csdi_users":
            raise ConfigError(f"CSDIUsersTask needs model.kind=csdi_users, got {cfg.model.kind}")
        self.cfg = cfg
        self.state: dict[str, Any] | None = None
        self.meta: dict[str, Any] | None = None
        self.diffusion: GaussianDiffusion | None = None

    def store_path(self, run_dir: Path) -> Path:
        """The configured store, or RUN/data/city.zarr for the synthetic city."""
        return Path(self.cfg.data.store) if self.cfg.data.store is not None else Path(run_dir) / "data" / "city.zarr"

    def fingerprint(self) -> str:
        """Settings that change the prepared data (a resumed run must match them)."""
        return json.dumps({"kind": "csdi_users", "users": self.cfg.model.users.model_dump(mode="json")}, sort_keys=True)

    # ------------------------------------------------------------------ driver side
    def prepare(self, run_dir: Path) -> None:
        run_dir = Path(run_dir)
        path = run_dir / CSDI_USERS_DATA_FILE
        store = self.store_path(run_dir)
        synthesize_if_needed(self.cfg, store)
        if path.exists():
            meta = json.loads(read_prepared(path)["meta_json"])
            if meta["store"] != str(store.resolve()) or meta["fingerprint"] != self.fingerprint():
                raise CheckpointError(f"{path}: prepared for another store or users settings ({meta['store']}); use a new run folder")
            log.info("reusing the prepared per-user series of %s", path)
            return
        uc = self.cfg.model.users
        sp = split_user_windows(store, uc, traffic=True, trajectory=False)
        train, test = sp.train, sp.test
        log.info("CSDI users data: %s, %d users (%d train / %d test), %d train windows of %d steps", store, sp.n_users,
                 sp.train_users.size, sp.test_users.size, train.n, uc.seq_len)
        tf = TrafficTransform.fit(train.traffic, uc.traffic_transform, uc.zero_gap)
        empty = np.zeros((0, uc.seq_len), np.float32)
        root = open_city(store)
        state: dict[str, Any] = {
            "x_train": torch.as_tensor(tf.forward(train.traffic), dtype=torch.float32),
            "x_test": torch.as_tensor(tf.forward(test.traffic) if test.n else empty, dtype=torch.float32),
            "traffic_test": torch.as_tensor(test.traffic if test.n else empty),
            "traffic_train": torch.as_tensor(train.traffic),
            "offset_train": torch.as_tensor(train.offsets()),
            "offset_test": torch.as_tensor(test.offsets()),
            "traffic_state": {k: (torch.as_tensor(v) if isinstance(v, np.ndarray) else v) for k, v in tf.state().items()},
        }
        meta = {
            "store": str(store.resolve()), "fingerprint": self.fingerprint(), "n_users": sp.n_users,
            "n_train_users": int(sp.train_users.size), "n_test_users": int(sp.test_users.size), "step_minutes": train.step_minutes,
            "start": str(pd.Timestamp(train.start[0])), "n_bs": int(root.sizes.get("bs", 0)), "city": str(root.attrs.get("city", "")),
        }
        state["meta_json"] = json.dumps(meta, sort_keys=True, default=str)
        write_prepared(path, state)

    # ------------------------------------------------------------------ worker side
    def setup(self, run_dir: Path) -> None:
        path = Path(run_dir) / CSDI_USERS_DATA_FILE
        self.state = read_prepared(path)
        self.meta = json.loads(self.state["meta_json"])
        if self.meta.get("fingerprint") != self.fingerprint():
            raise CheckpointError(f"{path}: prepared with other users settings; use a new run folder")
        self.diffusion = GaussianDiffusion(self.cfg.diffusion)

    def _ready(self) -> None:
        if self.state is None or self.diffusion is None:
            raise ConfigError("CSDIUsersTask: call prepare(run_dir) then setup(run_dir) first")

    def data_info(self) -> dict[str, Any]:
        """What shapes the network (saved in the export for :func:`mobscale.model.csdi_users.build`)."""
        self._ready()
        return {"seq_len": int(self.cfg.model.users.seq_len), "steps_per_day": 1440 // int(self.meta["step_minutes"])}

    def build_model(self) -> torch.nn.Module:
        self._ready()
        return build_csdi_users(self.cfg, self.data_info())

    def dataset(self, split: str, rank: int = 0, world: int = 1) -> torch.utils.data.Dataset:
        """Series of ``split`` ("train"; "test"/"val" = the held-out users); rank r of ``world`` gets r, r+world, ..."""
        self._ready()
        key, off, sel = _split_rows(self.state, split, rank, world, "CSDIUsersTask")
        return _Series(self.state[f"x_{key}"][sel], off[sel])

    def loss(self, model: torch.nn.Module, batch: dict, generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """DDPM's simple loss on a batch {"x0": (B, T), "offset": (B,)}."""
        self._ready()
        return self.diffusion.training_loss(model, batch["x0"], {"offset": batch["offset"]}, generator)

    def normalisation(self) -> dict[str, Any]:
        """The fitted traffic transform and the time axis (what the sampler needs besides the weights)."""
        self._ready()
        out: dict[str, Any] = {
            "step_minutes": int(self.meta["step_minutes"]),
            "start": str(self.meta["start"]),
            "offset": int(self.state["offset_train"][0]) if self.state["offset_train"].numel() else 0,
            "n_bs": int(self.meta["n_bs"]),
            "n_train_users": int(self.meta["n_train_users"]),
        }
        out.update(self.state["traffic_state"])
        return out

    def export_extra(self) -> dict[str, Any]:
        self._ready()
        return {"data_info": self.data_info(), "csdi_users": {k: v for k, v in self.meta.items() if k != "fingerprint"}}


def _split_rows(state: dict, split: str, rank: int, world: int, who: str) -> tuple[str, torch.Tensor, torch.Tensor]:
    """(state key, window offsets, row indices of rank r of ``world``: r, r+world, ...) of ``split``
    ("train"; "test"/"val" = the held-out users)."""
    if split == "train":
        key = "train"
    elif split in ("test", "val"):
        key = "test"
    else:
        raise ConfigError(f"{who}.dataset: unknown split '{split}' (train, val, test)")
    off = state[f"offset_{key}"]
    return key, off, torch.arange(rank, off.numel(), world)
