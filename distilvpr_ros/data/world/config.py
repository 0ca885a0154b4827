"""Configuration of the synthetic world: one pydantic schema, four presets, YAML overrides.

Every knob has a default and a one-line description (``WorldConfig.model_json_schema()`` lists
them). ``load_world_config("default", Path("my.yaml"), seed=3)`` starts from a preset, deep-merges
the YAML file over it (lists such as ``runs`` are replaced, not merged) and validates the result;
unknown keys are refused so typos do not pass silently.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from ...config import Section, load_yaml, merge_config, validate_config
from ..errors import DataError

#: Most frames one world may hold (all runs; the ``large`` preset has about 15 000).
MAX_FRAMES = 200_000

TimeOfDay = Literal["day", "dusk", "night"]
Weather = Literal["clear", "fog", "rain"]
Season = Literal["summer", "autumn", "winter"]


class Condition(Section):
    """Appearance condition of one run: lighting, weather and season."""

    time_of_day: TimeOfDay = Field(
        "day", description="day: high sun; dusk: low warm sun; night: headlights, lamps, lit windows"
    )
    weather: Weather = Field(
        "clear", description="fog: depth haze + shorter LiDAR range; rain: image streaks + LiDAR dropouts"
    )
    season: Season = Field(
        "summer", description="foliage: green (summer), yellow-orange (autumn), no crowns at all (winter)"
    )

    @property
    def name(self) -> str:
        """Short name: the non-default parts joined by '-' ('day' when everything is default)."""
        parts = [
            p
            for p, default in ((self.time_of_day, "day"), (self.weather, "clear"), (self.season, "summer"))
            if p != default
        ]
        return "-".join(parts) or "day"


class RunConfig(Section):
    """One traversal of the town's route."""

    name: str | None = Field(None, description="run id (folder name); default run<index>_<condition>")
    condition: Condition = Field(default_factory=Condition, description="appearance condition of this run")
    direction: Literal[1, -1] = Field(1, description="+1 drives the route loop forwards, -1 backwards")
    lane: int = Field(0, ge=0, le=7, description="lane counted from the centre line (0 = inner), right-hand traffic")
    speed_mps: float = Field(9.0, gt=0, le=60, description="mean driving speed (m/s); varies smoothly along the run")
    laps: float = Field(
        1.0, gt=0, le=20, description="route length driven, in loops (>1 revisits the start: loop closures)")
    start_offset_m: float | None = Field(
        None, ge=-1e5, le=1e5, description="arc length along the loop where the run starts; None: random"
    )
    day: int = Field(0, ge=0, le=36500, description="days after WorldConfig.start_date on which the run is recorded")


class TownConfig(Section):
    """Procedural town: an irregular street grid with buildings, trees, poles and parked cars."""

    blocks_x: int = Field(5, ge=1, le=50, description="city blocks between the streets along x (east)")
    blocks_y: int = Field(3, ge=1, le=50, description="city blocks between the streets along y (north)")
    block_size_m: float = Field(48.0, gt=10, le=500, description="mean side length of a city block (m)")
    block_jitter_m: float = Field(
        10.0, ge=0, le=100, description="uniform +- variation of each block side (irregular grid)")
    border_m: float = Field(
        28.0, ge=0, le=500, description="depth of the built-up ring outside the outermost streets (m)")
    lane_width_m: float = Field(3.2, gt=2, le=10, description="width of one driving lane (m)")
    lanes_per_direction: int = Field(2, ge=1, le=8, description="driving lanes on each side of the centre line")
    parking_width_m: float = Field(
        2.2, ge=0, le=10, description="parking strip between the outer lane and the curb (m)")
    sidewalk_width_m: float = Field(3.5, gt=0, le=20, description="sidewalk width inside each block's edge (m)")
    curb_height_m: float = Field(
        0.15, ge=0, le=1, description="blocks (sidewalks) are raised by this much above the road")
    building_width_m: tuple[float, float] = Field((9.0, 24.0), description="frontage range of one building (m)")
    building_height_m: tuple[float, float] = Field((6.0, 32.0), description="height range of buildings (m)")
    building_setback_m: tuple[float, float] = Field(
        (0.0, 3.0), description="distance from the sidewalk to the facade (m)"
    )
    alley_probability: float = Field(
        0.25, ge=0, le=1, description="chance of an alley gap between neighbouring buildings"
    )
    facade_kinds: list[Literal["windows", "glass", "bands", "brick", "plain"]] = Field(
        ["windows", "glass", "bands", "brick", "plain"], description="facade pattern kinds buildings draw from"
    )
    park_fraction: float = Field(0.12, ge=0, le=1, description="fraction of blocks that are parks (grass + trees)")
    lot_fraction: float = Field(0.08, ge=0, le=1, description="fraction of blocks that are parking lots")
    tree_spacing_m: float = Field(11.0, gt=1, le=1000, description="spacing of tree slots along sidewalks (m)")
    tree_probability: float = Field(0.55, ge=0, le=1, description="chance that a sidewalk tree slot holds a tree")
    park_trees_per_100m2: float = Field(0.5, ge=0, le=10, description="tree density inside parks")
    pole_spacing_m: float = Field(32.0, gt=1, le=1000, description="spacing of street lamps along each street side (m)")
    sign_probability: float = Field(
        0.15, ge=0, le=1, description="chance that a sidewalk slot between lamps holds a sign"
    )
    parked_vehicle_probability: float = Field(0.45, ge=0, le=1, description="chance that a parking slot is occupied")
    parked_vehicle_turnover: float = Field(
        0.3, ge=0, le=1, description="fraction of parking slots re-drawn for each run"
    )


