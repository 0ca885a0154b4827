"""The one crash-safe write helper (utils/fileio.py) and the writers built on it."""

import json
import os
import subprocess

import pytest

from distilvpr_ros.utils import fileio, results
from distilvpr_ros.utils.fileio import atomic_write, recovered_path, remove_stale_temporaries


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_file_write_is_all_or_nothing(tmp_path):
    path = tmp_path / "a.txt"
    with atomic_write(path) as tmp:
        assert tmp.name == f".a.txt.tmp-{os.getpid()}" and tmp.parent == tmp_path
        tmp.write_text("one")
    with pytest.raises(RuntimeError, match="midway"), atomic_write(path) as tmp:
        tmp.write_text("tw")
        raise RuntimeError("midway")
    assert path.read_text() == "one" and os.listdir(tmp_path) == ["a.txt"]
    with pytest.raises(FileNotFoundError, match="nothing was written"), atomic_write(path):
        pass
    assert path.read_text() == "one"


def test_folder_write_replaces_and_restores_on_error(tmp_path):
    path = tmp_path / "m"
    with atomic_write(path, folder=True) as tmp:
        (tmp / "x").write_text("1")
    with atomic_write(path, folder=True) as tmp:
        (tmp / "y").write_text("2")
    assert os.listdir(path) == ["y"] and os.listdir(tmp_path) == ["m"]
    with pytest.raises(KeyboardInterrupt), atomic_write(path, folder=True) as tmp:
        (tmp / "z").write_text("3")
        raise KeyboardInterrupt
    assert os.listdir(path) == ["y"] and os.listdir(tmp_path) == ["m"]


def test_recovered_path_falls_back_to_the_backup(tmp_path):
    path = tmp_path / "m"
    assert recovered_path(path) == path  # nothing there: the caller reports it
    fileio.backup_path(path).mkdir()
    with pytest.warns(UserWarning, match="m is missing \\(interrupted save\\); loading the previous version"):
        assert recovered_path(path) == tmp_path / "m.bak"
    path.mkdir()
    assert recovered_path(path) == path  # the new one made it: the stale backup goes at the next write


def test_only_our_temporaries_of_dead_writers_are_removed(tmp_path, caplog):
    path, dead = tmp_path / "m", _dead_pid()
    keep = [tmp_path / f".m.tmp-{os.getpid()}", tmp_path / f".m.tmp-{os.getppid()}", tmp_path / f".n.tmp-{dead}",
            tmp_path / f"m.tmp-{dead}", tmp_path / f".m.tmp-{dead}x", tmp_path / "m.bak"]
    for p in keep:
        p.mkdir()
    (tmp_path / f".m.tmp-{dead}").mkdir()
    (tmp_path / f".m.tmp-{dead}" / "big.npy").write_bytes(b"0" * 1000)
    with caplog.at_level("WARNING", logger="distilvpr_ros.utils.fileio"):
        assert remove_stale_temporaries(path) == [tmp_path / f".m.tmp-{dead}"]
    assert f"process {dead}, which is no longer running" in caplog.text
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in keep)


def test_write_json_leaves_old_file_and_no_temporary_on_failure(tmp_path):
    path = tmp_path / "metrics.json"
    results.write_json(path, {"recall@1": 0.5})
    with pytest.raises(TypeError):
        results.write_json(path, {"recall@1": object()})
    assert json.loads(path.read_text()) == {"recall@1": 0.5}
    assert os.listdir(tmp_path) == ["metrics.json"]


def test_latest_link_points_at_the_newest_run(tmp_path):
    first = results.make_run_dir(tmp_path, "exp")
    second = results.make_run_dir(tmp_path, "exp")
    latest = tmp_path / "exp" / "latest"
    assert latest.is_symlink() and latest.resolve() == second.resolve() and first != second
    assert sorted(os.listdir(tmp_path / "exp")) == sorted([first.name, second.name, "latest"])
