"""Camera-student latency under CPU contention with and without ``OMP_WAIT_POLICY=PASSIVE``.

For each policy (``unset``: libgomp's default spin-then-sleep, ``PASSIVE``: what the CLI and the nodes set,
``ACTIVE``), a fresh process loads a random-weight camera student (EfficientNet-Lite0 + GeM, ``--size``
input) with ``--threads`` torch threads and times ``--frames`` single-image forwards (after 10 warm-up
frames) while ``--load`` busy-looping processes compete for the CPU (besides whatever else runs: the
1-minute load average before each run is recorded). Reports p50 / p90 / p99 in ms.

    .venv/bin/python benchmarks/omp_wait_policy.py --threads 2 --load 2 --out $DOCS/omp_wait_policy.json

(``DOCS=docs/results/benchmarks``.) The numbers depend on the machine and on whatever else runs on it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

CHILD = """
import json, sys, time
import numpy as np, torch
from distilvpr_ros.models import ModelConfig, build_model
threads, width, height, frames = map(int, sys.argv[1:5])
torch.set_num_threads(threads)
model = build_model("camera_student", ModelConfig(image_size=(width, height), pretrained=False)).eval()
x = torch.rand(1, 3, height, width)
times = []
with torch.inference_mode():
    for i in range(frames + 10):
        t0 = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - t0)
t = np.array(times[10:]) * 1000.0
print(json.dumps({f"latency_ms_p{q}": round(float(np.percentile(t, q)), 1) for q in (50, 90, 99)}))
"""


def _busy(stop_at: float) -> None:
    while time.time() < stop_at:
        pass


def run(policy: str, threads: int, size: tuple[int, int], frames: int, load: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy != "unset":
        env["OMP_WAIT_POLICY"] = policy
    busy = [mp.Process(target=_busy, args=(time.time() + 3600,), daemon=True) for _ in range(load)]
    for p in busy:
        p.start()
    try:
        load_avg = os.getloadavg()[0]
        started = time.monotonic()
        out = subprocess.run([sys.executable, "-c", CHILD, str(threads), *map(str, size), str(frames)], env=env,
                             capture_output=True, text=True, check=True).stdout
    finally:
        for p in busy:
            p.terminate()
    return {"policy": policy, **json.loads(out.strip().splitlines()[-1]),
            "wall_s": round(time.monotonic() - started, 1), "load_average_1min_before": round(load_avg, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the measured process")
    ap.add_argument("--load", type=int, default=2, help="busy-looping processes competing for the CPU")
    ap.add_argument("--size", type=int, nargs=2, default=(160, 120), metavar=("W", "H"))
    ap.add_argument("--frames", type=int, default=50)
    ap.add_argument("--policies", nargs="+", default=["unset", "PASSIVE", "ACTIVE"])
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args()
    rows = [run(p, args.threads, tuple(args.size), args.frames, args.load) for p in args.policies]
    result = {"threads": args.threads, "load_processes": args.load, "cpus": os.cpu_count(), "size": args.size,
              "frames": args.frames, "results": rows}
    print(json.dumps(result, indent=2))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
