"""Training data: sequences → in-memory frames → per-element model inputs.

* ``open_split`` reads the training or validation sequences a ``DataConfig`` names
  (``data.sources.open_sequences``), with its run and condition filters applied
  (``data.sources.filter_sequences``).
* ``FrameStore`` reads every frame once: images resized to the network size as uint8 (320x240x3 =
  230 KB each), clean BEVs (3x64x64 float32 = 48 KB) and, when points are augmented, the clouds as
  x, y, z, intensity float32 cropped to the planar range an augmented point could still reach the BEV
  from (a 32x1024 scan: ~0.4 MB). The default world's 1,413 training frames take about 0.33 GB of
  images; clouds add ~0.6 GB when point augmentation is on.
* ``VprDataset`` yields ``{"index", "image", "cloud"}`` per element (``cloud`` is the BEV), augmented
  with a generator seeded by (seed, epoch, element), so an element's draw does not depend on batch
  order, process or rank. With a feature cache, ``image`` is the cached frozen-trunk output instead.
* ``build_feature_cache`` runs the frozen image stages once per frame (clean, or K augmented copies).
* ``disk_cached`` keeps such one-off tensors (frozen features, teacher embeddings) in a folder, keyed by
  everything they depend on (weights, frames, sizes, augmentation), so later runs on the same data
  (other seeds, other distillation methods, the teacher's own cache pass) load them in a second.
* ``TrainingData`` puts it together for one model: training and validation frames, their datasets, and
  the clean embeddings the tasks ask for (``training.tasks`` and ``training.trainer`` both read it).

Everything runs in the training process (``num_workers=0``): after the first pass no disk is touched.
"""

from __future__ import annotations

import hashlib
import json
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from ..data.ground_truth import TrainingGroundTruth
from ..data.sample import Sequence
from ..data.sources import filter_sequences, open_sequences
from ..data.submap import with_submaps
from ..models.config import BevConfig, PolarConfig
from ..models.image import ImageEncoder
from ..models.inference import run_in_batches
from ..models.preprocess import PIXEL_MAX, cloud_to_bev, image_to_tensor
from ..models.vpr import VprModel
from ..utils.fileio import atomic_write
from .augment import ImageAugment, PointAugment
from .config import DataConfig, GroundTruthConfig, TrainConfig

log = logging.getLogger(__name__)

#: Cloud columns kept in memory: x, y, z, intensity.
CLOUD_COLUMNS = 4