class CameraConfig(Section):
    """Forward-looking RGB pinhole camera on the vehicle (optical frame: z forward, x right, y down)."""

    width: int = Field(320, ge=8, le=4096, description="image width (px)")
    height: int = Field(240, ge=8, le=4096, description="image height (px)")
    hfov_deg: float = Field(90.0, gt=10, lt=170, description="horizontal field of view (deg); square pixels")
    mount_xyz: tuple[float, float, float] = Field((1.5, 0.0, 1.6), description="position in the base frame (m)")
    pitch_deg: float = Field(3.0, ge=-90, le=90, description="downward pitch (deg)")


class LidarConfig(Section):
    """Spinning multi-beam LiDAR on the roof (frame: x forward, y left, z up)."""

    beams: int = Field(32, ge=1, le=256, description="number of beams (rings, 0 = lowest)")
    columns: int = Field(1024, ge=8, le=8192, description="firings per revolution")
    vfov_deg: tuple[float, float] = Field((-25.0, 15.0), description="elevation of the lowest and highest beam (deg)")
    max_range_m: float = Field(100.0, gt=1, le=1000, description="maximum range in clear weather (m)")
    min_range_m: float = Field(0.8, ge=0, le=100, description="returns closer than this are dropped (m)")
    range_noise_m: float = Field(
        0.02, ge=0, le=10, description="standard deviation of the range noise in clear weather (m)")
    mount_xyz: tuple[float, float, float] = Field((0.3, 0.0, 1.9), description="position in the base frame (m)")
    sweep_period_s: float = Field(
        0.1, gt=0, le=10, description="duration of one revolution; per-point time is in [0, this)")
    stamp_offset_s: float = Field(0.013, ge=0, le=1, description="bag stamp of the cloud minus the camera stamp (s)")


class TrafficConfig(Section):
    """Dynamic occluders: different in every run."""

    vehicles_per_km: float = Field(25.0, ge=0, le=1000, description="moving vehicles per km of route")
    pedestrians_per_km: float = Field(40.0, ge=0, le=1000, description="pedestrians per km of route (on the sidewalks)")
    lead_vehicle_fraction: float = Field(
        0.3, ge=0, le=1, description="share of the run with a car ahead in the ego lane"
    )
    visible_range_m: float = Field(
        90.0, gt=0, le=1000, description="dynamic objects farther than this from the ego are skipped")


class RenderConfig(Section):
    """Rendering options that trade realism for speed."""

    shadows: bool = Field(True, description="cast sun shadows (one extra ray per pixel, day and dusk only)")
    threads: int = Field(0, ge=0, le=1024, description="open3d ray-casting threads (0: all cores)")
    workers: int = Field(2, ge=1, le=64, description="frames rendered concurrently (threads) while generating")
    processes: int = Field(2, ge=1, le=64, description="runs generated in parallel processes (1: all in this process)")


class RegionConfig(Section):
    """Geographically disjoint splits: bands along x (east), separated by gaps."""

    fractions: dict[str, float] = Field(
        {"train": 0.6, "val": 0.2, "test": 0.2}, description="split name -> share of the town's width, west to east"
    )
    gap_m: float = Field(
        24.0, ge=0, le=1000, description="width of the unlabelled band between neighbouring splits (m)")

    @model_validator(mode="after")
    def _check(self) -> "RegionConfig":
        if not self.fractions or any(v <= 0 for v in self.fractions.values()):
            raise ValueError("region fractions must be positive")
        if "gap" in self.fractions:
            raise ValueError("'gap' is reserved for frames between regions")
        if "all" in self.fractions:
            raise ValueError("'all' is reserved: readers use it to select every frame")
        return self


