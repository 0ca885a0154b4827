"""Checkpoint round trip (model, optimizer and scheduler state) and refusal of damaged files."""

import json
import os
import subprocess
import sys

import pytest
import torch

from distilvpr_ros.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def _trained():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[2], gamma=0.1)
    for _ in range(3):
        loss = model(torch.randn(16, 4)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model, opt, sched


def test_round_trip_resumes_identically(tmp_path):
    model, opt, sched = _trained()
    ck = save_checkpoint(tmp_path / "ck", model, kind="toy", config={"width": 8}, epoch=3, metrics={"recall@1": 0.5},
                         train_state={"optimizer": opt.state_dict(), "scheduler": sched.state_dict()})
    meta, state, ts = load_checkpoint(ck, with_train_state=True)
    assert meta["kind"] == "toy" and meta["epoch"] == 3 and meta["metrics"] == {"recall@1": 0.5}

    model2, opt2, sched2 = _trained()
    for p in model2.parameters():
        p.data.zero_()
    model2.load_state_dict(state)
    opt2.load_state_dict(ts["optimizer"])
    sched2.load_state_dict(ts["scheduler"])
    x = torch.randn(16, 4)
    for m, o in ((model, opt), (model2, opt2)):  # one more identical step on both
        loss = m(x).pow(2).mean()
        o.zero_grad()
        loss.backward()
        o.step()
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        torch.testing.assert_close(a, b)
    assert sched2.get_last_lr() == sched.get_last_lr()


def test_overwrite_and_corruption(tmp_path):
    model, *_ = _trained()
    ck = save_checkpoint(tmp_path / "ck", model, kind="toy", config={})
    save_checkpoint(tmp_path / "ck", model, kind="toy", config={}, epoch=1)  # atomic replace
    assert load_checkpoint(ck)[0]["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]
    data = bytearray((ck / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (ck / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_checkpoint(ck)
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_checkpoint(tmp_path)
    (ck / "checkpoint.json").write_text("{broken")
    with pytest.raises(CheckpointError, match="corrupt JSON"):
        load_checkpoint(ck)


def test_model_checkpoint_round_trip(tmp_path):
    from distilvpr_ros.models.config import ModelConfig
    from distilvpr_ros.models.factory import build_model
    from distilvpr_ros.models.checkpoint import load_model, save_model_checkpoint

    cfg = ModelConfig(image_backbone="resnet18", pretrained=False, image_size=(64, 48))
    model = build_model("camera_student", cfg).eval()
    ck = save_model_checkpoint(tmp_path / "student", model, epoch=2)
    loaded = load_model(ck, expect_kind="camera_student")
    x = torch.rand(2, 3, 48, 64)
    torch.testing.assert_close(loaded(x)["fused"], model(x)["fused"])
    with pytest.raises(CheckpointError, match="holds a camera_student model, expected teacher"):
        load_model(ck, expect_kind="teacher")


def _student_and_teacher(tmp_path):
    from tiny_models import TINY

    from distilvpr_ros.models.checkpoint import save_model_checkpoint
    from distilvpr_ros.models.config import ModelConfig
    from distilvpr_ros.models.factory import build_model

    torch.manual_seed(0)
    student = save_model_checkpoint(tmp_path / "student", build_model("camera_student", ModelConfig(**TINY)))
    teacher = save_model_checkpoint(tmp_path / "teacher", build_model("teacher", ModelConfig(**TINY)))
    return student, teacher


def _replace_weights(ck, data: bytes) -> None:
    """Put other bytes in model.safetensors and record their sha256, as a careless copy would."""
    import json

    from distilvpr_ros.utils.fileio import sha256_file

    (ck / "model.safetensors").write_bytes(data)
    meta = json.loads((ck / "checkpoint.json").read_text())
    meta["sha256"]["model.safetensors"] = sha256_file(ck / "model.safetensors")
    (ck / "checkpoint.json").write_text(json.dumps(meta))


def test_truncated_weights_with_matching_hash_are_a_checkpoint_error(tmp_path):
    from distilvpr_ros.models.checkpoint import load_model

    student, _ = _student_and_teacher(tmp_path)
    _replace_weights(student, (student / "model.safetensors").read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="student/model.safetensors: unreadable safetensors file"):
        load_model(student)


def test_teacher_weights_in_a_student_folder_are_refused_before_loading(tmp_path):
    from distilvpr_ros.models.checkpoint import load_model

    student, teacher = _student_and_teacher(tmp_path)
    _replace_weights(student, (teacher / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match=r"weights do not fit a camera_student built from its config "
                                              r"\(missing \[\], unexpected \['lidar_encoder"):
        load_model(student, expect_kind="camera_student")
    meta = json.loads((student / "checkpoint.json").read_text())  # same names, other shapes
    meta["config"]["model"]["student_dim"] = 64
    (student / "checkpoint.json").write_text(json.dumps(meta))
    _replace_weights(student, (student / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match=r"[1-9]\d* shape mismatches, file vs model: \["):
        load_model(student)
    meta["config"]["model"]["student_dim"] = "wide"
    (student / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="checkpoint.json: recorded model config is invalid"):
        load_model(student)


KILL_BETWEEN_RENAMES = """
import os, sys, torch
from distilvpr_ros.models.checkpoint import save_checkpoint
from distilvpr_ros.utils import fileio
real_replace, calls = os.replace, []
def replace(src, dst):
    calls.append(src)
    if len(calls) == 2:  # the old folder is already moved aside, the new one not yet in place
        os._exit(9)  # like kill -9: no clean-up runs
    real_replace(src, dst)
fileio.os.replace = replace
save_checkpoint(sys.argv[1], torch.nn.Linear(2, 2), kind="toy", config={}, epoch=2)
"""


def test_kill_between_the_two_renames_keeps_best_loadable(tmp_path, caplog):
    model, *_ = _trained()
    ck = save_checkpoint(tmp_path / "best", model, kind="toy", config={}, epoch=1)
    proc = subprocess.Popen([sys.executable, "-c", KILL_BETWEEN_RENAMES, str(ck)], stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate()
    assert proc.returncode == 9, err
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".best.tmp-{proc.pid}", "best.bak"]
    with pytest.warns(UserWarning, match="interrupted save"), caplog.at_level("WARNING"):
        assert load_checkpoint(ck)[0]["epoch"] == 1
    assert "no longer running" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.bak"]  # the dead writer's temporary is gone
    save_checkpoint(ck, model, kind="toy", config={}, epoch=3)
    assert load_checkpoint(ck)[0]["epoch"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def test_save_fsyncs_every_file_and_the_folders(tmp_path, monkeypatch):
    from distilvpr_ros.utils import fileio

    synced = []
    monkeypatch.setattr(fileio.os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")))
    model, *_ = _trained()
    save_checkpoint(tmp_path / "ck", model, kind="toy", config={})
    names = {os.path.basename(p) for p in synced}
    assert {"model.safetensors", "train_state.safetensors", "checkpoint.json"} <= names
    assert any(p.endswith(f".ck.tmp-{os.getpid()}") for p in synced)  # the new folder's entries
    assert str(tmp_path) in synced  # the renames into place


def test_stale_temporaries_of_killed_writers_are_removed_and_logged(tmp_path, caplog):
    model, *_ = _trained()
    ck = save_checkpoint(tmp_path / "ck", model, kind="toy", config={})
    dead = _dead_pid()
    stale = tmp_path / f".ck.tmp-{dead}"
    (stale / "sub").mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"x" * 100)
    alive = tmp_path / f".ck.tmp-{os.getppid()}"  # a writer that still runs: left alone
    alive.mkdir()
    other = tmp_path / f".other.tmp-{dead}"  # another name's: not ours to judge here
    other.mkdir()
    with caplog.at_level("WARNING", logger="distilvpr_ros.utils.fileio"):
        load_checkpoint(ck)
    assert not stale.exists() and alive.exists() and other.exists()
    assert f"removed {stale}" in caplog.text and f"process {dead}, which is no longer running" in caplog.text
    stale.mkdir()
    save_checkpoint(ck, model, kind="toy", config={})
    assert not stale.exists()


def _dead_pid() -> int:
    """The pid of a process that has exited."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid
