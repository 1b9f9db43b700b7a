"""The top-level run config, assembled from the section modules."""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field, model_validator

from mobscale.config.base import Section
from mobscale.config.baselines import (
    ContextProfileModelConfig,
    CSDIModelConfig,
    DiTModelConfig,
    GaussianConfig,
    HistoricalModelConfig,
    NoProcessConfig,
)
from mobscale.config.data import DataConfig
from mobscale.config.mstdiff import CSDIUsersModelConfig, MSTDiffDiffusionConfig, MSTDiffModelConfig
from mobscale.config.sample import SampleConfig
from mobscale.config.train import DistributedConfig, TrainConfig
from mobscale.config.zoomdiff import DRDMConfig, ZoomDiffModelConfig

ModelConfig = Annotated[
    Union[
        ZoomDiffModelConfig, CSDIModelConfig, DiTModelConfig, MSTDiffModelConfig, CSDIUsersModelConfig, HistoricalModelConfig,
        ContextProfileModelConfig,
    ],
    Field(discriminator="kind"),
]


DiffusionConfig = Annotated[
    Union[DRDMConfig, GaussianConfig, MSTDiffDiffusionConfig, NoProcessConfig],
    Field(discriminator="kind"),
]

#: which noise process each model family runs on
PROCESS_OF_MODEL = {
    "zoomdiff": "drdm",
    "csdi": "gaussian",
    "dit": "gaussian",
    "mstdiff": "mstdiff",
    "csdi_users": "gaussian",  # MSTDiff Table I's per-user traffic baseline
    # the statistical references are fitted, not diffused
    "historical": "none",
    "context_profile": "none",
}


class RunConfig(Section):
    """One training run: data -> model + diffusion -> train (-> distributed) -> sample defaults."""

    name: str = Field("run", description="run name (Ray Train resumes by name + storage path)")
    seed: int = Field(0, description="seed of model init, batches and noise")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ZoomDiffModelConfig)
    diffusion: DiffusionConfig = Field(default_factory=DRDMConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    sample: SampleConfig = Field(default_factory=SampleConfig)

    @model_validator(mode="before")
    @classmethod
    def _default_process(cls, data):
        # `model.kind` picks the process when `diffusion.kind` is not given
        if isinstance(data, dict):
            kind = (data.get("model") or {}).get("kind", "zoomdiff")
            diff = data.get("diffusion")
            if isinstance(diff, dict) and "kind" not in diff and kind in PROCESS_OF_MODEL:
                data = dict(data)
                data["diffusion"] = {**diff, "kind": PROCESS_OF_MODEL[kind]}
            elif diff is None and kind in PROCESS_OF_MODEL:
                data = dict(data)
                data["diffusion"] = {"kind": PROCESS_OF_MODEL[kind]}
        return data

    @model_validator(mode="after")
    def _compatible(self):
        want = PROCESS_OF_MODEL[self.model.kind]
        if self.diffusion.kind != want:
            raise ValueError(f"model.kind={self.model.kind} runs on diffusion.kind={want}, got {self.diffusion.kind}")
        split_by = self.data.windows.split_by
        # a per-place statistic of the training period says nothing about places never seen in training
        if self.model.kind == "historical" and split_by != "time":
            raise ValueError(
                f"model.kind=historical needs the test places in training: data.windows.split_by=time (got '{split_by}'); "
                "use model.kind=context_profile for unseen places"
            )
        if getattr(self.diffusion, "profile_prior", "none") == "historical" and split_by != "time":
            raise ValueError(
                f"diffusion.profile_prior=historical needs the test places in training: data.windows.split_by=time (got "
                f"'{split_by}'); use diffusion.profile_prior=context_profile for unseen places"
            )
        # the city sampler tiles the city with windows of the training patch, overlapping by sample.overlap pixels
        patch, overlap = self.data.windows.patch, self.sample.overlap
        if self.model.kind not in ("mstdiff", "csdi_users") and overlap >= patch:  # per-user models do not tile
            raise ValueError(
                f"sample.overlap={overlap} must be smaller than data.windows.patch={patch}: set sample.overlap "
                f"(e.g. {patch // 4}; 0 for mosaic stores such as UoMo imports, whose tiles are not neighbours)"
            )
        if getattr(self.model, "refine", None) == "mean_share" and split_by != "time":
            raise ValueError(
                f"model.refine=mean_share needs every pixel's training history: data.windows.split_by=time (got '{split_by}'); "
                "use model.refine=population or uniform"
            )
        return self
