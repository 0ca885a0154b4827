"""Lifecycle (managed) node plumbing shared by the mapping and localisation nodes (:class:`ManagedNode`),
and their ``main()`` (:func:`run_managed`).

States (``rclpy.lifecycle``; ``ros2 lifecycle set``, Nav2's lifecycle manager or any
``lifecycle_msgs/srv/ChangeState`` client drive them)
    * ``configure``: read the parameters, load the models and the map, create the output publishers
      (lifecycle publishers: they publish only while active). A model or map that cannot be loaded fails
      the transition: the node stays *unconfigured* with an ERROR diagnostic saying why.
    * ``activate``: enable the publishers, create the input subscriptions and the timers.
    * ``deactivate``: destroy the subscriptions and timers (a subclass finishes the work already received),
      disable the publishers.
    * ``cleanup``: release the models and the map (the mapping node saves it first), destroy the publishers.
    * ``shutdown`` (from any primary state): whatever of deactivate and cleanup applies; the mapping node
      saves its map here.

    ``/diagnostics`` (and the ``~/`` services) exist in every state, so a node that failed to configure still
    says why, and ``~/reload`` can bring it up once the files are there.

Auto-start
    The ``autostart`` parameter (bool, default true, read-only) configures and activates the node when it is
    constructed, so ``ros2 run``, the launch files, the replay tools and the demo work as before. Set
    ``autostart:=false`` to leave the node unconfigured for a lifecycle manager.

Shutdown
    :func:`run_managed` handles SIGINT / SIGTERM itself: the signal only ends spinning, then the node runs its
    ``shutdown`` transition while the ROS context is still up (a transition publishes its event, which fails
    after ``rclpy.shutdown``; and a second Ctrl-C cannot interrupt the map save), then the context ends.
"""

from __future__ import annotations

import copy
import inspect
import signal
import sys
import threading
from typing import Callable

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.clock import Clock, ClockType
from rclpy.executors import Executor, ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos_overriding_options import QoSOverridingOptions
from rclpy.signals import SignalHandlerOptions

from ..pipeline.config import NodeConfig
from ..pipeline.embedder import configure_threads
from .diagnostics import Diagnostics, InputWatch, ProblemLog
from .params import ParamError, declare_node_config, node_config_from_parameters, watch_node_config

SUCCESS, FAILURE = TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE
#: Primary states from which ``shutdown`` is a valid transition.
PRIMARY_STATES = ("unconfigured", "inactive", "active")


def qos_overrides() -> QoSOverridingOptions:
    """Standard QoS overrides (history, depth, reliability) for one publisher or subscription: parameters
    ``qos_overrides.<resolved topic>.{publisher,subscription}.<policy>`` win over the node's own QoS."""
    return QoSOverridingOptions.with_default_policies()


class DrainingExecutor(MultiThreadedExecutor):
    """A :class:`~rclpy.executors.MultiThreadedExecutor` whose :meth:`shutdown` first lets its worker threads
    finish the callbacks already handed to them. rclpy's own shutdown destroys the executor's guard condition
    before it joins the workers, so a callback that was queued behind a busy worker starts afterwards and fails
    on that guard ("The following exception was never retrieved: cannot use Destroyable because destruction was
    requested"). Shut it down once spinning has stopped, as :func:`run_managed` does."""

    def shutdown(self, timeout_sec: float | None = None, *, wait_for_threads: bool = True) -> bool:
        workers = getattr(self, "_executor", None)  # rclpy's ThreadPoolExecutor
        if wait_for_threads and workers is not None:
            workers.shutdown(wait=True)
        return super().shutdown(timeout_sec, wait_for_threads=wait_for_threads)


