"""A node run as deployed, in its own process: ``python -m <module> --ros-args --params-file ... -r __ns:=...``.

Its inference then never waits for the GIL of whoever drives it (the replay tools' player and recorder).
"""

from __future__ import annotations

import math
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from ..pipeline.config import NodeConfig
from .params import ros_values


class ReplayError(RuntimeError):
    """The node did not start, reported an error or died; the message says why (and where its log is)."""


def write_params(cfg: NodeConfig, path: Path, use_sim_time: bool) -> Path:
    """A ROS parameter file for the node (``/**`` matches it in any namespace)."""
    params = ros_values(cfg)
    params["use_sim_time"] = use_sim_time
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": params}}, sort_keys=False))
    return path


class NodeProcess:
    """The node of ``module`` (e.g. ``distilvpr_ros.ros.localization_node``) as a child process with the
    parameters of ``params_file`` in ``namespace``; its output goes to ``log``."""

    def __init__(self, module: str, params_file: Path, namespace: str, log: Path) -> None:
        self.log_path = log
        self._log = open(log, "w")
        cmd = [sys.executable, "-m", module, "--ros-args",
               "--params-file", str(params_file), "-r", f"__ns:={namespace}"]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)

    def rss_mb(self) -> float:
        """Resident memory of the node (MB; NaN when unknown)."""
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration, ValueError):
            return math.nan

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> int:
        """SIGINT (the node shuts down cleanly: a mapping node saves its map), SIGKILL after ``timeout`` s."""
        if self.alive():
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode
