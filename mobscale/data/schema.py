"""The city store schema: the one place that says what a mobscale city store holds.

A city store is one Zarr v3 store (a directory), written and read with xarray (``consolidated=False``)
and opened lazily with Dask. Layout::

    CITY.zarr/                      root group: traffic at every level + context + hierarchy
      time          (time)          datetime64[ns], native step = attrs["time_step_minutes"]
      y, x          (y), (x)        50 m pixel centres, metres north/east of the grid's SW corner
      lat, lon      (y), (x)        WGS84 of the pixel centres (local equirectangular projection, see attrs["crs"])
      y100, x100    (y100), (x100)  100 m block centres (2x2 pixels)
      cell          (cell)          int cell id 0..C-1, with cell_x, cell_y, cell_lat, cell_lon, cell_bs, cell_sector
      bs            (bs)            int BS id 0..B-1, with bs_x, bs_y, bs_lat, bs_lon
      traffic_grid50  (time, y, x)        float32, traffic volume per 50 m pixel per native step
      traffic_grid100 (time, y100, x100)  = sum of 2x2 grid50 blocks
      traffic_cell    (time, cell)        = sum of the pixels whose pixel_cell is that cell
      traffic_bs      (time, bs)          = sum of the cells whose cell_bs is that BS
      pixel_cell      (y, x)   int32      grid50 -> cell map (every pixel in exactly one cell)
      aoi             (y, x)   int8       AoI / land-use category (CF flag_values / flag_meanings)
      house_road      (y, x)   int8       house / road type (CF flags)
      poi             (poi_category, y, x) float32 POI counts, poi_category = names (21 by default)
      population      (hour_of_week, y, x) or (time, y, x) float32, people present
    CITY.zarr/users/                optional group: per-user data at 30 min
      time          (time)          datetime64, 30 min step
      user          (user)
      traffic       (user, time)    float32 traffic volume per user per half-hour
      trajectory    (user, time)    int32 BS index (into root ``bs``) the user is attached to
      kg_head, kg_relation, kg_tail (triple) str: BS urban knowledge graph triples
    CITY.zarr/stages/               optional group (generated stores): ZoomDiff stage outputs
      stage_k       (sample?, time, y, x) float32 per-pixel density of stage k's output

Every coarser level equals the sum of its children spatially; temporal resolutions (1 h, 2 h, 4 h, 1 d) are
derived lazily from the native step by summing (``mobscale.data.pyramid``). "Density" is the projection of a
level back onto the 50 m grid: unit value / pixel count, piecewise constant over the unit (ZoomDiff stages).

Root attrs: ``mobscale_schema`` (version), ``city``, ``crs`` (proj string), ``lat0``/``lon0``,
``pixel_size_m`` (50), ``time_step_minutes``, ``provenance`` (free text: source files, generator),
``config`` (JSON of what made the store), ``levels_built_by`` (JSON: level -> how it was derived), ``kind``
("real" | "synthetic" | "generated"), ``units`` of traffic in each variable's attrs (CF ``units``).
"""

from __future__ import annotations

from dataclasses import dataclass

SCHEMA_VERSION = "1.0"
PIXEL_SIZE_M = 50.0
EARTH_RADIUS_M = 6_371_008.8

#: spatial levels coarse -> fine, with the variable, dims and unit dimension names
SPATIAL_LEVELS = ("bs", "cell", "grid100", "grid50")
TRAFFIC_VAR = {lvl: f"traffic_{lvl}" for lvl in SPATIAL_LEVELS}
LEVEL_DIMS = {
    "grid50": ("time", "y", "x"),
    "grid100": ("time", "y100", "x100"),
    "cell": ("time", "cell"),
    "bs": ("time", "bs"),
}

#: temporal resolutions coarse -> fine, in minutes
TEMPORAL_RESOLUTIONS = {"1d": 1440, "4h": 240, "2h": 120, "1h": 60, "30min": 30, "15min": 15, "10min": 10}
STANDARD_RESOLUTIONS = ("1d", "4h", "2h", "1h")