class ManagedNode(LifecycleNode):
    """A lifecycle node with the shared parts of both nodes: the typed :class:`NodeConfig` parameters, the
    ``autostart`` parameter, throttled problem reports, diagnostics in every state, and one re-entrant
    ``lock`` that transitions, processing, saving and reloading hold (multi-threaded executors).

    Subclasses implement :meth:`configure` (return "" or why it failed), :meth:`activate`,
    :meth:`deactivate`, :meth:`cleanup` and :meth:`diagnostics_values` / :meth:`ok_message`, create their
    outputs in :meth:`configure` with :meth:`add_output` (destroyed by the base on cleanup) and their inputs
    and timers in :meth:`activate` with :meth:`add_subscription` / :meth:`add_timer` (destroyed by the base on
    deactivate), and call :meth:`autostart` at the end of their ``__init__``.
    """

    def __init__(self, node_name: str, what: str, **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        self.declare_parameter("autostart", True, ParameterDescriptor(
            description="configure and activate at start-up (false: wait for a lifecycle manager)", read_only=True))
        self.cfg: NodeConfig = declare_node_config(self)
        watch_node_config(self, self.config_changed)
        configure_threads(self.cfg.models.num_threads)
        self.lock = threading.RLock()
        self.problems = ProblemLog(self.get_logger())
        self.diag = Diagnostics(self, what)
        self.fatal = ""  # why the node cannot work (configure failed), shown as an ERROR diagnostic
        self.steady = Clock(clock_type=ClockType.STEADY_TIME)  # timers keep running when sim time is paused
        self._inputs: list[tuple[Callable, object]] = []  # (destroy, entity) of the active state
        self._watches: list[tuple[object, InputWatch]] = []  # watched subscriptions of the active state
        self._outputs: list = []  # lifecycle publishers of the configured states
        self.create_timer(self.cfg.diagnostics.period_s, self.publish_diagnostics, clock=self.steady)

    # ------------------------------------------------------------------ state
    @property
    def state(self) -> str:
        """The lifecycle state's label (``unconfigured``, ``inactive``, ``active``, ``finalized``, ...)."""
        return self._state_machine.current_state[1]

    def autostart(self) -> None:
        """Configure and activate now when the ``autostart`` parameter says so (subclass ``__init__`` ends here)."""
        if self.get_parameter("autostart").value and self.trigger_configure() == SUCCESS:
            self.trigger_activate()

    def finish(self) -> None:
        """Run the ``shutdown`` transition unless the node is already finalized (``main`` calls this). When the
        ROS context is already gone no transition can run, so the shutdown work is done directly."""
        state = self.state
        if state not in PRIMARY_STATES:
            return
        if self.context.ok():
            self.trigger_shutdown()
            if self.state == "finalized":
                return
        self.on_shutdown(LifecycleState(label=state, state_id=0))

    def configure_on_reload(self) -> tuple[bool, str]:
        """``~/reload`` of a node still unconfigured (its configure failed): try configuring again, and
        activate when ``autostart``."""
        if self.trigger_configure() != SUCCESS:
            return False, self.fatal
        if self.get_parameter("autostart").value:
            self.trigger_activate()
        return True, f"configured ({self.state})"

    # ------------------------------------------------------------------ subclass hooks
    def configure(self) -> str:
        """Load what the node needs and create its publishers; "" on success, else the reason."""
        return ""

    def activate(self) -> None:
        """Create the inputs and timers (:meth:`add_subscription`, :meth:`add_timer`)."""

    def deactivate(self, publish: bool) -> None:
        """Called after the inputs were destroyed, before the publishers are disabled: finish work in hand."""

    def cleanup(self, reason: str) -> None:
        """Release what :meth:`configure` loaded (the base then destroys the publishers)."""

    def config_changed(self, cfg: NodeConfig) -> None:
        """A runtime parameter change was accepted."""
        self.cfg = cfg

    def diagnostics_values(self) -> dict:
        return {}

    def ok_message(self, values: dict) -> str:
        return "ok"

    # ------------------------------------------------------------------ outputs and inputs
    def add_output(self, msg_type, topic: str, qos):
        """A lifecycle publisher (publishes only while active) with standard QoS overrides; destroyed on cleanup."""
        pub = self.create_lifecycle_publisher(msg_type, topic, copy.copy(qos),  # overrides edit the profile
                                              qos_overriding_options=qos_overrides())
        self._outputs.append(pub)
        return pub

    def _destroy_outputs(self) -> None:
        while self._outputs:
            self.destroy_lifecycle_publisher(self._outputs.pop())

    def add_subscription(self, msg_type, topic: str, callback, qos, watch: bool = False, **kwargs):
        """A subscription of the active state with standard QoS overrides; destroyed on deactivate. ``watch``:
        diagnostics warn when the topic goes silent while it has publishers, or loses messages in transport
        (``diagnostics.input_timeout_s``, ``diagnostics.max_transport_loss``)."""
        if watch:
            takes_info = len(inspect.signature(callback).parameters) >= 2
            input_watch = InputWatch(topic, self.cfg.diagnostics.input_timeout_s,
                                     self.cfg.diagnostics.max_transport_loss)

            def watched(msg, info, callback=callback):
                input_watch.update(info)
                return callback(msg, info) if takes_info else callback(msg)

            sub = self.create_subscription(msg_type, topic, watched, copy.copy(qos),  # overrides edit the profile
                                           qos_overriding_options=qos_overrides(), **kwargs)
            self._watches.append((sub, input_watch))
        else:
            sub = self.create_subscription(msg_type, topic, callback, copy.copy(qos),
                                           qos_overriding_options=qos_overrides(), **kwargs)
        self._inputs.append((self.destroy_subscription, sub))
        return sub

    def input_warning(self) -> str:
        """The first watched input that went silent or loses messages ('' when all are fine)."""
        for sub, input_watch in self._watches:
            problem = input_watch.problem(self.count_publishers(sub.topic_name))
            if problem:
                return problem
        return ""

    def add_timer(self, period_s: float, callback, **kwargs):
        timer = self.create_timer(period_s, callback, clock=self.steady, **kwargs)
        self._inputs.append((self.destroy_timer, timer))
        return timer

    def _destroy_inputs(self) -> None:
        self._watches.clear()
        while self._inputs:
            destroy, entity = self._inputs.pop()
            destroy(entity)

    # ------------------------------------------------------------------ transitions
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self.lock:
            self.cfg = node_config_from_parameters(self)
            try:
                error = self.configure()
            except Exception as e:  # a file must never kill the node
                error = f"{type(e).__name__}: {e}"
            if error:
                self.fatal = error
                self.get_logger().error(f"configure failed, staying unconfigured: {error}")
                self.cleanup("configure failed")
                self._destroy_outputs()
                self.publish_diagnostics()
                return FAILURE
            self.fatal = ""
            return SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self.lock:
            result = super().on_activate(state)  # enables the lifecycle publishers
            self.activate()
            return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self.lock:
            self._destroy_inputs()
            self.deactivate(publish=True)
            return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self.lock:
            self.cleanup("cleanup")
            self._destroy_outputs()
            return SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self.lock:
            if state.label == "active":
                self._destroy_inputs()
                self.deactivate(publish=False)
                super().on_deactivate(state)
            if state.label in ("active", "inactive"):
                self.cleanup("shutdown")
                self._destroy_outputs()
            return SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self.lock:
            self.get_logger().error(f"error in a transition from {state.label}: releasing everything")
            self._destroy_inputs()
            super().on_deactivate(state)
            self.cleanup("error")
            self._destroy_outputs()
            return SUCCESS  # back to unconfigured

    # ------------------------------------------------------------------ diagnostics
    def publish_diagnostics(self) -> None:
        values = {"state": self.state, **self.diagnostics_values()}
        ok = self.ok_message(values) if self.state == "active" else f"{self.state}: waiting for activation"
        warning = self.input_warning() if self.state == "active" else ""
        self.diag.publish_status(self.fatal, self.problems, ok, values, warning)


def run_managed(make_node: Callable[[], ManagedNode], args: list[str] | None = None,
                make_executor: Callable[[], Executor] = SingleThreadedExecutor) -> int:
    """``main()`` of a managed node: ``rclpy.init`` without rclpy's signal handlers → build the node (it
    auto-starts unless ``autostart:=false``) → spin until SIGINT / SIGTERM / external shutdown → the node's
    ``shutdown`` transition (e.g. save the map) while the context is up → ``destroy_node`` →
    ``rclpy.try_shutdown``. Returns the exit code (2 for invalid parameters)."""
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    node, executor, code = None, None, 0
    try:
        node = make_node()
        executor = make_executor()
        executor.add_node(node)
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)  # returns at least every 0.1 s to see the signal flag
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except ParamError as e:
        print(f"[ERROR] {e}", file=sys.stderr)
        code = 2
    finally:
        if executor is not None:
            executor.shutdown()
        if node is not None:
            node.finish()
            node.destroy_node()
        rclpy.try_shutdown()
        # previous handlers are not restored: this is the process's main() and it exits next, so a signal
        # repeated while the interpreter winds down (torch takes a while) must not turn a clean, saved
        # shutdown into a death by signal (SIG_IGN: Python resets its own handlers to the default at exit)
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
    return code
