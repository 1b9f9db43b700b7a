"""Training tasks on city-store windows (mobscale.train.task.Task): ZoomDiff on the DRDM process, the
single-resolution diffusion baselines (CSDI-style, DiT-style) on plain DDPM, and the statistical references.

``_WindowTask`` holds what any traffic model trained on :class:`mobscale.data.windows.CityWindows` needs:
the data (the configured store, or the synthetic city made into ``RUN/data/city.zarr``), the Normaliser
fitted on the *training split only* (the public code fits its scaler on all data, test included: a leak),
rank-sharded datasets, and the state written by ``prepare`` for every worker's ``setup``. A task for
another model family subclasses it and supplies the stage list, the model and the loss: :class:`BaselineTask`
(csdi, dit) and :class:`StatisticalTask` (historical, context_profile: no gradient training, ``fit``).

``RUN/data_state.json`` (written atomically by ``prepare``, reused on resume so normalisation never
changes mid-run): {"store": path, "stages": [[level, resolution], ...], "normaliser": Normaliser.state_dict(),
"data_info": CityWindows.data_info()}.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from mobscale.data.store import is_store
from mobscale.diffusion.drdm import DRDM
from mobscale.errors import CheckpointError, ConfigError
from mobscale.log import get_logger
from mobscale.model.registry import build_model

log = get_logger(__name__)

DATA_STATE = "data_state.json"
PROFILE_PRIOR = "profile_prior.pt"


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside DDP / DeepSpeed wrappers (both expose ``.module``)."""
    while isinstance(getattr(model, "module", None), torch.nn.Module):
        model = model.module
    return model


class _WindowTask:
    """Data side shared by the window-trained traffic models; subclasses set ``stages`` in __init__."""

    stages: list[tuple[str, str]]

    def __init__(self, cfg):
        self.cfg = cfg
        self.store: Path | None = None
        self.normaliser = None
        self.data_info: dict[str, Any] | None = None

    # ------------------------------------------------------------------ driver side

    def store_path(self, run_dir: Path) -> Path:
        """The configured store, or RUN/data/city.zarr for the synthetic city."""
        return Path(self.cfg.data.store) if self.cfg.data.store is not None else Path(run_dir) / "data" / "city.zarr"

    def prepare(self, run_dir: Path) -> None:
        """Make or open the data, fit the Normaliser on the train split, write RUN/data_state.json."""
        from mobscale.data.windows import CityWindows, fit_normaliser

        run_dir = Path(run_dir)
        state_path = run_dir / DATA_STATE
        store = self.store_path(run_dir)
        if self.cfg.data.store is None and not is_store(store):
            from mobscale.data.synthetic import synth_city

            log.info("synthesizing city '%s' into %s", self.cfg.data.synth.city, store)
            store.parent.mkdir(parents=True, exist_ok=True)
            synth_city(self.cfg.data.synth, store)
        if state_path.exists():
            state = self._read_state(state_path)
            if state["store"] != str(store.resolve()) or [tuple(s) for s in state["stages"]] != list(self.stages):
                raise CheckpointError(
                    f"{state_path}: run folder was prepared for store {state['store']} with stages {state['stages']}, "
                    f"this config uses {store.resolve()} with {list(self.stages)}; use a new run folder"
                )
            log.info("reusing the normalisation of %s", state_path)
            return
        train = CityWindows(store, self.cfg.data.windows, "train", self.stages)
        norm = fit_normaliser(train, self.cfg.data.windows.transform, seed=self.cfg.seed)
        state = {
            "store": str(store.resolve()),
            "stages": [list(s) for s in self.stages],
            "normaliser": norm.state_dict(),
            "data_info": train.data_info(),
        }
        tmp = state_path.with_name(f".{state_path.name}.tmp")
        tmp.write_text(json.dumps(state, indent=2, default=list))
        tmp.replace(state_path)
        log.info("fitted normalisation on %d training windows: %s", len(train), norm.state_dict())

    # ------------------------------------------------------------------ worker side

    @staticmethod
    def _read_state(path: Path) -> dict:
        try:
            state = json.loads(path.read_text())
        except FileNotFoundError:
            raise CheckpointError(f"{path}: missing; Task.prepare(run_dir) must run before setup") from None
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path}: corrupt ({e})") from None
        missing = [k for k in ("store", "stages", "normaliser", "data_info") if k not in state]
        if missing:
            raise CheckpointError(f"{path}: lacks {missing}")
        return state

    def setup(self, run_dir: Path) -> None:
        from mobscale.data.windows import Normaliser

        state = self._read_state(Path(run_dir) / DATA_STATE)
        self.store = Path(state["store"])
        self.normaliser = Normaliser.from_state(state["normaliser"])
        self.data_info = state["data_info"]

    def _ready(self) -> None:
        if self.normaliser is None or self.data_info is None:
            raise ConfigError(f"{type(self).__name__}: call setup(run_dir) (after prepare) first")

    def dataset(self, split: str, rank: int = 0, world: int = 1) -> torch.utils.data.Dataset:
        """Windows of ``split``; rank r of ``world`` gets windows r, r + world, ... (disjoint shards)."""
        from mobscale.data.windows import CityWindows

        self._ready()
        return CityWindows(self.store, self.cfg.data.windows, split, self.stages, rank=rank, world=world)

    def build_model(self) -> torch.nn.Module:
        self._ready()
        return build_model(self.cfg, self.data_info)

    def normalisation(self) -> dict[str, Any]:
        self._ready()
        return self.normaliser.state_dict()

    def export_extra(self) -> dict[str, Any]:
        self._ready()
        return {"data_info": self.data_info, "stages": [list(s) for s in self.stages]}


