"""Checkpoint round trip (model, optimizer and scheduler state) and refusal of damaged files."""

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
    from distilvpr_ros.models.vpr import build_model
    from distilvpr_ros.models.checkpoint import load_model, save_model_checkpoint

    cfg = ModelConfig(image_backbone="resnet18", pretrained=False, image_size=(64, 48))
    model = build_model("camera_student", cfg).eval()
    ck = save_model_checkpoint(tmp_path / "student", model, epoch=2)
    loaded = load_model(ck, expect_kind="camera_student")
    x = torch.rand(2, 3, 48, 64)
    torch.testing.assert_close(loaded(x)["fused"], model(x)["fused"])
    with pytest.raises(CheckpointError, match="holds a camera_student model, expected teacher"):
        load_model(ck, expect_kind="teacher")
