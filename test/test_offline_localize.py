"""``localize_sequence`` (pipeline/offline.py) hands the localizer each frame's odometry motion since the last frame
it saw, as the localization node does, so ``rerank.consecutive`` > 1 can be measured offline."""

from types import SimpleNamespace

import numpy as np

from distilvpr_ros.data.geometry import invert
from distilvpr_ros.pipeline.offline import localize_sequence


def pose(x: float, yaw: float = 0.0) -> np.ndarray:
    T = np.eye(4)
    c, s = np.cos(yaw), np.sin(yaw)
    T[:2, :2] = [[c, -s], [s, c]]
    T[0, 3] = x
    return T


class RecordingLocalizer:
    """Records the motions it is given; rejects the frame whose stamp is in ``reject`` as an unusable image."""

    def __init__(self, reject=()):
        self.run, self.motions, self.reject = "", [], set(reject)
        self.db = SimpleNamespace(positions=np.zeros((1, 2)))
        self.matcher = SimpleNamespace(cfg=SimpleNamespace(top_k=5))
        self.verification = SimpleNamespace(enabled=False, rerank=SimpleNamespace(top_k=5))

    def reset(self):
        self.motions.clear()

    def localize(self, stamp, image, motion=None):
        if stamp in self.reject:
            raise ValueError("image too dark (mean 1.0)")
        self.motions.append((stamp, motion))
        best = SimpleNamespace(id=0)
        return SimpleNamespace(seconds=0.001, match=SimpleNamespace(best=best, accepted=False), verification=None,
                               pose=None)


class Sequence:
    """Frames with poses (a bag's odometry) and stamps, as ``open_bag_sequence`` gives them."""

    def __init__(self, poses):
        self.run, self.poses = "q", poses
        self.timestamps = [0.1 * i for i in range(len(poses))]

    def __len__(self):
        return len(self.poses)

    def __getitem__(self, i):
        return SimpleNamespace(image=np.zeros((4, 4, 3), np.uint8))


def test_motion_between_consecutive_seen_frames_comes_from_the_sequence_poses():
    poses = [pose(0.0), pose(2.0, 0.1), pose(5.0, 0.3), pose(9.0, 0.2)]
    seq = Sequence(poses)
    loc = RecordingLocalizer(reject={seq.timestamps[2]})  # frame 2 is unusable: the next motion spans 1 -> 3
    localize_sequence(loc, seq)
    assert [s for s, _ in loc.motions] == [seq.timestamps[i] for i in (0, 1, 3)]
    assert loc.motions[0][1] is None  # nothing seen before the first frame
    np.testing.assert_allclose(loc.motions[1][1], invert(poses[0]) @ poses[1], atol=1e-12)
    np.testing.assert_allclose(loc.motions[2][1], invert(poses[1]) @ poses[3], atol=1e-12)


def test_drifting_odometry_replaces_the_exact_motion_when_asked():
    from distilvpr_ros.data.world.config import OdometryDriftConfig
    poses = [pose(5.0 * i, 0.02 * i) for i in range(6)]
    seq = Sequence(poses)
    exact, drift = RecordingLocalizer(), RecordingLocalizer()
    localize_sequence(exact, seq)
    localize_sequence(drift, seq, odometry_drift=OdometryDriftConfig(scale_error=0.1), drift_seed=3)
    for (_, m_exact), (_, m_drift) in zip(exact.motions[1:], drift.motions[1:]):
        length = np.linalg.norm(m_exact[:3, 3])
        assert abs(np.linalg.norm(m_drift[:3, 3]) - 1.1 * length) < 0.02 * length  # 10 % scale error, plus its walk