def open_split(cfg: DataConfig, split: str) -> list[Sequence]:
    """The training (``split="train"``) or validation (``"val"``) sequences of a data config, filtered, with
    LiDAR submaps when ``cfg.submap.length_m`` > 0 (accumulated over the filtered frames)."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if cfg.root is None:
        raise ValueError("data.root is not set (a generated world folder or a dataset root)")
    train = split == "train"
    sequences = open_sequences(cfg.source, cfg.root, region=cfg.train_region if train else cfg.val_region,
                               names=cfg.train_sequences if train else cfg.val_sequences, images_root=cfg.images_root)
    sequences = filter_sequences(sequences, cfg.train_runs if train else cfg.val_runs,
                                 cfg.train_conditions if train else cfg.val_conditions)
    if not sequences:
        raise ValueError(f"no {split} frames left in {cfg.root} after the run/condition filters")
    return with_submaps(sequences, cfg.submap)


class FrameStore:
    """The frames of some sequences, each read from disk once, on first use (sizes: module doc).

    Element ``k`` is frame ``frames[k] = (sequence, position)``, sequences in order. What is kept
    depends on the arguments: images at ``image_size``, clean BEVs with ``bev``, and clouds cropped to
    ``keep_clouds_within_m`` (for point augmentation).
    """

    def __init__(
        self,
        sequences: list[Sequence],
        image_size: tuple[int, int] | None,
        bev: BevConfig | None,
        keep_clouds_within_m: float | None = None,
    ):
        self.sequences = sequences
        self.frames = [(s, i) for s, seq in enumerate(sequences) for i in range(len(seq))]
        self.positions = np.concatenate([np.asarray(seq.poses)[:, :2, 3] for seq in sequences])
        self.image_size = image_size
        self.bev_cfg = bev
        self.keep_clouds_within_m = keep_clouds_within_m
        n = len(self.frames)
        self._loaded = np.zeros(n, dtype=bool)
        self._images = None if image_size is None else np.empty((n, image_size[1], image_size[0], 3), np.uint8)
        self._bevs = None if bev is None else np.empty((n, *bev.shape), dtype=np.float32)
        self._clouds: list[np.ndarray | None] = [None] * n

    def __len__(self) -> int:
        return len(self.frames)

    def _load(self, k: int) -> None:
        if self._loaded[k]:
            return
        s, i = self.frames[k]
        sample = self.sequences[s][i]
        if self._images is not None:
            self._images[k] = np.round(image_to_tensor(sample.image, self.image_size) * PIXEL_MAX).transpose(1, 2, 0)
        if self._bevs is not None:
            self._bevs[k] = cloud_to_bev(sample.cloud, self.bev_cfg)
        if self.keep_clouds_within_m is not None:
            cloud = sample.cloud[:, :CLOUD_COLUMNS].astype(np.float32)
            self._clouds[k] = cloud[np.hypot(cloud[:, 0], cloud[:, 1]) <= self.keep_clouds_within_m].copy()
        self._loaded[k] = True

    def preload(self, progress: bool = False) -> None:
        """Read every frame now (with a progress bar) instead of during the first epoch."""
        for k in tqdm(range(len(self)), desc="loading frames", disable=not progress, leave=False):
            self._load(k)

    def image(self, k: int) -> torch.Tensor:
        """Float ``3 x H x W`` in [0, 1] of element ``k`` (equal to ``image_to_tensor`` of its image)."""
        if self._images is None:
            raise ValueError("this FrameStore keeps no images")
        self._load(k)
        return torch.from_numpy(self._images[k]).permute(2, 0, 1).float() / PIXEL_MAX

    def bev(self, k: int) -> torch.Tensor:
        """Clean BEV ``3 x cells x cells`` of element ``k``."""
        if self._bevs is None:
            raise ValueError("this FrameStore keeps no BEVs")
        self._load(k)
        return torch.from_numpy(self._bevs[k])

    def cloud(self, k: int) -> np.ndarray:
        """Cropped ``N x 4`` cloud (x, y, z, intensity) of element ``k``."""
        if self.keep_clouds_within_m is None:
            raise ValueError("this FrameStore keeps no clouds")
        self._load(k)
        return self._clouds[k]

    def ground_truth(self, cfg: GroundTruthConfig) -> TrainingGroundTruth:
        return TrainingGroundTruth.from_positions(self.positions, cfg)


def reachable_radius(bev: BevConfig | PolarConfig, augment: PointAugment) -> float:
    """Planar range beyond which no augmented point can enter the BEV grid (rotation and flips keep the
    range; translation and jitter change it by at most ``augment.max_shift_m``)."""
    return bev.planar_reach_m + augment.max_shift_m


class VprDataset(torch.utils.data.Dataset):
    """Model inputs of the elements of a ``FrameStore``.

    Args:
        store: the frames.
        inputs: model input names to produce (``model.input_spec.inputs``: "image" and/or "cloud").
        seed: base of the per-(epoch, element) augmentation generators.
        image_augment / point_augment: augmentations, or None for clean inputs. Point augmentation
            needs the store to keep clouds.
        image_features: optional ``N x K x C x h x w`` cached frozen-trunk outputs; ``image`` is then
            copy ``k`` of element ``i``, with ``k`` drawn from the element's generator when K > 1.
    """

    def __init__(
        self,
        store: FrameStore,
        inputs: tuple[str, ...],
        seed: int = 0,
        image_augment: ImageAugment | None = None,
        point_augment: PointAugment | None = None,
        image_features: torch.Tensor | None = None,
    ):
        if point_augment is not None and store.keep_clouds_within_m is None:
            raise ValueError("point augmentation needs a FrameStore that keeps clouds")
        self.store = store
        self.inputs = inputs
        self.seed = seed
        self.image_augment = image_augment
        self.point_augment = point_augment
        self.image_features = image_features
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of ``epoch``."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, i: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, self.epoch, i])
        item: dict[str, Any] = {"index": i}
        if "image" in self.inputs:
            if self.image_features is not None:
                copies = self.image_features.shape[1]
                item["image"] = self.image_features[i, int(rng.integers(copies)) if copies > 1 else 0]
            else:
                image = self.store.image(i)
                item["image"] = image if self.image_augment is None else self.image_augment(image, rng)
        if "cloud" in self.inputs:
            if self.point_augment is None:
                item["cloud"] = self.store.bev(i)
            else:
                cloud = self.point_augment(self.store.cloud(i), rng)
                item["cloud"] = torch.from_numpy(cloud_to_bev(cloud, self.store.bev_cfg))
        return item

    def batch(self, indices) -> dict[str, torch.Tensor]:
        """Stacked inputs of ``indices`` (``index`` as an int64 tensor)."""
        return torch.utils.data.default_collate([self[int(i)] for i in indices])


def build_feature_cache(
    encoder: ImageEncoder,
    store: FrameStore,
    copies: int = 0,
    augment: ImageAugment | None = None,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = False,
) -> torch.Tensor:
    """Frozen-trunk features of every stored image: ``N x max(1, copies) x C x h x w`` float32.

    ``copies = 0``: one clean copy. ``copies = K``: K augmented copies, copy ``c`` of element ``i``
    drawn with the generator seeded by (seed, "feature copy" c, i). The encoder runs in eval mode.
    """
    if copies and augment is None:
        raise ValueError("augmented feature copies need an image augmentation")
    n, k = len(store), max(1, copies)
    cache: torch.Tensor | None = None
    for c in range(k):
        def step(items: range, c: int = c) -> None:
            nonlocal cache
            images = [store.image(i) for i in items]
            if copies:
                images = [augment(image, np.random.default_rng([seed, 1 << 20, c, i]))
                          for image, i in zip(images, items)]
            features = encoder.frozen_features(torch.stack(images))
            if cache is None:
                cache = torch.empty((n, k, *features.shape[1:]), dtype=features.dtype)
            cache[items.start : items.start + len(features), c] = features

        desc = "caching frozen image features" + (f" (copy {c + 1}/{k})" if copies else "")
        run_in_batches(encoder, n, batch_size, step, progress=progress, desc=desc)
    return cache


def frames_fingerprint(sequences: list[Sequence]) -> str:
    """Hash of which frames a list of sequences holds (run names, stamps, poses)."""
    h = hashlib.sha256()
    for seq in sequences:
        h.update(seq.run.encode())
        h.update(np.ascontiguousarray(seq.timestamps, dtype=np.float64).tobytes())
        h.update(np.ascontiguousarray(seq.poses, dtype=np.float64).tobytes())
    return h.hexdigest()


def weights_fingerprint(modules: list[torch.nn.Module]) -> str:
    """Hash of the parameters and buffers of some modules."""
    h = hashlib.sha256()
    for module in modules:
        for name, tensor in module.state_dict().items():
            h.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
            h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def frozen_features_key(encoder: ImageEncoder, sequences: list[Sequence], image_size, copies: int, seed: int,
                        augment_cfg: dict | None) -> dict:
    """What ``build_feature_cache`` output depends on (the ``disk_cached`` key)."""
    return {
        "kind": "frozen_features",
        "trunk": type(encoder.trunk).__name__,
        "freeze_stages": encoder.freeze_stages,
        "weights": weights_fingerprint([encoder.normalize, *encoder.frozen_modules]),
        "image_size": list(image_size),
        "frames": frames_fingerprint(sequences),
        "copies": copies,
        "seed": seed if copies else None,
        "augment": augment_cfg if copies else None,
    }


def disk_cached(cache_dir: Path | None, key: dict, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``compute()``, or the tensor an earlier call with the same ``key`` stored in ``cache_dir``.

    Files are ``<kind>-<hash of key>.safetensors`` with the key in their metadata, written atomically.
    ``cache_dir=None`` always computes.
    """
    if cache_dir is None:
        return compute()
    text = json.dumps(key, sort_keys=True)
    path = Path(cache_dir) / f"{key['kind']}-{hashlib.sha256(text.encode()).hexdigest()[:24]}.safetensors"
    if path.is_file():
        return load_file(str(path))["tensor"]
    value = compute()
    with atomic_write(path) as tmp:
        save_file({"tensor": value.contiguous()}, str(tmp), metadata={"key": text})
    return value


