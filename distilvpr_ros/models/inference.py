"""Descriptors of whole sequences or image lists, for any model kind (torch ``VprModel`` or ``OnnxRunner``).

What a model needs comes from its input spec (``model.input_spec``, or the metadata an ONNX export
carries): ``image`` → ``preprocess.image_to_tensor`` at the spec's size, ``cloud`` → the BEV pseudo-image
of ``preprocess.cloud_to_bev``. :func:`model_inputs` is the only place that turns samples into network
inputs; :func:`embed_batch` the only place that runs a model on one batch, and :func:`run_in_batches` the
one batched forward loop (used by the training code too). Descriptors are L2-normalised float32.

``head`` selects one of the raw outputs of a torch model's ``forward`` (``"fused"`` for every kind; the
teacher also has ``"image"`` and ``"cloud"``). The teacher fuses by concatenation, so its ``"image"`` head
does not depend on the cloud input: when there is no cloud (image-only datasets such as Corridor) an
empty BEV is fed and only the ``"image"`` head is meaningful.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Iterable, Sequence, TypeVar

import numpy as np
import torch
from tqdm import tqdm

from ..data.sample import Sample
from ..data.sample import Sequence as SampleSequence
from ..models.config import BevConfig, PolarConfig
from ..models.preprocess import cloud_to_bev, image_to_tensor
from ..models.vpr import InputSpec
from .vpr import l2_normalize

DEFAULT_HEAD = "fused"
T = TypeVar("T")


def input_spec_of(model: Any) -> InputSpec:
    """The :class:`InputSpec` of a torch model, or rebuilt from the metadata of an ``OnnxRunner``."""
    spec = getattr(model, "input_spec", None)
    if spec is not None:
        return spec
    metadata = getattr(model, "metadata", None)
    if not metadata:
        raise TypeError(f"{type(model).__name__} has neither an input_spec nor ONNX metadata describing its inputs")
    image_size = json.loads(metadata["image_size"])
    bev = json.loads(metadata["bev"])
    return InputSpec(
        inputs=tuple(json.loads(metadata["inputs"])),
        descriptor_dim=int(metadata["descriptor_dim"]),
        image_size=None if image_size is None else tuple(image_size),
        bev=None if bev is None else PolarConfig(**bev) if "rings" in bev else BevConfig(**bev),
    )


def model_inputs(spec: InputSpec, images: Sequence[np.ndarray | None],
                 clouds: Sequence[np.ndarray | None]) -> dict[str, np.ndarray]:
    """Batched float32 network inputs named as in ``spec.inputs``.

    ``images``: uint8 RGB ``H x W x 3``; ``clouds``: ``N x C`` point clouds (``None`` → empty BEV).
    """
    feeds: dict[str, np.ndarray] = {}
    for name in spec.inputs:
        if name == "image":
            if any(image is None for image in images):
                raise ValueError("the model needs camera images but a sample has none")
            feeds[name] = np.stack([image_to_tensor(image, spec.image_size) for image in images])
        elif name == "cloud":
            feeds[name] = np.stack([cloud_to_bev(cloud, spec.bev) for cloud in clouds])
        else:
            raise ValueError(f"unknown model input {name!r}")
    return feeds


def embed_batch(model: Any, feeds: dict[str, np.ndarray], head: str = DEFAULT_HEAD) -> np.ndarray:
    """L2-normalised float32 ``B x D`` descriptors of one batch.

    A torch module is run as given (call :func:`embed_sequences` / :func:`embed_images` for eval mode)
    under ``torch.inference_mode`` and ``head`` picks its output; any other callable (``OnnxRunner``)
    is called with the numpy inputs and must return the raw ``"fused"`` descriptor.
    """
    if isinstance(model, torch.nn.Module):
        with torch.inference_mode():
            outputs = model(**{name: torch.from_numpy(array) for name, array in feeds.items()})
        if head not in outputs:
            raise ValueError(f"model has no {head!r} head; it outputs {sorted(outputs)}")
        raw = outputs[head].float().cpu().numpy()
    else:
        if head != DEFAULT_HEAD:
            raise ValueError(f"{type(model).__name__} only outputs the {DEFAULT_HEAD!r} descriptor, not {head!r}")
        raw = model(**feeds)
    return l2_normalize(raw)


def run_in_batches(model: Any, count: int, batch_size: int, step: Callable[[range], T], *, progress: bool = False,
                   desc: str = "", unit: str = "frame") -> list[T]:
    """``step(items)`` for consecutive ranges ``items`` of at most ``batch_size`` of ``0 .. count - 1``, in order.

    The one batched forward loop of the package: ``step`` runs ``model`` on one batch and returns what to
    keep (or None, e.g. after writing into a preallocated array). A torch ``model`` is in eval mode and
    gradients are off for the duration; its mode is restored afterwards. ``progress`` shows a tqdm bar
    counting items.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    is_module = isinstance(model, torch.nn.Module)
    was_training = is_module and model.training
    if is_module:
        model.eval()
    out: list[T] = []
    try:
        with torch.no_grad(), tqdm(total=count, desc=desc, unit=unit, disable=not progress, leave=False) as bar:
            for start in range(0, count, batch_size):
                items = range(start, min(start + batch_size, count))
                out.append(step(items))
                bar.update(len(items))
    finally:
        if is_module:
            model.train(was_training)
    return out


