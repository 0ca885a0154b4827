"""Re-ranking of descriptor candidates by geometric verification.

:func:`rerank` verifies each of the top-k candidates with any verifier callable (camera PnP,
LiDAR registration, ...) whose result has ``accepted``, ``reason`` and ``score`` (the inlier count),
and orders them: accepted first, by verification score, then by descriptor score; the rejected
follow in the same order. The best is the first accepted candidate, or None. With ``stop_at_first``
the candidates are verified in descriptor order until one is accepted (bounded latency); the ones after
it are listed as rejected with reason "not verified".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import numpy as np


class Verified(Protocol):
    accepted: bool
    reason: str

    @property
    def score(self) -> float: ...


@dataclass
class _Failed:
    """Stands in for a verifier that raised: rejected, with the error as the reason."""

    reason: str
    accepted: bool = False
    score: float = 0.0


@dataclass
class VerifiedCandidate:
    id: Any  # the candidate's id (e.g. a keyframe id)
    descriptor_score: float
    descriptor_rank: int  # 0-based rank before re-ranking
    result: Verified

    @property
    def accepted(self) -> bool:
        return bool(self.result.accepted)

    @property
    def score(self) -> float:
        return float(self.result.score)


@dataclass
class Reranked:
    candidates: list[VerifiedCandidate]  # in the new order

    @property
    def best(self) -> VerifiedCandidate | None:
        """The accepted candidate with the highest verification score; None when nothing is accepted."""
        return self.candidates[0] if self.candidates and self.candidates[0].accepted else None

    @property
    def ids(self) -> list:
        return [c.id for c in self.candidates]

    @property
    def scores(self) -> np.ndarray:
        """Verification scores (inlier counts) in the new order."""
        return np.array([c.score for c in self.candidates], dtype=np.float64)


def rerank(ids: Sequence, descriptor_scores: Sequence[float], verify: Callable[[Any], Verified],
           top_k: int | None = None, stop_at_first: bool = False) -> Reranked:
    """Verify the first ``top_k`` candidates (all when None) and re-rank them; see the module doc.

    A verifier that raises does not stop the others: its candidate is rejected with the error as reason.
    """
    n = len(ids) if top_k is None else min(int(top_k), len(ids))
    if len(descriptor_scores) < n:
        raise ValueError(f"{len(ids)} candidates but {len(descriptor_scores)} scores")
    out = []
    done = False
    for rank in range(n):
        if done:
            result = _Failed("not verified: an earlier candidate was accepted")
        else:
            try:
                result = verify(ids[rank])
            except Exception as e:  # a verifier's failure must not take the node down
                result = _Failed(f"verifier raised {type(e).__name__}: {e}")
            done = stop_at_first and bool(result.accepted)
        out.append(VerifiedCandidate(ids[rank], float(descriptor_scores[rank]), rank, result))
    out.sort(key=lambda c: (not c.accepted, -c.score, -c.descriptor_score, c.descriptor_rank))
    return Reranked(out)
