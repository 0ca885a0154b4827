"""Large camera frames over DDS on one host: the loss of best-effort frames with and without the shipped
Fast DDS profile (config/fastdds_large_frames.xml).

A publisher process sends ``sensor_msgs/Image`` rgb8 frames at a fixed rate with the sensor QoS the nodes
use (best effort, keep last 5); a subscriber process counts what arrives. Each case runs in fresh
processes, so the profile (an environment variable read at participant creation) applies to both ends.

    .venv/bin/python benchmarks/large_frames.py [--seconds 10] [--out results/benchmarks/large_frames.json]

Prints a table and writes JSON: per case, frames sent / received and the loss rate.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "config" / "fastdds_large_frames.xml"
CASES = [(640, 480, 30.0), (1280, 720, 30.0), (1920, 1080, 10.0)]

CHILD = r'''
import json, sys, time
import numpy as np
import rclpy
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image

role, topic = sys.argv[1], sys.argv[6]
width, height, hz, seconds = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
rclpy.init()
node = rclpy.create_node(f"large_frames_{role}")
if role == "sub":
    got = []
    node.create_subscription(Image, topic, lambda m: got.append(m.header.frame_id), qos_profile_sensor_data)
    print("ready", flush=True)
    end = None
    while True:
        rclpy.spin_once(node, timeout_sec=0.05)
        if got and end is None:
            end = time.monotonic() + seconds + 3.0
        if end is not None and time.monotonic() > end:
            break
    print(json.dumps({"received": len(set(got))}), flush=True)
else:
    pub = node.create_publisher(Image, topic, qos_profile_sensor_data)
    deadline = time.monotonic() + 15.0
    while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.05)
    time.sleep(1.0)  # let discovery settle on both sides
    msg = Image(height=height, width=width, encoding="rgb8", step=width * 3)
    msg.data = np.random.default_rng(0).integers(0, 255, height * width * 3, dtype=np.uint8).tobytes()
    n = int(seconds * hz)
    t0 = time.monotonic()
    for i in range(n):
        msg.header.frame_id = str(i)
        pub.publish(msg)
        time.sleep(max(0.0, t0 + (i + 1) / hz - time.monotonic()))
    print(json.dumps({"sent": n}), flush=True)
node.destroy_node()
rclpy.shutdown()
'''


def run_case(width: int, height: int, hz: float, seconds: float, profile: bool) -> dict:
    env = dict(os.environ)
    for key in ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE"):
        env.pop(key, None)
        if profile:
            env[key] = str(PROFILE)
    env["ROS_DOMAIN_ID"] = str(100 + os.getpid() % 100)
    topic = f"/large_frames_{width}x{height}"
    args = [str(width), str(height), str(hz), str(seconds), topic]
    sub = subprocess.Popen([sys.executable, "-c", CHILD, "sub", *args], env=env, stdout=subprocess.PIPE, text=True)
    assert sub.stdout.readline().strip() == "ready"
    pub = subprocess.run([sys.executable, "-c", CHILD, "pub", *args], env=env, capture_output=True, text=True,
                         timeout=seconds + 60)
    out, _ = sub.communicate(timeout=seconds + 60)
    sent = json.loads(pub.stdout.strip().splitlines()[-1])["sent"]
    received = json.loads(out.strip().splitlines()[-1])["received"]
    return {"width": width, "height": height, "hz": hz, "profile": profile, "sent": sent, "received": received,
            "loss": 1.0 - received / sent}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="publishing time per case (s)")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "benchmarks" / "large_frames.json")
    args = ap.parse_args()
    rows = []
    for width, height, hz in CASES:
        for profile in (False, True):
            row = run_case(width, height, hz, args.seconds, profile)
            rows.append(row)
            print(f"{width}x{height} @ {hz:g} Hz, profile {'on ' if profile else 'off'}: "
                  f"{row['received']}/{row['sent']} received, loss {100 * row['loss']:.1f} %", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"seconds": args.seconds, "cases": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