def _embed_batches(model: Any, count: int, load: Callable[[int], tuple[np.ndarray | None, np.ndarray | None]],
                   batch_size: int, head: str, desc: str, progress: bool) -> np.ndarray:
    """Descriptors of items ``0 .. count - 1``; ``load(i) -> (image, cloud)`` reads item i's sensor data."""
    spec = input_spec_of(model)

    def step(items: range) -> np.ndarray:
        images, clouds = zip(*(load(i) for i in items))
        return embed_batch(model, model_inputs(spec, images, clouds), head)

    batches = run_in_batches(model, count, batch_size, step, progress=progress, desc=desc)
    return np.concatenate(batches) if batches else np.zeros((0, spec.descriptor_dim), dtype=np.float32)


def embed_sequences(model: Any, sequences: Iterable[SampleSequence], batch_size: int = 32,
                    progress: bool = True, head: str = DEFAULT_HEAD) -> list[np.ndarray]:
    """One ``len(seq) x D`` L2-normalised float32 descriptor array per sequence.

    The model is put in eval mode for the duration (its mode is restored afterwards).
    """
    def loader(seq: SampleSequence) -> Callable[[int], tuple[np.ndarray | None, np.ndarray | None]]:
        def load(i: int) -> tuple[np.ndarray | None, np.ndarray | None]:
            sample: Sample = seq[i]
            return sample.image, sample.cloud
        return load

    return [
        _embed_batches(model, len(seq), loader(seq), batch_size, head, f"embed {getattr(seq, 'run', '')}".strip(),
                       progress)
        for seq in sequences
    ]


def embed_images(model: Any, images: Sequence[np.ndarray], batch_size: int = 32, progress: bool = True,
                 head: str = DEFAULT_HEAD, desc: str = "embed images") -> np.ndarray:
    """``len(images) x D`` descriptors of RGB uint8 images (image-only datasets; no LiDAR).

    ``images`` may be a lazy list (e.g. ``VPRBenchDataset.query_images()``). A model that also takes a
    cloud (the teacher) gets an empty BEV, so only ``head="image"`` makes sense for it.
    """
    if "cloud" in input_spec_of(model).inputs and head != "image":
        raise ValueError(f"this model needs LiDAR for its {head!r} head; use head='image' on image-only data")
    return _embed_batches(model, len(images), lambda i: (images[i], None), batch_size, head, desc, progress)
