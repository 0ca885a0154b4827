"""VPR-Bench style image-folder datasets (e.g. ``shared/data/corridor``): images only, no poses.

On disk::

    <root>/query/<name>.jpg|png ...        query images, in file-name order
    <root>/ref/<name>.jpg|png ...          reference (database) images, in file-name order
    <root>/ground_truth.json               [{"query": i, "refs": [j, ...]}, ...]: correct references
    <root>/peer_similarity/<method>.npy    optional float [queries x references] similarity matrices of
                                           published methods (higher = more similar)

VPR-Bench itself ships ground truth as pickled ``.npy`` object arrays; this reader only accepts the
JSON form (nothing here loads pickles: ``np.load(..., allow_pickle=False)``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import DataError
from .sensor_files import read_image_file

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class ImageFolder:
    """Lazily loaded RGB images of one folder, sorted by file name."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise DataError(self.folder, "image folder not found")
        self.paths = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise DataError(self.folder, f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        return read_image_file(self.paths[i])


class VPRBenchDataset:
    """A VPR-Bench dataset folder: query/reference images, ground truth, peers' similarity matrices."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._queries = ImageFolder(self.root / "query")
        self._refs = ImageFolder(self.root / "ref")
        self.ground_truth = self._read_ground_truth(self.root / "ground_truth.json")

    def _read_ground_truth(self, path: Path) -> list[list[int]]:
        try:
            entries = json.loads(path.read_text())
            by_query = {int(e["query"]): [int(r) for r in e["refs"]] for e in entries}
        except OSError as err:
            raise DataError(path, f"cannot read ground truth ({err.strerror or err})") from None
        except (ValueError, TypeError, KeyError) as err:
            raise DataError(path, f'expected a list of {{"query": i, "refs": [...]}}: {err!r}') from None
        n_q, n_r = len(self._queries), len(self._refs)
        if sorted(by_query) != list(range(n_q)):
            raise DataError(path, f"ground truth must list every query 0..{n_q - 1} exactly once")
        if any(not 0 <= r < n_r for refs in by_query.values() for r in refs):
            raise DataError(path, f"reference index out of range 0..{n_r - 1}")
        return [by_query[q] for q in range(n_q)]

    def query_images(self) -> ImageFolder:
        return self._queries

    def ref_images(self) -> ImageFolder:
        return self._refs

    def peer_similarity(self) -> dict[str, np.ndarray]:
        """``{method: [queries x references] similarity}`` from ``peer_similarity/*.npy`` (may be empty)."""
        shape = (len(self._queries), len(self._refs))
        matrices = {}
        for path in sorted((self.root / "peer_similarity").glob("*.npy")):
            try:
                matrix = np.load(path, allow_pickle=False)
            except ValueError as err:
                raise DataError(path, f"not a plain numeric .npy array: {err}") from None
            if matrix.shape != shape:
                raise DataError(path, f"similarity matrix has shape {matrix.shape}, expected {shape}")
            matrices[path.stem] = matrix
        return matrices
