"""The nodes as lifecycle (managed) nodes, driven over DDS by our own lifecycle client (the services that
``ros2 lifecycle`` and Nav2's lifecycle manager call): each node in its own process with ``autostart:=false``."""

import os
import subprocess
import sys

import pytest

rclpy = pytest.importorskip("rclpy")

from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

from distilvpr_ros.mapping.database import PlaceDatabase  # noqa: E402
from distilvpr_ros.ros.messages import image_msg  # noqa: E402
from distilvpr_ros.ros.localization_node import LocalizationNode  # noqa: E402
from distilvpr_ros.ros.diagnostics import ERROR, OK  # noqa: E402
from test_ros_nodes import Probe, SensorPublisher, frame, make_assets, spin_until  # noqa: E402

pytestmark = pytest.mark.ros


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.mktemp("lifecycle_assets"))


class LifecycleClient:
    """``ChangeState`` / ``GetState`` of one node, called over DDS."""

    def __init__(self, node, executor, target: str):
        self.node, self.executor = node, executor
        self.change = node.create_client(ChangeState, f"{target}/change_state")
        self.get = node.create_client(GetState, f"{target}/get_state")

    def _call(self, client, request, timeout=30.0):
        assert client.wait_for_service(timeout_sec=timeout), f"{client.srv_name} not available"
        future = client.call_async(request)
        assert spin_until(self.executor, future.done, timeout=timeout), f"{client.srv_name} did not answer"
        return future.result()

    def state(self) -> str:
        return self._call(self.get, GetState.Request()).current_state.label

    def transition(self, transition_id: int) -> bool:
        return self._call(self.change, ChangeState.Request(transition=Transition(id=transition_id))).success


NAMESPACE = "lifecycle_test"  # its own namespace: no service name shared with the nodes of earlier tests


