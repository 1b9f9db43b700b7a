"""Data sections: the synthetic city generator and the training-window view of a city store."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from mobscale.config.base import Section

SPATIAL_LEVELS = ("bs", "cell", "grid100", "grid50")  # coarse -> fine
TEMPORAL_RESOLUTIONS = ("1d", "4h", "2h", "1h")  # coarse -> fine (relative to a 1 h finest step)


class SynthConfig(Section):
    """Parameters of the procedural synthetic city (``mobscale data synth``). Seed + parameters = one city."""

    city: str = Field("demo", description="city name written to the store attrs")
    seed: int = Field(0, description="master seed; every random draw derives from it")
    height: int = Field(64, ge=8, description="grid rows of 50 m pixels (must be even: 100 m = 2x2 blocks)")
    width: int = Field(64, ge=8, description="grid columns of 50 m pixels (must be even)")
    days: int = Field(7, ge=1, le=366, description="days of hourly traffic")
    start: str = Field("2026-01-05", description="first day (ISO date, 00:00 local); default is a Monday")
    pixels_per_bs: float = Field(60.0, gt=4, description="mean 50 m pixels served by one BS (paper scale ~60)")
    n_zones: int | None = Field(None, description="AoI Voronoi zones; default scales with the area")
    users: int = Field(200, ge=0, description="synthetic users (per-user traffic + trajectory at 30 min); 0 = no users group")
    user_days: int = Field(7, ge=1, description="days of user data (336 half-hours for 7 days)")
    lat0: float = Field(22.817, description="latitude of the grid's south-west corner (default: Nanning)")
    lon0: float = Field(108.366, description="longitude of the grid's south-west corner")
    event_rate: float = Field(0.02, ge=0, description="bursty local events per km^2 per hour")
    noise_sigma: float = Field(0.35, ge=0, description="log-normal sigma of the per-pixel heavy-tailed noise")
    time_chunk: int = Field(24, ge=1, description="hours generated and written per chunk (bounds peak memory)")
    realisation: int = Field(
        0, ge=0,
        description="0 = the city itself; r > 0 = another draw of the same city: same context, base stations and cells, "
        "with the traffic noise, events and day factors (and, with redraw_pixel_factor, the hidden per-pixel usage "
        "factors) drawn again. Such a store is a sample from the generator's true distribution given the context: "
        "the 'oracle' reference a context-conditioned model can at best match",
    )
    redraw_pixel_factor: bool = Field(
        True,
        description="with realisation > 0, also redraw the hidden static per-pixel usage factor (not visible in the "
        "context); false keeps it, an oracle that knows each pixel's hidden level",
    )

    @field_validator("height", "width")
    @classmethod
    def _even(cls, v: int) -> int:
        if v % 2:
            raise ValueError("must be even (grid100 is 2x2 blocks of grid50)")
        return v


class WindowConfig(Section):
    """How a city store is cut into training windows (patches x time) for the traffic models."""

    patch: int = Field(16, ge=2, description="patch side in 50 m pixels (even)")
    hours: int = Field(24, ge=1, description="window length in hours of the finest temporal resolution")
    time_stride: int | None = Field(None, description="hours between window starts (default = hours)")
    split_by: Literal["patch", "band", "time"] = Field(
        "patch",
        description="held-out set: 'patch' = random patches (all times); 'band' = a contiguous band of patch rows "
        "at the south edge (a held-out district, so whole cells/BS fall inside it); 'time' = the last days (all places)",
    )
    test_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="fraction of patches (or of days, split_by=time) held out")
    val_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="fraction of patches for validation")
    split_seed: int = Field(1234, description="seed of the patch split (independent of the run seed)")
    transform: Literal["log1p", "linear"] = Field(
        "log1p", description="elementwise transform before standardisation (keeps stage targets piecewise constant)"
    )


class DataConfig(Section):
    """Where the training data comes from."""

    store: Path | None = Field(None, description="city store (Zarr); None = synthesize `synth` into the run folder")
    synth: SynthConfig = Field(default_factory=SynthConfig)
    windows: WindowConfig = Field(default_factory=WindowConfig)
    variable: str = Field("traffic", description="traffic variable family in the store")

    @model_validator(mode="after")
    def _check(self):
        if self.windows.patch % 2:
            raise ValueError("windows.patch must be even")
        return self
