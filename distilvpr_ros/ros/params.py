"""Every :class:`~distilvpr_ros.pipeline.config.NodeConfig` field as a ROS 2 parameter, and back.

Names are the dotted YAML paths (``matcher.top_k``, ``map.path``), so a ``ros__parameters`` YAML file
mirrors the CLI's YAML. Each parameter gets a :class:`ParameterDescriptor` with the field's description,
its type, the schema's bounds as ``integer_range`` / ``floating_point_range`` and, for everything that
is only read at start-up (topics, QoS, model and map paths, index), ``read_only``. Values are read back
into the pydantic model, which stays the single source of validation: an invalid start-up value raises
:class:`ParamError` (the node logs it and refuses to start), an invalid runtime change is rejected with
the pydantic message as the reason.

Optional integers of the schema (``index.nlist``, ``index.pq_m``) use ``0`` for "unset".
``use_sim_time`` is rclpy's own parameter; the nodes use ``node.get_clock()`` so it is honoured.
"""

from __future__ import annotations

import difflib
import sys
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Literal

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel, ValidationError
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType, SetParametersResult
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.node import Node

from ..config import merge_config
from ..pipeline.config import ROS_ONLY_KEYS, NodeConfig

#: Parameters that may change while the node runs (everything else is read-only after start-up).
DYNAMIC_PREFIXES = ("matcher.", "keyframes.", "frames.", "map.save_period_s")
INT_MAX = 2**63 - 1
FLOAT_MAX = sys.float_info.max
#: The ROS value that stands for None in an optional parameter, per parameter type.
SENTINELS = {ParameterType.PARAMETER_INTEGER: 0, ParameterType.PARAMETER_DOUBLE: 0.0,
             ParameterType.PARAMETER_STRING: ""}


class ParamError(ValueError):
    """Parameters do not form a valid :class:`NodeConfig`; the message names each bad parameter."""


@dataclass(frozen=True)
class ParamSpec:
    """One leaf of the config as a ROS parameter."""

    name: str
    type: int  # rcl_interfaces ParameterType.PARAMETER_*
    default: Any  # ROS value (optional ints: 0 = None)
    description: str
    read_only: bool
    bounds: tuple[float | None, float | None] = (None, None)  # inclusive (from, to) for the range
    choices: tuple[str, ...] = ()
    optional: bool = False  # ROS sentinel (0 / "") stands for None

    @property
    def sentinel(self) -> Any:
        """The ROS value that stands for None (optional parameters), of the parameter's own type."""
        return SENTINELS[self.type]

    @property
    def type_name(self) -> str:
        return {ParameterType.PARAMETER_BOOL: "bool", ParameterType.PARAMETER_INTEGER: "int",
                ParameterType.PARAMETER_DOUBLE: "double", ParameterType.PARAMETER_STRING: "string"}[self.type]

    def descriptor(self) -> ParameterDescriptor:
        d = ParameterDescriptor(name=self.name, type=self.type, description=self.description,
                                read_only=self.read_only)
        if self.choices:
            d.additional_constraints = "one of: " + ", ".join(self.choices)
        lo, hi = self.bounds
        if lo is not None or hi is not None:
            if self.type == ParameterType.PARAMETER_INTEGER:
                d.integer_range = [IntegerRange(from_value=int(-INT_MAX if lo is None else lo),
                                                to_value=int(INT_MAX if hi is None else hi), step=1)]
            elif self.type == ParameterType.PARAMETER_DOUBLE:
                d.floating_point_range = [FloatingPointRange(from_value=float(-FLOAT_MAX if lo is None else lo),
                                                             to_value=float(FLOAT_MAX if hi is None else hi),
                                                             step=0.0)]
        return d


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(annotation)) == 2:
            return args[0], True
    return annotation, False


def _bounds(metadata: list, is_int: bool) -> tuple[float | None, float | None]:
    lo = hi = None
    for m in metadata:
        if isinstance(m, Ge):
            lo = m.ge
        elif isinstance(m, Gt):
            lo = m.gt + 1 if is_int else m.gt  # exclusive: ROS ranges are inclusive, pydantic re-checks
        elif isinstance(m, Le):
            hi = m.le
        elif isinstance(m, Lt):
            hi = m.lt - 1 if is_int else m.lt
    return lo, hi