# --- what the trainer and the tasks read ----------------------------------------------------------------


def uses_feature_cache(cfg: TrainConfig, model: VprModel) -> bool:
    """``feature_cache.enabled`` and ``model`` has an image encoder with frozen stages."""
    encoder = getattr(model, "image_encoder", None)
    return cfg.feature_cache.enabled and isinstance(encoder, ImageEncoder) and encoder.freeze_stages > 0


def frozen_features(cfg: TrainConfig, encoder: ImageEncoder, store: FrameStore, copies: int = 0,
                    augment: ImageAugment | None = None) -> torch.Tensor:
    """``build_feature_cache`` of a store, kept in ``feature_cache.dir`` across runs when that is set."""
    key = frozen_features_key(encoder, store.sequences, store.image_size, copies, cfg.seed,
                              cfg.augment.model_dump(mode="json"))
    return disk_cached(cfg.feature_cache.dir, key, lambda: build_feature_cache(
        encoder, store, copies, augment, cfg.seed, batch_size=cfg.eval_batch_size, progress=cfg.progress))


@contextmanager
def taking_features(model: VprModel, cached: bool) -> Iterator[None]:
    """Within this block ``model`` takes cached frozen features as ``image`` when ``cached``."""
    if cached:
        with model.image_encoder.frozen_input():
            yield
    else:
        yield


