"""Keyframes of the mapping node at live sensor rates (issue 15 §1): a real node process fed over DDS.

What runs, per case: the mapping node as deployed (``python -m distilvpr_ros.ros.mapping_node --ros-args ...``,
its own process, its MultiThreadedExecutor) and a publisher process that plays a live robot: camera
(``sensor_msgs/Image`` rgb8 at the default world's camera size) and LiDAR (``sensor_msgs/PointCloud2``: a
synthetic spinning scan of the default world's beams x columns, rays hitting a street canyon, returns only)
at ``--pair-hz`` (10 Hz), odometry at ``--odom-hz`` (20 Hz, published ``ODOM_LAG_S`` after its stamp, as
odometry computed from the scans is), 1 m of straight travel per camera+LiDAR pair, for ``--seconds``. Each
message is published when it is due (wall clock), with the sensor QoS drivers use (best effort, depth 5;
``--reliable`` for reliable), so nothing waits for the node. Node, publisher and probe use the shipped Fast DDS
profile (``config/fastdds_large_frames.xml``, the launch argument ``dds_profile:=large_frames``): without it a
~650 kB best-effort cloud at 10 Hz is mostly lost in transport on one host (``--no-dds-profile``).

Stamps are whole seconds plus exact nanosecond offsets and odometry stamps coincide with camera stamps, so with
every odometry message in hand the keyframe gating (``keyframes.min_distance_m: 2.0``, a keyframe every 2nd pair)
has no rounding knife edge. The expected count is the gating of the sent stream through the node's own
:class:`OdometryBuffer` + :class:`Keyframer` (301 for 60 s). When an odometry message is lost, the node
interpolates across the gap and float rounding (stamps ~1.8e9 s) can put a pair 1e-6 m short of 2 m: that
keyframe moves to the next pair (a spacing of 3 pairs in ``keyframe_spacing``, nothing lost but the count).

Models: the demo's (``config/demo.yaml`` ``default`` section: teacher and student ``model.*``, i.e. the
default ModelConfig at 160x120), built untrained (inference cost does not depend on the weights), the student
exported to ONNX for the onnxruntime cases. Cases: student backend torch and onnxruntime x
``models.num_threads`` 1 and 2; torch with 2 threads while another process busy-loops (one core taken); torch
with 2 threads and a 50-deep odometry subscription (``qos_overrides./odom.subscription.depth``).

Read back: the node's ``/diagnostics`` after the stream (keyframes, pairs, drops_transport, drops_queue_full,
missing_odometry, queued_pairs and its maximum during the stream, latency p50/p99 of one keyframe), the node's
CPU time and the time its threads were runnable but waiting for a CPU (schedstat), and the saved map
(``PlaceDatabase.load`` after SIGINT, the node saves on shutdown: its length, the spacing of consecutive keyframes
in pairs, the largest keyframe position error against the track).

    nice -n 5 .venv/bin/python benchmarks/mapping_rate.py                  # 6 cases x 60 s (~10 min)
    .venv/bin/python benchmarks/mapping_rate.py --seconds 10 --cases torch-2   # smoke run

Target: >= 99 % of the expected keyframes on 2 cores with both backends.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "results" / "benchmarks" / "mapping_rate.json"
TARGET = 0.99
METRES_PER_PAIR = 1.0
MIN_DISTANCE_M = 2.0
ODOM_LAG_S = 0.03  # odometry is published this long after its stamp (computed from the scans)
LIDAR_OFFSET_NS = 13_000_000  # LiDAR stamp minus camera stamp (the default world's lidar.stamp_offset_s)
NODE_NAME = "distilvpr_mapping"
ODOM_DEPTH = {"qos_overrides./odom.subscription.depth": 50}  # odometry kept through a 2.5 s stall of the node
# name -> (student backend, models.num_threads, busy-looping processes beside the node, other node parameters)
CASES = {
    "torch-1": ("torch", 1, 0, {}),
    "torch-2": ("torch", 2, 0, {}),
    "onnxruntime-1": ("onnxruntime", 1, 0, {}),
    "onnxruntime-2": ("onnxruntime", 2, 0, {}),
    "torch-2-contention": ("torch", 2, 1, {}),
    "torch-2-odom-depth-50": ("torch", 2, 0, ODOM_DEPTH),
}
BUSY_LOOP = "while True: pass"
ANALYSIS = "<!-- analysis: kept when the benchmark rewrites this file -->"
DDS_PROFILE = ROOT / "config" / "fastdds_large_frames.xml"
DDS_PROFILE_VARIABLE, OLD_DDS_PROFILE_VARIABLE = "FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE"


# ---------------------------------------------------------------------------------------------- the stream
def stream_plan(seconds: float, pair_hz: float, odom_hz: float) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Camera stamps of the pairs and odometry stamps as ``(k, stamp offset ns)``; the pairs cover
    ``[0, seconds]``, odometry runs 0.5 s beyond the last pair."""
    pair_ns, odom_ns = round(1e9 / pair_hz), round(1e9 / odom_hz)
    pairs = [(k, k * pair_ns) for k in range(int(round(seconds * pair_hz)) + 1)]
    last = pairs[-1][1] + 500_000_000
    odom = [(j, j * odom_ns) for j in range(last // odom_ns + 1)]
    return pairs, odom


def x_at(offset_ns: int, pair_hz: float) -> float:
    """Position along the straight track (m) at a stamp offset: METRES_PER_PAIR per pair."""
    return METRES_PER_PAIR * pair_hz * offset_ns / 1e9


def expected_keyframes(base_sec: int, pairs, odom, pair_hz: float) -> int:
    """Keyframes the node should make from the sent stream: its own odometry interpolation and gating on the
    stamps and poses as they travel (message round trip), all odometry in hand."""
    from distilvpr_ros.data.geometry import pose_from_xyz_yaw
    from distilvpr_ros.pipeline.config import KeyframeConfig
    from distilvpr_ros.pipeline.keyframes import Keyframer, OdometryBuffer

    buffer = OdometryBuffer(horizon_s=1e9)
    for _, off in odom:
        buffer.add(stamp_sec(base_sec, off), pose_from_xyz_yaw(x_at(off, pair_hz), 0.0, 0.0, 0.0))
    keyframer, n = Keyframer(KeyframeConfig(min_distance_m=MIN_DISTANCE_M)), 0
    for _, off in pairs:
        t = stamp_sec(base_sec, off)
        pose = buffer.pose_at(t)
        if pose is not None and keyframer.check(pose, t).accept:
            keyframer.accept(pose, t)
            n += 1
    return n


def stamp(base_sec: int, offset_ns: int):
    """The ``builtin_interfaces/Time`` of ``base_sec`` + ``offset_ns`` (exact nanoseconds)."""
    from builtin_interfaces.msg import Time

    total = base_sec * 1_000_000_000 + offset_ns
    return Time(sec=total // 1_000_000_000, nanosec=total % 1_000_000_000)


def stamp_sec(base_sec: int, offset_ns: int) -> float:
    """The float seconds the node reads from that stamp (the conversion it uses)."""
    from distilvpr_ros.ros.messages import msg_stamp

    class Stamped:
        class header:
            pass

    Stamped.header.stamp = stamp(base_sec, offset_ns)
    return msg_stamp(Stamped)


def synthetic_scan(beams: int, columns: int, vfov_deg: tuple[float, float], max_range_m: float,
                   mount_z_m: float, seed: int) -> "np.ndarray":  # noqa: F821
    """``N x 6`` float32 (x, y, z, intensity, ring, time) of a spinning LiDAR in a street canyon: ground,
    building fronts 8-14 m to each side (6-30 m tall, gaps between buildings), returns only."""
    import numpy as np

    rng = np.random.default_rng(seed)
    elev = np.deg2rad(np.linspace(vfov_deg[0], vfov_deg[1], beams))[:, None]
    azim = np.linspace(-np.pi, np.pi, columns, endpoint=False)[None, :]
    dx, dy, dz = np.cos(elev) * np.cos(azim), np.cos(elev) * np.sin(azim), np.sin(elev) * np.ones_like(azim)
    with np.errstate(divide="ignore", invalid="ignore"):
        ground = np.where(dz < 0, mount_z_m / -dz, np.inf)
        side = np.where(dy > 0, rng.uniform(8, 14), rng.uniform(8, 14))
        wall = np.abs(side / dy)
        along = wall * dx  # where along the street the ray meets the building line
        height = 6 + 24 * ((np.sin(np.floor(along / 20.0) * 12.9898) * 43758.5453) % 1.0)  # per 20 m building
        gap = (along % 20.0) > 17.0  # alleys between buildings
        hits_wall = (~gap) & (mount_z_m + wall * dz < height)
    r = np.where(hits_wall, np.minimum(wall, ground), ground)
    r = r + rng.normal(0, 0.02, r.shape)
    ok = np.isfinite(r) & (r > 0.8) & (r < max_range_m)
    ring = np.broadcast_to(np.arange(beams)[:, None], r.shape)
    t = np.broadcast_to(np.linspace(0, 0.1, columns, endpoint=False)[None, :], r.shape)
    cloud = np.stack([(r * dx)[ok], (r * dy)[ok], (r * dz)[ok], rng.uniform(0, 1, r.shape)[ok], ring[ok], t[ok]], -1)
    return cloud.astype(np.float32)


# ---------------------------------------------------------------------------------------------- publisher
def publish(spec: dict) -> dict:
    """The publisher process: wait for the node's subscriptions, then play the stream in real time."""
    import numpy as np
    import rclpy
    from nav_msgs.msg import Odometry
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import Image, PointCloud2

    from distilvpr_ros.ros.messages import header, image_msg, pointcloud2_msg, pose_msg

    rclpy.init()
    node = rclpy.create_node("mapping_rate_sensors")
    qos = qos_profile_sensor_data
    if spec["reliable"]:
        qos = QoSProfile(depth=qos.depth, reliability=ReliabilityPolicy.RELIABLE, history=qos.history)
    odom_pub = node.create_publisher(Odometry, "odom", qos)
    cam_pub = node.create_publisher(Image, "camera/image_raw", qos)
    lidar_pub = node.create_publisher(PointCloud2, "lidar/points", qos)
    deadline = time.monotonic() + 120
    while not all(p.get_subscription_count() for p in (odom_pub, cam_pub, lidar_pub)):
        if time.monotonic() > deadline:
            raise SystemExit("the mapping node never subscribed")
        time.sleep(0.05)
    time.sleep(1.0)  # let discovery settle on both sides
    rng = np.random.default_rng(0)
    w, h = spec["camera"]
    images = [image_msg(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), 0.0, "camera_optical") for _ in range(4)]
    clouds = [pointcloud2_msg(synthetic_scan(*spec["lidar"], seed=k), 0.0, "lidar") for k in range(4)]
    base = int(time.time()) + 1  # stamps: whole seconds + exact nanosecond offsets (wall clock, as live)
    events = sorted([(off + LIDAR_OFFSET_NS * (kind == "lidar"), kind, k, off)
                     for kind in ("camera", "lidar") for k, off in spec["pairs"]]
                    + [(off + round(ODOM_LAG_S * 1e9), "odom", j, off) for j, off in spec["odom"]])
    # a last camera frame makes the last scan's pairing final (the synchroniser waits for the frame after it)
    last = spec["pairs"][-1][1] + round(1e9 / spec["pair_hz"])
    events = sorted(events + [(last, "camera", len(spec["pairs"]), last)])
    start = time.monotonic() + (base - time.time())  # monotonic time of the stamp base
    late = []
    for due_ns, kind, k, off in events:
        due = start + due_ns / 1e9
        time.sleep(max(0.0, due - time.monotonic()))
        late.append(time.monotonic() - due)
        if kind == "odom":
            msg = Odometry(header=header(0.0, "odom"), child_frame_id="base_link")
            msg.header.stamp = stamp(base, off)
            msg.pose.pose = pose_msg(np.array([x_at(off, spec["pair_hz"]), 0, 0, 0, 0, 0, 1.0]))
            odom_pub.publish(msg)
        elif kind == "camera":
            msg = images[k % len(images)]
            msg.header.stamp = stamp(base, off)
            cam_pub.publish(msg)
        else:
            msg = clouds[k % len(clouds)]
            msg.header.stamp = stamp(base, off + LIDAR_OFFSET_NS)
            lidar_pub.publish(msg)
    elapsed = time.monotonic() - start
    late_ms = np.sort(np.array(late)) * 1e3
    result = {"base_sec": base, "messages": len(events), "elapsed_s": round(elapsed, 2),
              "late_ms_p50": round(float(np.percentile(late_ms, 50)), 2),
              "late_ms_p99": round(float(np.percentile(late_ms, 99)), 2),
              "late_ms_max": round(float(late_ms[-1]), 2), "cloud_points": int(clouds[0].width),
              "cloud_bytes": len(clouds[0].data), "image_bytes": len(images[0].data)}
    time.sleep(0.5)  # let the last best-effort messages leave before the participant goes
    node.destroy_node()
    rclpy.shutdown()
    return result


# ---------------------------------------------------------------------------------------------- assets
def build_assets(folder: Path) -> dict:
    """Untrained demo-size teacher and student checkpoints and the student's ONNX export under ``folder``."""
    import torch

    from distilvpr_ros.demo.settings import load_demo_settings
    from distilvpr_ros.models.checkpoint import save_model_checkpoint
    from distilvpr_ros.models.export import export_model
    from distilvpr_ros.models.vpr import build_model
    from distilvpr_ros.training.config import TrainConfig

    settings = load_demo_settings(None, "default")
    out = {}
    for kind, role in (("teacher", "teacher"), ("camera_student", "student")):
        cfg = TrainConfig.from_yaml(None, getattr(settings, role)).model.model_copy(update={"pretrained": False})
        out[f"{role}_model"] = cfg.model_dump(mode="json")
        out[role] = folder / role
        if not (folder / role / "checkpoint.json").is_file():  # kept from an earlier run (--keep)
            torch.manual_seed(0)
            save_model_checkpoint(folder / role, build_model(kind, cfg))
    out["student_onnx"] = folder / "student.onnx"
    if not out["student_onnx"].is_file():
        export_model(out["student"], out["student_onnx"])
    return out


def sensor_sizes() -> tuple[tuple[int, int], tuple]:
    """Camera (W, H) and LiDAR (beams, columns, vfov, max range, mount height) of the demo's world preset."""
    from distilvpr_ros.data.world.config import load_world_config
    from distilvpr_ros.demo.settings import load_demo_settings

    world = load_world_config(load_demo_settings(None, "default").world)
    c, lidar = world.camera, world.lidar
    return (c.width, c.height), (lidar.beams, lidar.columns, tuple(lidar.vfov_deg), lidar.max_range_m,
                                 lidar.mount_xyz[2])


# ---------------------------------------------------------------------------------------------- one case
class Diagnostics:
    """The mapping node's ``/diagnostics`` values, read in a background executor of this process."""

    def __init__(self) -> None:
        import threading

        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor

        rclpy.init()
        self.node = rclpy.create_node("mapping_rate_probe")
        self.latest: dict = {}
        self.count = 0
        self.max_queued = 0
        self.max_waiting = 0
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 50)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while not self._stop.is_set():
            self.executor.spin_once(timeout_sec=0.05)

    def _on_diag(self, msg) -> None:
        for status in msg.status:
            if status.name.startswith(NODE_NAME):
                values = {kv.key: kv.value for kv in status.values}
                values["_message"], values["_level"] = status.message, int.from_bytes(status.level, "little") \
                    if isinstance(status.level, bytes) else int(status.level)
                self.latest = values
                self.count += 1
                self.max_queued = max(self.max_queued, int(values.get("queued_pairs", 0) or 0))
                self.max_waiting = max(self.max_waiting, int(values.get("waiting_for_odometry", 0) or 0))

    def reset_max(self) -> None:
        self.max_queued = self.max_waiting = 0

    def num(self, key: str, default: float = 0.0) -> float:
        try:
            return float(self.latest.get(key, default))
        except ValueError:
            return default

    def steady(self, hold_s: float, timeout: float) -> bool:
        """Wait until the node's queue is empty and its counts have not changed for ``hold_s``."""
        def snapshot():
            return tuple(self.latest.get(k) for k in ("pairs", "keyframes", "queued_pairs", "drops_unpaired"))

        last, since, deadline = snapshot(), time.monotonic(), time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(0.1)
            now = snapshot()
            if now != last:
                last, since = now, time.monotonic()
            elif self.num("queued_pairs") == 0 and time.monotonic() - since >= hold_s:
                return True
        return False

    def wait(self, condition, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(0.1)
        return condition()

    def close(self) -> None:
        import rclpy

        self._stop.set()
        self._thread.join(5)
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown()


def map_check(db, base_sec: int, pair_hz: float) -> dict:
    """Where keyframes went missing, from the saved map: the spacing (in pairs) between consecutive keyframes
    (``MIN_DISTANCE_M / METRES_PER_PAIR`` when nothing was lost; more after a lost pair or a pose taken from
    stale odometry) and the largest error of a keyframe's position against the track at its stamp."""
    import numpy as np

    if db is None or not len(db):
        return {"keyframe_spacing": {}, "pose_error_max_m": None}
    order = np.argsort(db.stamps)
    t = np.asarray(db.stamps)[order] - base_sec
    k = np.rint(t * pair_hz).astype(int)
    spacing, counts = np.unique(np.diff(k), return_counts=True)
    error = np.abs(np.asarray(db.poses)[order, 0] - METRES_PER_PAIR * pair_hz * t)
    return {"keyframe_spacing": {str(int(a)): int(b) for a, b in zip(spacing, counts)},
            "pose_error_max_m": round(float(error.max()), 4)}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its waited-for children so far (s; Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def runqueue_seconds(pid: int) -> float:
    """Time the process's threads spent runnable but waiting for a CPU so far (s; Linux schedstat): how much
    the rest of the machine kept the node from running."""
    total = 0
    for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        try:
            total += int(stat.read_text().split()[1])
        except (OSError, IndexError, ValueError):  # a thread that just exited
            pass
    return total / 1e9


def run_case(name: str, assets: dict, args, work: Path, camera, lidar) -> dict:
    from distilvpr_ros.mapping.database import PlaceDatabase

    backend, threads, busy, extra = CASES[name]
    map_path = work / f"map_{name}"
    log_path = work / f"node_{name}.log"
    params = {"map.path": str(map_path), "map.save_period_s": 0.0, "models.teacher_checkpoint": str(assets["teacher"]),
              "models.student_checkpoint": str(assets["student"]), "models.student_onnx": str(assets["student_onnx"]),
              "models.backend": backend, "models.num_threads": threads, "keyframes.min_distance_m": MIN_DISTANCE_M,
              "diagnostics.period_s": 0.5, **extra}
    if args.reliable:
        params["qos.sensor_reliability"] = "reliable"
    cmd = [sys.executable, "-m", "distilvpr_ros.ros.mapping_node", "--ros-args"]
    for key, value in params.items():
        cmd += ["-p", f"{key}:={value}"]
    shutil.rmtree(map_path, ignore_errors=True)  # a fresh map (the node would resume one)
    busy_procs = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(busy)]
    load_before = os.getloadavg()
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    diag = Diagnostics()
    row: dict = {"case": name, "backend": backend, "num_threads": threads, "busy_loops": busy, "parameters": extra}
    try:
        if not diag.wait(lambda: diag.latest.get("state") == "active" or proc.poll() is not None, 120):
            raise RuntimeError(f"{name}: the node did not become active; log {log_path}")
        if proc.poll() is not None:
            raise RuntimeError(f"{name}: the node exited ({proc.returncode}); log {log_path}")
        pairs, odom = stream_plan(args.seconds, args.pair_hz, args.odom_hz)
        spec = {"pairs": pairs, "odom": odom, "camera": camera, "lidar": lidar, "pair_hz": args.pair_hz,
                "reliable": args.reliable}
        spec_file = work / f"stream_{name}.json"
        spec_file.write_text(json.dumps(spec))
        diag.reset_max()
        cpu_before, wait_before = cpu_seconds(proc.pid), runqueue_seconds(proc.pid)
        pub = subprocess.run([sys.executable, __file__, "--publish", str(spec_file)], capture_output=True, text=True,
                             timeout=args.seconds + 180)
        if pub.returncode != 0:
            raise RuntimeError(f"{name}: publisher failed: {pub.stderr[-2000:]}")
        sent = json.loads(pub.stdout.strip().splitlines()[-1])
        expected = expected_keyframes(sent["base_sec"], pairs, odom, args.pair_hz)
        # the node catches up: its queue empty and its counts unchanged for 3 s (or every pair in and 2 more reports)
        settled = diag.wait(lambda: diag.num("pairs") + diag.num("drops_unpaired") >= len(pairs)
                            and diag.num("queued_pairs") == 0, 5) or diag.steady(3.0, 60)
        n = diag.count
        diag.wait(lambda: diag.count >= n + 2, 5)
        cpu_s = cpu_seconds(proc.pid) - cpu_before
        wait_s = runqueue_seconds(proc.pid) - wait_before
        live = dict(diag.latest)
        max_queued, max_waiting = diag.max_queued, diag.max_waiting
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
        db = PlaceDatabase.load(map_path) if map_path.exists() else None
        saved = len(db) if db is not None else 0
    finally:
        diag.close()
        for p in [proc, *busy_procs]:
            if p.poll() is None:
                p.kill()
                p.wait()
        log.close()
    load_after = os.getloadavg()
    keyframes = int(float(live.get("keyframes", 0)))
    row.update(map_check(db, sent["base_sec"], args.pair_hz))
    row.update({
        "pairs_sent": len(pairs), "odometry_sent": len(odom), "expected_keyframes": expected,
        "keyframes": keyframes, "saved_keyframes": saved, "ratio": saved / expected if expected else 0.0,
        "pairs": int(float(live.get("pairs", 0))), "drops_unpaired": int(float(live.get("drops_unpaired", 0))),
        "drops_transport": int(float(live.get("drops_transport", 0))),
        "drops_queue_full": int(float(live.get("drops_queue_full", 0))),
        "missing_odometry": int(float(live.get("missing_odometry", 0))),
        "queued_pairs_end": int(float(live.get("queued_pairs", 0))), "queued_pairs_max": max_queued,
        "waiting_for_odometry_max": max_waiting,
        "latency_ms_p50": float(live.get("latency_ms_p50", "nan")),
        "latency_ms_p99": float(live.get("latency_ms_p99", "nan")),
        "settled": settled, "node_cpu_s": round(cpu_s, 1), "node_runqueue_wait_s": round(wait_s, 1),
        "node_cpu_ms_per_keyframe": round(1e3 * cpu_s / max(keyframes, 1), 1),
        "diagnostic": live.get("_message", ""), "last_error": live.get("last_error", ""),
        "publisher": sent, "diagnostics": {k: v for k, v in live.items() if not k.startswith("_")},
        "load_before": [round(v, 2) for v in load_before],
        "load_after": [round(v, 2) for v in load_after], "node_returncode": proc.returncode,
    })
    return row


COLUMNS = {"case": "case", "expected_keyframes": "expected", "keyframes": "live", "saved_keyframes": "saved map",
           "ratio": "saved / expected", "pairs": "pairs", "drops_transport": "drops_transport",
           "drops_queue_full": "drops_queue_full",
           "missing_odometry": "missing_odometry", "queued_pairs_max": "max queued", "latency_ms_p50": "p50 ms",
           "latency_ms_p99": "p99 ms",
           "node_cpu_s": "node CPU s", "node_runqueue_wait_s": "node waited for a CPU s",
           "keyframe_spacing": "keyframe spacing (pairs: count)"}


def write_report(result: dict, out: Path) -> None:
    from distilvpr_ros.evaluation.report import markdown_table
    from distilvpr_ros.utils.results import write_json

    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result)
    rows = [{**row, "keyframe_spacing": ", ".join(f"{k}: {v}" for k, v in row["keyframe_spacing"].items())}
            for row in result["cases"]]
    table = markdown_table(rows, COLUMNS, {"ratio": ".3f", "latency_ms_p50": ".0f", "latency_ms_p99": ".0f",
                                           "node_cpu_s": ".1f", "node_runqueue_wait_s": ".1f"})
    s = result["setup"]
    lines = [
        "# Mapping node at live sensor rates", "",
        f"Command: `{result['command']}`", "",
        f"{s['seconds']:g} s of {s['camera'][0]}x{s['camera'][1]} rgb8 camera + PointCloud2 LiDAR "
        f"({s['cloud_points']} points) at {s['pair_hz']:g} Hz and odometry at {s['odom_hz']:g} Hz "
        f"({s['metres_per_pair']:g} m per pair, keyframes.min_distance_m {s['min_distance_m']:g}) published over DDS "
        f"({'reliable' if s['reliable'] else 'best effort, depth 5'}, Fast DDS profile {s['dds_profile']}) into the "
        f"mapping node process. Untrained "
        f"demo-size teacher and student ({s['image_size'][0]}x{s['image_size'][1]}). {s['cpus']} cores; load "
        f"average {result['load_before'][0]:.2f} before, {result['load_after'][0]:.2f} after (other work on the "
        f"machine); run with nice {s['nice']}.", "",
        "`live`: the node's keyframe count on /diagnostics once it has caught up; `saved map`: the map saved on "
        "SIGINT; `p50/p99 ms`: one keyframe through both networks, the map and the matcher; `node waited for a "
        "CPU`: the node's threads runnable but not running during the stream (schedstat): the load average does not "
        "show priorities, this does.", "",
        table, "",
    ]
    lines += [f"- {line}" for line in findings(result)]
    md = out.with_suffix(".md")
    kept = md.read_text().partition(ANALYSIS)[2] if md.is_file() and ANALYSIS in md.read_text() else ""
    md.write_text("\n".join(lines).rstrip() + "\n" + (f"\n{ANALYSIS}{kept}" if kept else ""))


def findings(result: dict) -> list[str]:
    """One line per case: target met or not, and where the missing keyframes went."""
    out = []
    for row in result["cases"]:
        lost = row["expected_keyframes"] - row["saved_keyframes"]
        spacing = {int(k): v for k, v in row["keyframe_spacing"].items()}
        wide = sum(v for k, v in spacing.items() if k > MIN_DISTANCE_M / METRES_PER_PAIR)
        verdict = "meets" if row["ratio"] >= TARGET else "misses"
        out.append(f"{row['case']}: {100 * row['ratio']:.1f} % of the expected keyframes ({verdict} the "
                   f"{100 * TARGET:.0f} % target); {lost} missing: {row['pairs_sent'] - row['pairs']} pairs never "
                   f"formed (drops_transport {row['drops_transport']}, drops_unpaired {row['drops_unpaired']}), "
                   f"{wide} wider keyframe gaps, missing_odometry {row['missing_odometry']}, drops_queue_full "
                   f"{row['drops_queue_full']}; largest keyframe pose error {row['pose_error_max_m']} m; node CPU "
                   f"{row['node_cpu_ms_per_keyframe']:.0f} ms per keyframe, {row['node_runqueue_wait_s']:.1f} s "
                   f"runnable but waiting for a CPU; publisher up to {row['publisher']['late_ms_max']:.0f} ms late; "
                   f"load average {row['load_before'][0]:.1f}")
    return out


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--publish":  # the publisher process
        print(json.dumps(publish(json.loads(Path(sys.argv[2]).read_text()))), flush=True)
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="length of the stream per case (s)")
    ap.add_argument("--pair-hz", type=float, default=10.0, help="camera+LiDAR rate (Hz)")
    ap.add_argument("--odom-hz", type=float, default=20.0, help="odometry rate (Hz)")
    ap.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES), help="cases to run")
    ap.add_argument("--reliable", action="store_true", help="reliable sensor QoS (default: best effort, as drivers)")
    ap.add_argument("--no-dds-profile", action="store_true",
                    help="without the shipped Fast DDS profile (config/fastdds_large_frames.xml, what the launch "
                         "argument dds_profile:=large_frames sets); best-effort clouds are then lost in transport")
    ap.add_argument("--out", type=Path, default=OUT, help="JSON result (a .md beside it)")
    ap.add_argument("--keep", type=Path, default=None, help="keep models, maps and node logs in this folder")
    args = ap.parse_args()
    # a domain of our own: no message from other processes on this machine reaches the node, nor ours theirs
    os.environ["ROS_DOMAIN_ID"] = str(30 + os.getpid() % 60)
    os.environ.pop(OLD_DDS_PROFILE_VARIABLE, None)  # deprecated name (Fast DDS warns)
    os.environ.pop(DDS_PROFILE_VARIABLE, None)
    if not args.no_dds_profile:  # read at participant creation: node, publisher and probe alike
        os.environ[DDS_PROFILE_VARIABLE] = str(DDS_PROFILE)
    camera, lidar = sensor_sizes()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="mapping_rate_") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        assets = build_assets(work / "models")
        rows = []
        for name in args.cases:
            row = run_case(name, assets, args, work, camera, lidar)
            rows.append(row)
            print(f"{name:>20}: {row['saved_keyframes']}/{row['expected_keyframes']} keyframes saved "
                  f"({100 * row['ratio']:.1f} %), live {row['keyframes']}, pairs {row['pairs']}/{row['pairs_sent']}, "
                  f"drops_transport {row['drops_transport']}, drops_queue_full {row['drops_queue_full']}, "
                  f"missing_odometry {row['missing_odometry']}, "
                  f"max queued {row['queued_pairs_max']}, latency p50/p99 {row['latency_ms_p50']:.0f}/"
                  f"{row['latency_ms_p99']:.0f} ms, load {row['load_before'][0]:.1f}", flush=True)
    cloud_points = rows[0]["publisher"]["cloud_points"] if rows else 0
    result = {
        "command": (f"nice -n {os.nice(0)} " if os.nice(0) else "") + " ".join(
            [".venv/bin/python", "benchmarks/mapping_rate.py", *sys.argv[1:]]),
        "setup": {"seconds": args.seconds, "pair_hz": args.pair_hz, "odom_hz": args.odom_hz,
                  "metres_per_pair": METRES_PER_PAIR, "min_distance_m": MIN_DISTANCE_M, "odom_lag_s": ODOM_LAG_S,
                  "camera": list(camera), "lidar_beams_columns": list(lidar[:2]), "cloud_points": cloud_points,
                  "image_size": assets["student_model"]["image_size"], "reliable": args.reliable,
                  "dds_profile": None if args.no_dds_profile else DDS_PROFILE.name, "cpus": os.cpu_count(),
                  "nice": os.nice(0), "target": TARGET},
        "load_before": [round(v, 2) for v in load_before],
        "load_after": [round(v, 2) for v in os.getloadavg()],
        "cases": rows,
    }
    write_report(result, args.out)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