def parameter_specs(model: type[BaseModel] = NodeConfig, prefix: str = "") -> list[ParamSpec]:
    """The leaves of a config model as :class:`ParamSpec` (dotted names, in declaration order)."""
    specs: list[ParamSpec] = []
    for name, info in model.model_fields.items():
        full = f"{prefix}{name}"
        annotation, optional = _unwrap_optional(info.annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            specs.extend(parameter_specs(annotation, full + "."))
            continue
        default = info.get_default(call_default_factory=True)
        desc = info.description or ""
        read_only = not full.startswith(DYNAMIC_PREFIXES)
        choices: tuple[str, ...] = ()
        if typing.get_origin(annotation) is Literal:
            choices = tuple(str(c) for c in typing.get_args(annotation))
            ptype, annotation = ParameterType.PARAMETER_STRING, str
        elif annotation is bool:
            ptype = ParameterType.PARAMETER_BOOL
        elif annotation is int:
            ptype = ParameterType.PARAMETER_INTEGER
        elif annotation is float:
            ptype = ParameterType.PARAMETER_DOUBLE
        elif annotation is str:
            ptype = ParameterType.PARAMETER_STRING
        else:
            raise TypeError(f"config field {full} has type {info.annotation!r}, which has no ROS parameter type")
        bounds = _bounds(info.metadata, annotation is int)
        if optional:
            sentinel = SENTINELS[ptype]
            default = sentinel if default is None else default
            desc += f" ({sentinel!r} = unset)"
            if bounds[0] is not None:
                bounds = (min(bounds[0], sentinel), bounds[1])
        specs.append(ParamSpec(full, ptype, default, desc, read_only, bounds, choices, optional))
    return specs


def _nested(values: dict[str, Any], specs: list[ParamSpec]) -> dict:
    """Dotted ROS values → the nested dict pydantic reads (sentinels → None)."""
    return merge_config({}, {s.name: None if s.optional and values[s.name] in (0, 0.0, "") else values[s.name]
                             for s in specs})


def _validate(values: dict[str, Any], specs: list[ParamSpec]) -> NodeConfig:
    try:
        return NodeConfig(**_nested(values, specs))
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors())
        raise ParamError(f"invalid parameters: {problems}") from None


def declare_node_config(node: Node, defaults: NodeConfig | None = None) -> NodeConfig:
    """Declare every :class:`NodeConfig` field on ``node`` (defaults from ``defaults``; launch/YAML overrides
    win) and return the validated config. Raises :class:`ParamError` with a clear message."""
    specs = parameter_specs()
    flat_defaults = flatten(defaults) if defaults is not None else {}
    for spec in specs:
        default = flat_defaults.get(spec.name, spec.default)
        if spec.optional and default is None:
            default = spec.default
        try:
            node.declare_parameter(spec.name, default, spec.descriptor())
        except InvalidParameterTypeException as e:
            raise ParamError(f"parameter {spec.name} must be a {spec.type_name} ({e})") from None
        except InvalidParameterValueException as e:
            raise ParamError(f"parameter {spec.name}: {e}") from None
    for problem in unknown_parameters(node):
        node.get_logger().warning(problem)
    return node_config_from_parameters(node)


def unknown_parameters(node: Node) -> list[str]:
    """One message per parameter given to ``node`` (parameter file, ``-p``, launch) that it does not have:
    a typo such as ``matcher.top_kk`` would otherwise be ignored in silence. Names the closest valid one."""
    names = [s.name for s in parameter_specs()]
    given = getattr(node, "_parameter_overrides", {})  # rclpy keeps the overrides it was started with here
    problems = []
    for name in sorted(given):
        if name not in names and not node.has_parameter(name) and name.split(".")[0] not in ROS_ONLY_KEYS:
            close = difflib.get_close_matches(name, names, n=1)
            problems.append(f"unknown parameter {name!r} ignored" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return problems


def node_config_from_parameters(node: Node) -> NodeConfig:
    """Read the declared parameters back into a validated :class:`NodeConfig` (:class:`ParamError`)."""
    specs = parameter_specs()
    return _validate({s.name: node.get_parameter(s.name).value for s in specs}, specs)


def flatten(cfg: NodeConfig) -> dict[str, Any]:
    """``{dotted name: ROS value}`` of a config (None → the parameter's sentinel)."""
    out: dict[str, Any] = {}

    def walk(obj: BaseModel, prefix: str) -> None:
        for name in type(obj).model_fields:
            value = getattr(obj, name)
            if isinstance(value, BaseModel):
                walk(value, f"{prefix}{name}.")
            else:
                out[f"{prefix}{name}"] = value

    walk(cfg, "")
    return out


def ros_values(cfg: NodeConfig) -> dict[str, Any]:
    """``{dotted name: ROS value}`` of a config with every None as its parameter's typed sentinel (0, 0.0, ""),
    e.g. for a parameter file: an int 0 for an optional double is refused by rclpy."""
    sentinels = {s.name: s.sentinel for s in parameter_specs() if s.optional}
    return {k: sentinels[k] if v is None else v for k, v in flatten(cfg).items()}


def watch_node_config(node: Node, on_change: Callable[[NodeConfig], None]) -> None:
    """Validate runtime parameter changes against the schema (reject invalid ones with the reason) and
    call ``on_change(new_config)`` after an accepted change."""
    specs = parameter_specs()
    names = {s.name for s in specs}

    def validate(params) -> SetParametersResult:
        changed = {p.name: p.value for p in params if p.name in names}
        if not changed:
            return SetParametersResult(successful=True)
        values = {s.name: node.get_parameter(s.name).value for s in specs}
        values.update(changed)
        try:
            _validate(values, specs)
        except ParamError as e:
            return SetParametersResult(successful=False, reason=str(e))
        return SetParametersResult(successful=True)

    def apply(params) -> None:
        if any(p.name in names for p in params):
            on_change(node_config_from_parameters(node))

    node.add_on_set_parameters_callback(validate)
    node.add_post_set_parameters_callback(apply)