def start_node(module: str, params: dict) -> subprocess.Popen:
    cmd = [sys.executable, "-m", module, "--ros-args", "-r", f"__ns:=/{NAMESPACE}", "-p", "autostart:=false"]
    for k, v in params.items():
        cmd += ["-p", f"{k}:={v}"]
    return subprocess.Popen(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.fixture
def ros_context():
    rclpy.init()
    node = rclpy.create_node("lifecycle_probe", namespace=NAMESPACE)
    executor = SingleThreadedExecutor()
    nodes = [node]

    def add(n):
        nodes.append(n)
        executor.add_node(n)
        return n

    executor.add_node(node)
    yield node, executor, add
    for n in nodes:
        executor.remove_node(n)
        n.destroy_node()
    rclpy.try_shutdown()


def stop(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.terminate()
    try:
        out, _ = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out


def test_localization_node_transitions(ros_context, assets):
    node, executor, add = ros_context
    proc = start_node("distilvpr_ros.ros.localization_node", {
        "map.path": assets["map"], "models.student_checkpoint": assets["student"], "matcher.sequence_length": 1,
        "diagnostics.period_s": 0.2})
    try:
        probe = Probe(add, NAMESPACE)
        lc = LifecycleClient(node, executor, "distilvpr_localization")
        rgb, _ = frame(4)
        stamps = iter(1000.0 + 0.1 * i for i in range(10000))

        def publish():
            probe.image_pub.publish(image_msg(rgb, next(stamps), "camera_optical"))

        def outputs_while_publishing(seconds: float) -> int:
            n = len(probe.got["cands"])
            spin_until(executor, lambda: False, timeout=seconds, each=publish, period=0.1)
            return len(probe.got["cands"]) - n

        assert lc.state() == "unconfigured"
        assert spin_until(executor, lambda: probe.has_status("distilvpr_localization", OK, "unconfigured"), timeout=10)
        assert lc.transition(Transition.TRANSITION_CONFIGURE) and lc.state() == "inactive"
        assert probe.image_pub.get_subscription_count() == 0  # no camera subscription before activation
        assert lc.transition(Transition.TRANSITION_ACTIVATE) and lc.state() == "active"
        assert spin_until(executor, lambda: len(probe.got["cands"]) >= 3, timeout=20, each=publish), \
            "no outputs while active"
        assert lc.transition(Transition.TRANSITION_DEACTIVATE) and lc.state() == "inactive"
        spin_until(executor, lambda: False, timeout=0.5)  # outputs already in flight arrive
        assert probe.image_pub.get_subscription_count() == 0
        assert outputs_while_publishing(1.5) == 0, "outputs while inactive"
        assert lc.transition(Transition.TRANSITION_ACTIVATE)  # and back: the same node works again
        assert spin_until(executor, lambda: len(probe.got["cands"]) >= 1 and outputs_while_publishing(0.3) > 0,
                          timeout=20), "no outputs after re-activation"
        assert lc.transition(Transition.TRANSITION_DEACTIVATE)
        assert lc.transition(Transition.TRANSITION_CLEANUP) and lc.state() == "unconfigured"
        assert lc.transition(Transition.TRANSITION_UNCONFIGURED_SHUTDOWN) and lc.state() == "finalized"
        assert proc.poll() is None  # finalized, not dead: the process ends on a signal
    finally:
        out = stop(proc)
    assert proc.returncode == 0, out


def test_localization_configure_fails_cleanly_without_a_map(ros_context, assets, tmp_path):
    node, executor, add = ros_context
    loc = add(LocalizationNode(namespace=NAMESPACE, parameter_overrides=[
        Parameter("autostart", value=False), Parameter("map.path", value=str(tmp_path / "nowhere")),
        Parameter("models.student_checkpoint", value=str(assets["student"])),
        Parameter("diagnostics.period_s", value=0.2)]))
    probe = Probe(add, NAMESPACE)
    lc = LifecycleClient(node, executor, "distilvpr_localization")
    assert lc.state() == "unconfigured" and loc.localizer is None
    assert not lc.transition(Transition.TRANSITION_CONFIGURE)
    assert lc.state() == "unconfigured" and "nowhere" in loc.fatal
    assert spin_until(executor, lambda: probe.has_status("distilvpr_localization", ERROR, "nowhere"), timeout=10)


def test_mapping_node_transitions_and_saves_on_shutdown(ros_context, assets, tmp_path):
    node, executor, add = ros_context
    map_path = tmp_path / "lifecycle_map"
    proc = start_node("distilvpr_ros.ros.mapping_node", {
        "map.path": map_path, "models.teacher_checkpoint": assets["teacher"],
        "models.student_checkpoint": assets["student"], "keyframes.min_distance_m": 1.0, "map.save_period_s": 0.0,
        "diagnostics.period_s": 0.2, "qos.sensor_reliability": "reliable"})
    try:
        probe = Probe(add, NAMESPACE)
        sensors = SensorPublisher(probe.node)
        lc = LifecycleClient(node, executor, "distilvpr_mapping")

        def keyframes() -> int:
            statuses = probe.statuses("distilvpr_mapping")
            return int({kv.key: kv.value for kv in statuses[-1].values}.get("keyframes", 0)) if statuses else 0

        assert lc.state() == "unconfigured"
        assert lc.transition(Transition.TRANSITION_CONFIGURE) and lc.state() == "inactive"
        assert lc.transition(Transition.TRANSITION_ACTIVATE) and lc.state() == "active"
        assert spin_until(executor, lambda: keyframes() >= 3, timeout=30, each=sensors.publish, period=0.2)
        assert lc.transition(Transition.TRANSITION_DEACTIVATE) and lc.state() == "inactive"
        spin_until(executor, lambda: False, timeout=0.6)
        before = keyframes()
        spin_until(executor, lambda: False, timeout=1.5, each=sensors.publish, period=0.2)
        assert keyframes() == before  # inactive: no input taken
        assert not map_path.exists()  # autosave is off
        assert lc.transition(Transition.TRANSITION_INACTIVE_SHUTDOWN) and lc.state() == "finalized"
        assert len(PlaceDatabase.load(map_path)) == before  # on_shutdown saved the map
    finally:
        out = stop(proc)
    assert proc.returncode == 0, out
    assert "shutdown: saved" in out, out
