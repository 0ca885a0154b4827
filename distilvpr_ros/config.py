"""The building blocks of the package's typed configuration, and the YAML helpers every loader shares.

Each schema is a pydantic model made of :class:`Section` s; YAML files mirror the nesting
(``ground_truth.positive_m``) and ROS parameters use the same dotted names. The schemas live beside
the code they configure (so this low-level module imports nothing of the package); **every one of
them is re-exported by** :mod:`distilvpr_ros.schemas` (``from distilvpr_ros.schemas import
NodeConfig, TrainConfig, WorldConfig, ...``), and ``distilvpr <command> --dump-config`` prints the
effective configuration of any command as YAML.

Rules shared by every section: unknown keys are rejected (the message names the closest valid key),
numbers must be finite (NaN and ±inf are refused), and each field carries its bounds and a description.

Helpers: :func:`load_yaml` (a mapping from a file, one-line errors), :func:`merge_config` (the one
place that applies overrides given as nested dicts or dotted keys such as ``{"optim.epochs": 2}``),
:func:`unknown_keys` / :func:`check_keys` (typos with suggestions), :func:`validation_message` (a
pydantic error as one line) and :func:`dump_config`.
"""

from __future__ import annotations

import copy
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """A configuration file or value is invalid; the message is one line naming the file and the key."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


#: A retrieval is correct within this distance (m): the protocol's radius, shared by evaluation and replay.
CORRECT_M = 25.0


class GroundTruthConfig(Section):
    """Place ground truth from poses (PointNetVLAD / DistilVPR protocol)."""

    positive_m: float = Field(10.0, gt=0, le=1e4, description="training positives: within this distance (m)")
    non_negative_m: float = Field(
        50.0, gt=0, le=1e4, description="training non-negatives: within this distance (m); farther = negative"
    )
    correct_m: float = Field(CORRECT_M, gt=0, le=1e4, description="a retrieval is correct within this distance (m)")

    @model_validator(mode="after")
    def _ordered(self) -> "GroundTruthConfig":
        if self.non_negative_m < self.positive_m:
            raise ValueError("non_negative_m must be >= positive_m")
        return self


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a one-line error names the file when it is missing, not YAML or not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {yaml_problem(e)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def yaml_problem(error: yaml.YAMLError) -> str:
    """What a YAML parser error says, on one line with its line and column (1-based)."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return " ".join(f"{problem}{where}".split())


def merge_config(base: Mapping[str, Any], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """``base`` with ``overrides`` applied, as a new dict (``base`` is not changed).

    Keys of ``overrides`` may be dotted (``{"optim.epochs": 2}`` sets ``base["optim"]["epochs"]``, creating
    the intermediate mappings) or plain; a mapping value merges into an existing mapping recursively, any
    other value (lists included) replaces what was there.
    """
    out = copy.deepcopy(dict(base))
    for key, value in (overrides or {}).items():
        *parents, leaf = str(key).split(".")
        node = out
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        if isinstance(value, Mapping) and isinstance(node.get(leaf), dict):
            node[leaf] = merge_config(node[leaf], value)
        else:
            node[leaf] = copy.deepcopy(value)
    return out


def _model_of(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """``(model, is_list)`` when a field holds a model, a list of models, or an optional one."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            model, many = _model_of(arg)
            if model is not None:
                return model, many
        return None, False
    if origin in (list, tuple):
        args = typing.get_args(annotation)
        model, _ = _model_of(args[0]) if args else (None, False)
        return model, model is not None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    return None, False


def field_names(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every dotted key of ``model`` (sections and leaves; lists of models are not expanded)."""
    names: list[str] = []
    for name, info in model.model_fields.items():
        names.append(prefix + name)
        sub, many = _model_of(info.annotation)
        if sub is not None and not many:
            names += field_names(sub, f"{prefix}{name}.")
    return names


def unknown_keys(model: type[BaseModel], data: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str | None]]:
    """``(dotted key, closest valid key or None)`` for every key of ``data`` that ``model`` does not have,
    looking into nested sections and lists of sections (``runs[1].lane``)."""
    valid = field_names(model)
    found: list[tuple[str, str | None]] = []
    for key, value in data.items():
        info = model.model_fields.get(str(key))
        if info is None:
            close = difflib.get_close_matches(str(key), list(model.model_fields), n=1)
            if close:
                found.append((f"{prefix}{key}", f"{prefix}{close[0]}"))
                continue
            leaves = {name.rsplit(".", 1)[-1]: name for name in reversed(valid)}  # a key in the wrong section
            close = difflib.get_close_matches(str(key), list(leaves), n=1, cutoff=0.8)
            found.append((f"{prefix}{key}", f"{prefix}{leaves[close[0]]}" if close else None))
            continue
        sub, many = _model_of(info.annotation)
        if sub is None:
            continue
        if many and isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, Mapping):
                    found += unknown_keys(sub, item, f"{prefix}{key}[{i}].")
        elif isinstance(value, Mapping):
            found += unknown_keys(sub, value, f"{prefix}{key}.")
    return found


def describe_unknown(key: str, closest: str | None) -> str:
    """``unknown key 'matcher.top_kk' (did you mean 'matcher.top_k'?)``."""
    return f"unknown key {key!r}" + (f" (did you mean {closest!r}?)" if closest else "")


def check_keys(model: type[BaseModel], data: Mapping[str, Any], source: str | Path | None = None) -> None:
    """Raise :class:`ConfigError` naming every unknown key of ``data`` (with the closest valid key)."""
    unknown = unknown_keys(model, data)
    if unknown:
        where = f"{source}: " if source is not None else ""
        raise ConfigError(where + "; ".join(describe_unknown(k, c) for k, c in unknown)
                          + f" (valid keys: distilvpr_ros.schemas.{model.__name__})")


def validation_message(error: ValidationError) -> str:
    """A pydantic :class:`ValidationError` as one line: ``loc: message (got value)`` per problem."""
    parts = []
    for err in error.errors():
        loc = ".".join(str(p) for p in err["loc"]) or error.title
        got = err.get("input")
        shown = "" if err["type"] in ("missing", "extra_forbidden") or isinstance(got, (dict, list)) \
            else f" (got {got!r})"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        parts.append(f"{loc}: {msg}{shown}")
    return f"invalid {error.title}: " + "; ".join(parts)


def validate_config(model: type[BaseModel], data: Mapping[str, Any], source: str | Path | None = None):
    """``model`` from ``data``; unknown keys and invalid values raise :class:`ConfigError` on one line
    that names ``source`` (a file) when given."""
    check_keys(model, data, source)
    try:
        return model.model_validate(dict(data))
    except ValidationError as e:
        where = f"{source}: " if source is not None else ""
        raise ConfigError(where + validation_message(e)) from None


def dump_config(model: BaseModel, path: str | Path) -> None:
    """Write a config model as YAML (used to record what a run used)."""
    with open(path, "w") as f:
        f.write(config_yaml(model))


def config_yaml(model: BaseModel | Mapping[str, Any]) -> str:
    """A config model (or a plain mapping) as YAML, in declaration order."""
    data = model.model_dump(mode="json") if isinstance(model, BaseModel) else dict(model)
    return yaml.safe_dump(data, sort_keys=False)