class GeoConfig(Section):
    """Where the local map frame sits on the globe (for UTM columns and GPS messages)."""

    utm_zone_number: int = Field(32, ge=1, le=60, description="UTM zone number of the map origin")
    utm_zone_letter: str = Field("U", description="UTM latitude band letter")
    easting0: float = Field(365000.0, description="UTM easting of the local origin (m)")
    northing0: float = Field(5621000.0, description="UTM northing of the local origin (m)")
    altitude0: float = Field(60.0, description="altitude of the ground plane (m)")
    start_date: str = Field("2024-06-03", description="date of run day 0 (UTC, YYYY-MM-DD)")


class OdometryDriftConfig(Section):
    """Drifting odometry written beside the ground-truth ``/odom`` (see :mod:`.drift` for the model).

    Per odometry step ``k`` (relative ground-truth motion of length ``d_k`` m over ``dt_k`` s), the
    travelled distance is scaled by ``1 + s_k`` and the heading turns by an extra ``b_k * dt_k``;
    ``s`` and ``b`` start at the values below and random-walk (seeded per run).
    """

    topic: str = Field("/odom_drift", description="nav_msgs/Odometry topic of the drifting odometry in the bags")
    scale_error: float = Field(0.02, gt=-1, le=1, description="initial relative error of the travelled distance "
                               "(+0.02: odometry reports 2 % more than driven)")
    scale_walk_per_sqrt_m: float = Field(
        5e-4, ge=0, le=0.1, description="random-walk std of the scale error, per sqrt(metre) travelled")
    yaw_bias_deg_s: float = Field(
        0.02, ge=-10, le=10, description="initial yaw-rate bias (deg/s, counter-clockwise positive)")
    yaw_bias_walk_deg_s_per_sqrt_s: float = Field(
        2e-3, ge=0, le=1, description="random-walk std of the yaw-rate bias (deg/s), per sqrt(second)")
    translation_noise_m_per_sqrt_m: float = Field(
        0.0, ge=0, le=1, description="white planar (x, y) noise of each step (m), per sqrt(metre) of the step")
    yaw_noise_deg_per_sqrt_m: float = Field(
        0.0, ge=0, le=10, description="white heading noise of each step (deg), per sqrt(metre) of the step")


class WorldConfig(Section):
    """Everything that determines a generated world; same config + seed -> same bytes."""

    seed: int = Field(7, description="master seed: town, trajectories, traffic and sensor noise derive from it")
    town: TownConfig = Field(default_factory=TownConfig)
    camera: CameraConfig = Field(default_factory=CameraConfig)
    lidar: LidarConfig = Field(default_factory=LidarConfig)
    traffic: TrafficConfig = Field(default_factory=TrafficConfig)
    render: RenderConfig = Field(default_factory=RenderConfig)
    regions: RegionConfig = Field(default_factory=RegionConfig)
    geo: GeoConfig = Field(default_factory=GeoConfig)
    frame_spacing_m: float = Field(5.0, ge=0.5, le=1000, description="distance between consecutive frames (m)")
    frame_spacing_jitter: float = Field(0.1, ge=0, lt=1, description="relative +- jitter of the frame spacing")
    speed_variation: float = Field(0.3, ge=0, lt=1, description="relative +- smooth variation of the speed along a run")
    heading_jitter_deg: float = Field(
        2.5, ge=0, le=45, description="standard deviation of the smooth heading jitter (deg)")
    lateral_jitter_m: float = Field(
        0.35, ge=0, le=5, description="standard deviation of the smooth offset within the lane (m)"
    )
    corner_radius_m: float = Field(
        10.0, ge=0, le=100, description="radius of the rounded corners of the route's centre line (m)"
    )
    runs: list[RunConfig] = Field(
        default_factory=lambda: [RunConfig()], min_length=1, max_length=100, description="traversals to render"
    )
    odometry_drift: OdometryDriftConfig | None = Field(
        None, description="also write drifting odometry (OdometryDriftConfig.topic) into the bags; None: only the "
        "ground-truth /odom"
    )

    @model_validator(mode="after")
    def _check(self) -> "WorldConfig":
        for i, r in enumerate(self.runs):
            if r.lane >= self.town.lanes_per_direction:
                raise ValueError(f"runs[{i}].lane={r.lane} but the town has {self.town.lanes_per_direction} "
                                 "lanes per direction")
        ids = self.run_ids()
        if len(set(ids)) != len(ids):
            raise ValueError(f"run names must be unique, got {ids}")
        if self.estimated_frames() > MAX_FRAMES:
            raise ValueError(f"about {self.estimated_frames():.3g} frames (town size x laps / frame_spacing_m); "
                             f"at most {MAX_FRAMES} are generated: use fewer runs or laps, a smaller town or a "
                             "larger frame_spacing_m")
        return self

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler) -> dict:
        # Without drift the dump (world.json, the demo's world cache key) is what it was before the option existed.
        data = handler(self)
        if data.get("odometry_drift", "") is None:
            del data["odometry_drift"]
        return data

    def estimated_frames(self) -> float:
        """An upper estimate of the frames of all runs: the route visits every street intersection once per lap."""
        t = self.town
        pitch = t.block_size_m + t.block_jitter_m + 2 * (t.lanes_per_direction * t.lane_width_m + t.parking_width_m)
        route_m = (t.blocks_x + 1) * (t.blocks_y + 1) * pitch
        return sum(r.laps for r in self.runs) * route_m / self.frame_spacing_m

    def run_ids(self) -> list[str]:
        """Folder names of the runs, in order."""
        return [r.name or f"run{i:02d}_{r.condition.name}" for i, r in enumerate(self.runs)]


