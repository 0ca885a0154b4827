"""Stages as data, and the keyed build-or-reuse of one stage.

A :class:`Stage` declares what its result depends on: the upstream stages it ``needs`` (their build ids) and
its own ``inputs`` (settings slices, resolved configs). :meth:`Demo.run_stage` hashes these into the stage's
key. Stage ``S`` works in ``<work>/S/`` and records in ``S/stage.json`` its key, a build id, its inputs, its
result and how long building it took. A later run reuses a stage whose record has the same key (and whose
declared ``outputs`` are there); otherwise it empties the folder and builds again. A rebuilt stage gets a new
build id (a fresh random one, or its content's fingerprint where the stage has one), so every stage that
needs it is rebuilt too. ``fresh`` rebuilds every stage. A stage that cannot run here (``unavailable``), or
that needs a skipped one, is skipped with a line and checked again on the next run.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from ..utils.results import write_json
from .settings import DemoSettings

STAGE_FILE = "stage.json"
#: The build id of a skipped stage.
SKIPPED = "skipped"


class DemoError(RuntimeError):
    """A stage failed for a reason outside the user's input (a ROS node did not start or died)."""


def digest(value: Any) -> str:
    """A short, stable hash of a JSON-able value (dict keys sorted)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _nothing(demo: "Demo") -> Any:
    return None


@dataclass(frozen=True)
class Stage:
    """One step of the demo: its name, what it depends on, how it is built and what it leaves behind."""

    name: str
    what: str  # one line for the banner
    build: Callable[["Demo", Path], dict]  # makes the outputs in the (empty) folder; returns the result
    needs: tuple[str, ...] = ()  # upstream stages: their build ids are inputs; skipped when one of them is
    inputs: Callable[["Demo"], dict] = lambda demo: {}  # the rest of the key: settings slices, configs
    outputs: tuple[str, ...] = ()  # paths in the folder that must exist for the stage to be reused
    unavailable: Callable[["Demo"], str | None] = _nothing  # why it cannot run here (then it is skipped)
    fingerprint: Callable[["Demo", dict], str | None] | None = None  # id of what the result points at (None:
    # gone); used as the build id instead of a random one, and a reused result must still match it


@dataclass
class Demo:
    """What the stages share: settings, folders, each stage's result and build id, and the run log."""

    name: str  # "quick" | "default"
    settings: DemoSettings
    data_root: Path
    work: Path
    progress: bool = True
    fresh: bool = False
    results: dict[str, dict] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)  # stage -> build id (changes whenever it is rebuilt)
    log: list[dict] = field(default_factory=list)  # per stage: name, status, seconds, folder, note

    def folder(self, stage: str) -> Path:
        return self.work / stage

    def key_inputs(self, stage: Stage) -> dict:
        """What the stage's key is the hash of: the build ids of the stages it needs and its own inputs."""
        return {**{name: self.ids[name] for name in stage.needs}, **stage.inputs(self)}

    def run_stage(self, stage: Stage) -> dict:
        """The stage's result (also kept in :attr:`results`): skipped, reused from its folder, or built."""
        reason = stage.unavailable(self) or next(
            (f"no {name}" for name in stage.needs if self.ids.get(name) == SKIPPED), None)
        if reason:
            result = self._skip(stage, reason)
        else:
            inputs = self.key_inputs(stage)
            result = self._reuse(stage, digest(inputs))
            if result is None:
                result = self._build(stage, inputs)
        self.results[stage.name] = result
        return result

    def _skip(self, stage: Stage, reason: str) -> dict:
        self.ids[stage.name] = SKIPPED
        self.log.append({"stage": stage.name, "status": "skipped", "seconds": 0.0, "note": reason})
        print(f"[demo] {stage.name}: skipped: {reason}")
        return {"skipped": reason}

    def _reuse(self, stage: Stage, key: str) -> dict | None:
        """The recorded result when the stage's key and outputs are unchanged, else None."""
        out = self.folder(stage.name)
        record = read_record(out)
        if (self.fresh or record is None or record.get("key") != key
                or not all((out / path).exists() for path in stage.outputs)):
            return None
        if stage.fingerprint is not None and stage.fingerprint(self, record["result"]) != record["id"]:
            return None  # what the result points at changed or is gone
        self.ids[stage.name] = record["id"]
        self.log.append({"stage": stage.name, "status": "reused", "seconds": 0.0,
                         "built_in_s": record.get("seconds"), "folder": str(out)})
        print(f"[demo] {stage.name}: reusing {out} (inputs unchanged; built in {record.get('seconds', 0):.0f} s)")
        return record["result"]

    def _build(self, stage: Stage, inputs: dict) -> dict:
        """Build the stage in an emptied folder, timing all of its work, and record it."""
        from ..evaluation.report import to_jsonable

        out = self.folder(stage.name)
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        started = time.perf_counter()
        result = to_jsonable(stage.build(self, out))
        seconds = round(time.perf_counter() - started, 1)
        finished = datetime.now().isoformat(timespec="seconds")
        # A new id on every build, so the stages using this one rebuild too; or the id of the content built.
        build_id = (stage.fingerprint(self, result) if stage.fingerprint is not None else None) or uuid.uuid4().hex[:20]
        write_json(out / STAGE_FILE, {"stage": stage.name, "key": digest(inputs), "id": build_id, "inputs": inputs,
                                      "result": result, "seconds": seconds, "finished": finished})
        self.ids[stage.name] = build_id
        self.log.append({"stage": stage.name, "status": "ran", "seconds": seconds, "folder": str(out)})
        print(f"[demo] {stage.name}: done in {seconds:.1f} s")
        return result


def read_record(folder: Path) -> dict | None:
    """The ``stage.json`` of a stage folder, or None when it is missing or unreadable."""
    try:
        return json.loads((folder / STAGE_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
