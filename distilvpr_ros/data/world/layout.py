"""Names in a generated world folder, shared by the writer (:mod:`.generate`) and the reader
(:mod:`distilvpr_ros.data.synthetic`), which must not need open3d."""

WORLD_VERSION = 1
WORLD_JSON = "world.json"
RUNS_DIR = "runs"
BAGS_DIR = "bags"
POSES_CSV = "poses.csv"
RUN_JSON = "run.json"
IMAGES_DIR = "images"
CLOUDS_DIR = "clouds"
CSV_COLUMNS = ("index", "timestamp", "easting", "northing", "yaw", "x", "y", "z", "qx", "qy", "qz", "qw",
               "direction", "lane", "condition", "dynamic_fraction", "region", "speed")


def frame_name(k: int) -> str:
    """File stem of frame ``k`` (``000042``)."""
    return f"{k:06d}"