def _run(tod="day", weather="clear", season="summer", **kw) -> RunConfig:
    return RunConfig(condition=Condition(time_of_day=tod, weather=weather, season=season), **kw)


PRESETS: dict[str, WorldConfig] = {
    # Tests: a two-block town, three short runs (~25 frames each) of small images; seconds to make.
    "tiny": WorldConfig(
        town=TownConfig(blocks_x=2, blocks_y=1, block_size_m=30.0, block_jitter_m=4.0, border_m=18.0, park_fraction=0.0,
                        lot_fraction=0.0),
        camera=CameraConfig(width=160, height=120),
        lidar=LidarConfig(beams=16, columns=512),
        traffic=TrafficConfig(vehicles_per_km=40.0, pedestrians_per_km=60.0, lead_vehicle_fraction=0.5),
        regions=RegionConfig(fractions={"train": 0.5, "val": 0.25, "test": 0.25}, gap_m=8.0),
        frame_spacing_m=12.0,
        runs=[
            _run("day", direction=1, lane=0, start_offset_m=0.0, day=0),
            _run("night", direction=1, lane=0, start_offset_m=0.0, day=2),
            _run("day", "rain", "winter", direction=-1, lane=1, start_offset_m=40.0, day=200),
        ],
    ),
    # The demo: a 5x3-block town, eight ~350-frame loops in both directions, lanes and all conditions.
    "default": WorldConfig(
        runs=[
            _run("day", direction=1, lane=0, day=0),
            _run("day", direction=-1, lane=1, day=1, speed_mps=10.0),
            _run("dusk", direction=1, lane=1, day=3, laps=1.15),
            _run("night", direction=-1, lane=0, day=6, speed_mps=8.0),
            _run("day", "fog", direction=1, lane=0, day=9),
            _run("day", "rain", direction=-1, lane=1, day=13, speed_mps=7.5),
            _run("day", season="autumn", direction=1, lane=1, day=120),
            _run("day", season="winter", direction=-1, lane=0, day=215, laps=1.15),
        ],
    ),
    # Bigger town, VGA images, a 64-beam LiDAR, more runs (tens of GB; takes long).
    "large": WorldConfig(
        town=TownConfig(blocks_x=8, blocks_y=5),
        camera=CameraConfig(width=640, height=480),
        lidar=LidarConfig(beams=64, columns=1024),
        frame_spacing_m=3.0,
        runs=[
            _run("day", direction=1, lane=0, day=0),
            _run("day", direction=-1, lane=1, day=1),
            _run("day", direction=1, lane=1, day=2, laps=1.2),
            _run("dusk", direction=1, lane=0, day=3),
            _run("dusk", "rain", direction=-1, lane=0, day=5),
            _run("night", direction=-1, lane=1, day=6),
            _run("night", "rain", direction=1, lane=1, day=8),
            _run("day", "fog", direction=1, lane=0, day=9),
            _run("day", season="autumn", direction=-1, lane=0, day=120),
            _run("day", "fog", "winter", direction=1, lane=1, day=215),
            _run("night", season="winter", direction=-1, lane=1, day=220),
        ],
    ),
}