@dataclass(frozen=True)
class Categories:
    """A categorical layer: code i <-> name; written as CF ``flag_values``/``flag_meanings``."""

    name: str
    names: tuple[str, ...]
    long_name: str

    @property
    def codes(self) -> tuple[int, ...]:
        return tuple(range(len(self.names)))

    def attrs(self) -> dict:
        return {
            "long_name": self.long_name,
            "flag_values": list(self.codes),
            "flag_meanings": " ".join(self.names),
            "units": "1",
        }

    def code(self, name: str) -> int:
        return self.names.index(name)


AOI = Categories(
    "aoi",
    ("residential", "business", "commercial", "industrial", "education", "green", "transport", "water"),
    "area of interest / land-use type",
)
HOUSE_ROAD = Categories(
    "house_road",
    ("open", "building_low", "building_mid", "building_high", "road_minor", "road_major", "water"),
    "house and road type",
)
#: 21 POI categories (Amap-style first-level taxonomy, as in ZoomDiff's 21-dim POI condition)
POI_CATEGORIES = (
    "food", "shopping", "life_service", "sports_leisure", "medical", "hotel", "scenic", "residence",
    "government", "education_culture", "transport_facility", "finance", "company", "road_facility",
    "car_service", "public_facility", "business_residence", "entertainment", "auto_repair",
    "motorcycle_service", "place_name",
)
#: relations of the BS urban knowledge graph (MSTDiff Fig. 2)
KG_RELATIONS = ("BaseLocateAt", "BaseBelongTo", "BaseBorderBy", "ServedBy")

TRAFFIC_ATTRS = {"units": "MB", "long_name": "mobile traffic volume per unit per time step"}
DENSITY_ATTRS = {"units": "MB", "long_name": "per-pixel density: unit traffic / pixels in unit"}

USERS_GROUP = "users"
STAGES_GROUP = "stages"
USER_STEP_MINUTES = 30

REQUIRED_ROOT_VARS = ("traffic_grid50", "traffic_grid100", "traffic_cell", "traffic_bs", "pixel_cell")
CONTEXT_VARS = ("aoi", "house_road", "poi", "population")
REQUIRED_COORDS = (
    "time", "y", "x", "lat", "lon", "y100", "x100",
    "cell", "cell_x", "cell_y", "cell_lat", "cell_lon", "cell_bs",
    "bs", "bs_x", "bs_y", "bs_lat", "bs_lon",
)
REQUIRED_ATTRS = ("mobscale_schema", "city", "crs", "pixel_size_m", "time_step_minutes", "provenance", "kind")


def local_crs(lat0: float, lon0: float) -> str:
    """Proj string of the local equirectangular frame used for metres <-> degrees (SW corner = origin)."""
    return f"+proj=eqc +lat_ts={lat0:.6f} +lat_0={lat0:.6f} +lon_0={lon0:.6f} +x_0=0 +y_0=0 +R={EARTH_RADIUS_M} +units=m"


def metres_to_latlon(y_m, x_m, lat0: float, lon0: float):
    """Local equirectangular inverse: metres north/east of (lat0, lon0) -> (lat, lon) degrees.

    Exact for the ``+proj=eqc`` frame in :func:`local_crs`; within ~0.1 % of geodesic distance over a 50 km city.
    """
    import numpy as np

    lat = lat0 + np.degrees(np.asarray(y_m, dtype=np.float64) / EARTH_RADIUS_M)
    lon = lon0 + np.degrees(np.asarray(x_m, dtype=np.float64) / (EARTH_RADIUS_M * np.cos(np.radians(lat0))))
    return lat, lon


def latlon_to_metres(lat, lon, lat0: float, lon0: float):
    """Forward of :func:`metres_to_latlon`: (lat, lon) degrees -> (y, x) metres from (lat0, lon0)."""
    import numpy as np

    y = np.radians(np.asarray(lat, dtype=np.float64) - lat0) * EARTH_RADIUS_M
    x = np.radians(np.asarray(lon, dtype=np.float64) - lon0) * EARTH_RADIUS_M * np.cos(np.radians(lat0))
    return y, x