class ZoomDiffTask(_WindowTask):
    """ZoomDiff: the shared denoiser trained with the DRDM loss (eq. 12) on every stage of the plan.

    A batch is a collated CityWindows item dict; its "targets" (B, K, L, P, P) are linear densities in plan
    order, normalised here. Export extras: "data_info" (for mobscale.model.registry.build_model), "stages"
    and "boundaries" (the plan; the config alone rebuilds it too).
    """

    def __init__(self, cfg):
        super().__init__(cfg)
        if cfg.model.kind != "zoomdiff" or cfg.diffusion.kind != "drdm":
            raise ConfigError(f"ZoomDiffTask trains model.kind=zoomdiff on diffusion.kind=drdm, got {cfg.model.kind}/{cfg.diffusion.kind}")
        self.process = DRDM(cfg.diffusion)
        self.stages = self.process.plan.pairs
        self.run_dir: Path | None = None

    # ------------------------------------------------------------------ profile prior (DRDMConfig.profile_prior)

    def prepare(self, run_dir: Path) -> None:
        """As every window task, then (with a profile prior) fit the statistical reference on the training split
        into RUN/profile_prior.pt, once: a resumed run reuses it, like the normalisation."""
        super().prepare(run_dir)
        kind = self.cfg.diffusion.profile_prior
        path = Path(run_dir) / PROFILE_PRIOR
        if kind == "none" or path.exists():
            return
        self.setup(run_dir)
        net = self.build_model(load_prior=False)
        fit_on_training_split(net.stat_prior, self.store, self.cfg.data.windows, self.normaliser)
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save(net.stat_prior.state_dict(), tmp)
        tmp.replace(path)
        log.info("fitted the profile prior (%s) on the training split -> %s", kind, path)

    def setup(self, run_dir: Path) -> None:
        super().setup(run_dir)
        self.run_dir = Path(run_dir)

    def build_model(self, load_prior: bool = True) -> torch.nn.Module:
        """The denoiser; with a profile prior, its statistics loaded from RUN/profile_prior.pt (buffers of the
        model from then on, so checkpoints and the export carry them)."""
        model = super().build_model()
        if load_prior and model.stat_prior is not None:
            path = self.run_dir / PROFILE_PRIOR
            if not path.exists():
                raise CheckpointError(f"{path}: missing; ZoomDiffTask.prepare(run_dir) fits the profile prior before training")
            model.stat_prior.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model

    def priors(self, model: torch.nn.Module, batch: dict, x: torch.Tensor) -> torch.Tensor | None:
        """(B, K, L, P, P) normalised prior of every stage from the profile prior and the normalised targets ``x``
        (DRDM.profile_priors), or None without a profile prior."""
        lin = _unwrap(model).profile(batch, self.normaliser)
        if lin is None:
            return None
        return self.process.profile_priors(x, lin.to(x.dtype), batch["units"], self.normaliser)

    def loss(self, model: torch.nn.Module, batch: dict, generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        self._ready()
        targets = batch["targets"]
        if targets.ndim != 5 or targets.shape[1] != self.process.K:
            raise ConfigError(f"batch 'targets' has shape {tuple(targets.shape)}, expected (B, {self.process.K}, L, P, P) for stages {self.stages}")
        x = self.normaliser.forward(targets)
        return self.process.training_loss(model, x, batch, generator, priors=self.priors(model, batch, x))

    def export_extra(self) -> dict[str, Any]:
        return {**super().export_extra(), "boundaries": self.process.plan.boundaries}

    def trainable_parameters(self, model: torch.nn.Module, subset: str | None = None) -> list[torch.nn.Parameter]:
        """Parameters to train: ``subset`` (default ``cfg.model.trainable``) "all", or "transfer" = the few-shot
        subset of the paper's Table VII (context encoders, positional / step / stage embeddings, prior fusion,
        last space-time block and output head); the rest stays as loaded from ``--init-from``."""
        subset = subset or self.cfg.model.trainable
        net = _unwrap(model)
        if subset == "all":
            return list(net.parameters())
        if subset != "transfer":
            raise ConfigError(f"unknown trainable subset '{subset}' (all, transfer)")
        parts = [net.context, net.context_proj, net.pe, net.step_mlp, net.stage_emb, net.fusion, net.blocks[-1], net.mod_out, net.out]
        seen: set[int] = set()
        out = []
        for part in parts:
            if part is None:
                continue
            for p in part.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    out.append(p)
        return out


class BaselineTask(_WindowTask):
    """CSDI- and DiT-style baselines: plain DDPM (GaussianDiffusion) on the finest stage ("grid50", "1h").

    Same windows and training-split Normaliser as ZoomDiff. With ``model.cond_level`` (refinement baseline)
    the stages are [(cond_level, "1h"), ("grid50", "1h")] and the network sees the normalised coarse density
    as cond["coarse"]. A batch is a collated CityWindows item dict; "targets" (B, K, L, P, P) linear.
    """

    def __init__(self, cfg):
        super().__init__(cfg)
        from mobscale.diffusion.gaussian import GaussianDiffusion

        if cfg.model.kind not in ("csdi", "dit") or cfg.diffusion.kind != "gaussian":
            raise ConfigError(f"BaselineTask trains model.kind=csdi|dit on diffusion.kind=gaussian, got {cfg.model.kind}/{cfg.diffusion.kind}")
        self.process = GaussianDiffusion(cfg.diffusion)
        lvl = cfg.model.cond_level
        self.stages = ([(lvl, "1h")] if lvl is not None else []) + [("grid50", "1h")]

    def loss(self, model: torch.nn.Module, batch: dict, generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        self._ready()
        targets = batch["targets"]
        K = len(self.stages)
        if targets.ndim != 5 or targets.shape[1] != K:
            raise ConfigError(f"batch 'targets' has shape {tuple(targets.shape)}, expected (B, {K}, L, P, P) for stages {self.stages}")
        cond = batch
        if K == 2:  # refinement baseline: the coarse level, normalised like the target, as an input channel
            cond = {**batch, "coarse": self.normaliser.forward(targets[:, 0])}
        return self.process.training_loss(model, self.normaliser.forward(targets[:, -1]), cond, generator)


class StatisticalTask(_WindowTask):
    """The statistical references (model.kind = historical | context_profile; mobscale.model.statistical).

    Data side as every window task (prepare: data + training-split Normaliser; setup). There is no gradient
    training: ``fit(run_dir)`` computes the statistics on the training split and returns the fitted
    StatisticalModel, whose ``state_dict()`` (tensors only) is the export's weights. ``loss`` raises, so an
    engine that ignores ``fit`` fails loudly instead of "training" a model without parameters.
    """

    def __init__(self, cfg):
        super().__init__(cfg)
        if cfg.model.kind not in ("historical", "context_profile") or cfg.diffusion.kind != "none":
            raise ConfigError(f"StatisticalTask fits model.kind=historical|context_profile with diffusion.kind=none, got {cfg.model.kind}/{cfg.diffusion.kind}")
        from mobscale.model.statistical import STAGES

        self.stages = list(STAGES)

    def loss(self, model: torch.nn.Module, batch: dict, generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        raise ConfigError(
            f"model.kind={self.cfg.model.kind} is a fitted statistical reference, not trained by gradient descent: "
            f"the training engine must call {type(self).__name__}.fit(run_dir) and export its state_dict"
        )

    def fit(self, run_dir: Path, progress: bool = True) -> torch.nn.Module:
        """Fit the statistics on the training split (after prepare and setup); returns the fitted model."""
        self._ready()
        return fit_on_training_split(self.build_model(), self.store, self.cfg.data.windows, self.normaliser, progress)


def fit_on_training_split(model: torch.nn.Module, store: Path, windows, normaliser, progress: bool = True) -> torch.nn.Module:
    """Fit a StatisticalModel (a reference, or ZoomDiff's profile prior) on the training hours and places of the
    window config ``windows`` (data.windows) of ``store``; returns the fitted model."""
    from mobscale.data.windows import CityWindows
    from mobscale.model.statistical import STAGES

    train = CityWindows(store, windows, "train", list(STAGES))
    hours = train.time_ranges()["train"]
    patches = None if windows.split_by == "time" else sorted({(w.y0, w.x0) for w in train.windows})
    return model.fit(train.arr, hours, patches, train.P, normaliser, progress=progress)