# Multi-town experiments: a 4x2-block town, five one-loop runs (day both ways, dusk, night, rain), no fog or
# seasons; the town's look is drawn from the seed (see _town_family), so towns of different seeds differ in
# more than the random layout. About a third of the default world's frames.
PRESETS["town"] = WorldConfig(
    town=TownConfig(blocks_x=4, blocks_y=2),
    runs=[
        _run("day", direction=1, lane=0, day=0),
        _run("day", direction=-1, lane=1, day=1, speed_mps=10.0),
        _run("dusk", direction=1, lane=1, day=3),
        _run("night", direction=-1, lane=0, day=6, speed_mps=8.0),
        _run("day", "rain", direction=1, lane=0, day=13, speed_mps=7.5),
    ],
)

_FACADE_KINDS = ("windows", "glass", "bands", "brick", "plain")


def _town_family(seed: int) -> dict:
    """TownConfig values drawn from ``seed``: block size and irregularity, building heights, widths and
    setbacks, which facade kinds (and so which wall colours) the town uses, tree, park, lot, lamp and
    parked-car densities. Deterministic; applied under the YAML overrides."""
    rng = np.random.default_rng([seed, 0x70776E])
    low = float(rng.uniform(4.0, 9.0))
    width = float(rng.uniform(7.0, 14.0))
    return {
        "block_size_m": round(float(rng.uniform(38.0, 56.0)), 1),
        "block_jitter_m": round(float(rng.uniform(4.0, 14.0)), 1),
        "building_height_m": [round(low, 1), round(low + float(rng.uniform(10.0, 30.0)), 1)],
        "building_width_m": [round(width, 1), round(width + float(rng.uniform(8.0, 18.0)), 1)],
        "building_setback_m": [0.0, round(float(rng.uniform(0.5, 5.0)), 1)],
        "alley_probability": round(float(rng.uniform(0.05, 0.45)), 2),
        "facade_kinds": sorted(rng.choice(_FACADE_KINDS, size=int(rng.integers(2, 5)), replace=False).tolist(),
                               key=_FACADE_KINDS.index),
        "park_fraction": round(float(rng.uniform(0.0, 0.25)), 2),
        "lot_fraction": round(float(rng.uniform(0.0, 0.15)), 2),
        "tree_spacing_m": round(float(rng.uniform(8.0, 16.0)), 1),
        "tree_probability": round(float(rng.uniform(0.2, 0.85)), 2),
        "pole_spacing_m": round(float(rng.uniform(24.0, 40.0)), 1),
        "parked_vehicle_probability": round(float(rng.uniform(0.2, 0.7)), 2),
    }


#: Presets whose town parameters are drawn from the seed (the others vary only the random layout).
SEED_VARIED_PRESETS = {"town": _town_family}


def load_world_config(preset: str = "default", config_file: Path | None = None, seed: int | None = None) -> WorldConfig:
    """The preset's config, overridden by the YAML file's values, then by ``seed`` when given.

    For presets in :data:`SEED_VARIED_PRESETS` (``town``), the town parameters drawn from the effective
    seed (``seed``, else the YAML file's, else the preset's) come first, under the YAML file's values.

    Raises ``ValueError`` for an unknown preset and :class:`DataError` naming the file when the
    YAML file is missing, unreadable or not a valid override (one line, with the closest valid key for a typo).
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown world preset {preset!r}; choose one of {sorted(PRESETS)}")
    data = PRESETS[preset].model_dump(mode="json")
    override = {}
    if config_file is not None:
        try:
            override = load_yaml(config_file)
        except (OSError, ValueError) as e:
            problem = str(e).removeprefix(f"{config_file}: ")
            raise DataError(config_file, f"cannot read the world config: {problem}") from None
    if preset in SEED_VARIED_PRESETS:
        effective = seed if seed is not None else (override or {}).get("seed", data["seed"])
        data = merge_config(data, {"town": SEED_VARIED_PRESETS[preset](int(effective))})
    if config_file is not None:
        data = merge_config(data, override)
    if seed is not None:
        data["seed"] = int(seed)
    try:
        return validate_config(WorldConfig, data)
    except ValueError as e:
        raise DataError(config_file, f"invalid world config: {e}") from None