class TrainingData:
    """The training and validation frames and the datasets that feed ``model`` from them.

    Training inputs are augmented as ``cfg.augment`` says; with the feature cache the image input is the
    cached frozen-trunk output (clean, or one of K augmented copies). Validation inputs are clean.
    """

    def __init__(self, cfg: TrainConfig, model: VprModel, train_sequences=None, val_sequences=None):
        self.train_sequences = train_sequences if train_sequences is not None else open_split(cfg.data, "train")
        self.val_sequences = val_sequences if val_sequences is not None else open_split(cfg.data, "val")
        spec = model.input_spec
        image_size = spec.image_size if "image" in spec.inputs else None
        bev = spec.bev if "cloud" in spec.inputs else None
        point_augment = PointAugment(cfg.augment) if cfg.augment.points and bev is not None else None
        image_augment = ImageAugment(cfg.augment) if cfg.augment.image else None
        keep_clouds = reachable_radius(bev, point_augment) if point_augment is not None else None
        self.train_store = FrameStore(self.train_sequences, image_size, bev, keep_clouds)
        self.val_store = FrameStore(self.val_sequences, image_size, bev)
        self.ground_truth = self.train_store.ground_truth(cfg.ground_truth)
        self.cfg = cfg
        self.cached = image_size is not None and uses_feature_cache(cfg, model)
        self.copies = 0
        self._clean_train: VprDataset | None = None
        train_features = val_features = None
        if self.cached:
            copies = self.copies = cfg.feature_cache.augmented_copies if image_augment is not None else 0
            if image_augment is not None and not copies:
                log.info("image augmentation is off: the feature cache holds clean images "
                         "(feature_cache.augmented_copies > 0 caches augmented ones)")
            train_features = frozen_features(cfg, model.image_encoder, self.train_store, copies, image_augment)
            val_features = frozen_features(cfg, model.image_encoder, self.val_store)
            image_augment = None  # applied (or not) inside the cache
        self.train = VprDataset(self.train_store, spec.inputs, cfg.seed, image_augment, point_augment, train_features)
        self.val = VprDataset(self.val_store, spec.inputs, cfg.seed, image_features=val_features)

    def model_inputs(self, model: VprModel):
        """Context within which ``model`` takes what the datasets yield (cached features for images)."""
        return taking_features(model, self.cached)

    def embed(self, model: VprModel, indices: list[int], batch_size: int) -> dict[str, torch.Tensor]:
        """Every output head of ``model`` (eval mode) on the **clean** inputs of training elements."""
        if self._clean_train is None:
            features = self.train.image_features
            if self.cached and self.copies:
                features = frozen_features(self.cfg, model.image_encoder, self.train_store)
            self._clean_train = VprDataset(self.train_store, model.input_spec.inputs, self.cfg.seed,
                                           image_features=features)
        inputs = model.input_spec.inputs

        def step(items: range) -> dict[str, torch.Tensor]:
            batch = self._clean_train.batch([indices[j] for j in items])
            return model(**{name: batch[name] for name in inputs})

        with self.model_inputs(model):
            outputs = run_in_batches(model, len(indices), batch_size, step)
        return {head: torch.cat([out[head] for out in outputs]) for head in (outputs[0] if outputs else {})}
