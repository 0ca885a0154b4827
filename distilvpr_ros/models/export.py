"""ONNX export of a ``VprModel`` and an onnxruntime runner that returns the same raw descriptors.

The exported graph takes the inputs named in ``model.input_spec.inputs`` (``image``: ``B x 3 x H x W`` in
[0, 1]; ``cloud``: a precomputed BEV ``B x 3 x cells x cells``; raw-cloud rasterisation stays in numpy,
``preprocess.cloud_to_bev``) and outputs ``descriptor`` (``B x D``, unnormalised). The batch axis is
dynamic. The model kind and input spec are stored in the ONNX metadata so a deployment can check them.

The TorchScript-based exporter is used (``dynamo=False``): the torch.export-based one needs
``onnxscript``, which is not part of this environment.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from .vpr import DESCRIPTOR_KEY, VprModel, l2_normalize

OUTPUT_NAME = "descriptor"
ONNX_CHECKPOINT_NAME = "checkpoint_name"  # metadata: the checkpoint an ONNX file was exported from
ONNX_CHECKPOINT_SHA = "checkpoint_sha256"
BATCH_AXIS_NAME = "batch"
ONNX_OPSET = 17


class _DescriptorGraph(nn.Module):
    """Positional-input, single-output view of a ``VprModel`` for the exporter."""

    def __init__(self, model: VprModel):
        super().__init__()
        self.model = model
        self.names = model.input_spec.inputs

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, tensors)))[DESCRIPTOR_KEY]


def export_onnx(
    model: VprModel, path: str | Path, example_inputs: dict[str, torch.Tensor] | None = None,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write ``model`` to ``path`` as ONNX (eval mode; the model's own mode is restored afterwards).

    ``example_inputs`` maps input names to example tensors; by default random ones of the spec's shapes.
    ``metadata`` adds string entries to the model's own (kind, input spec, config) in the same write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    spec = model.input_spec
    examples = example_inputs or spec.example_inputs(batch=1)
    missing = set(spec.inputs) - set(examples)
    if missing:
        raise ValueError(f"example_inputs lacks {sorted(missing)}; the model takes {list(spec.inputs)}")
    names = list(spec.inputs)
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            # The legacy exporter announces its own deprecation (dynamo export needs onnxscript, absent here).
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            # Emitted for the pads of TF-"same" convolutions; harmless (the Slice is just not pre-folded).
            warnings.filterwarnings("ignore", message=".*Only steps=1 can be constant folded.*")
            torch.onnx.export(
                _DescriptorGraph(model),
                tuple(examples[name] for name in names),
                str(path),
                dynamo=False,
                input_names=names,
                output_names=[OUTPUT_NAME],
                dynamic_axes={name: {0: BATCH_AXIS_NAME} for name in [*names, OUTPUT_NAME]},
                opset_version=ONNX_OPSET,
                do_constant_folding=True,
            )
    finally:
        model.train(was_training)
    _write_metadata(path, model, metadata or {})
    return path


def export_model(checkpoint: str | Path, out: str | Path) -> Path:
    """Export a checkpoint folder to ONNX, recording the checkpoint's identity in the ONNX metadata (so a
    localisation node on ONNX Runtime can check the map without the checkpoint folder)."""
    from .checkpoint import load_model, model_identity

    name, sha = model_identity(checkpoint)
    return export_onnx(load_model(checkpoint), out, metadata={ONNX_CHECKPOINT_NAME: name, ONNX_CHECKPOINT_SHA: sha})


def _write_metadata(path: Path, model: VprModel, extra: dict[str, str]) -> None:
    spec = model.input_spec
    proto = onnx.load(str(path))
    metadata = {
        "kind": model.kind,
        "descriptor_dim": str(spec.descriptor_dim),
        "inputs": json.dumps(list(spec.inputs)),
        "image_size": json.dumps(spec.image_size),
        "bev": json.dumps(None if spec.bev is None else spec.bev.model_dump()),
        "model_config": model.cfg.model_dump_json(),
        **extra,
    }
    onnx.helper.set_model_props(proto, metadata)
    onnx.save(proto, str(path))


class OnnxRunner:
    """Run an exported model with onnxruntime on the CPU; returns the same raw descriptors as torch."""

    def __init__(self, path: str | Path, intra_op_num_threads: int = 1):
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_num_threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)

    @property
    def descriptor_dim(self) -> int:
        return int(self.metadata["descriptor_dim"])

    def __call__(self, **inputs: np.ndarray) -> np.ndarray:
        """Raw ``B x D`` float32 descriptors from batched float32 inputs named as at export."""
        missing = set(self.input_names) - set(inputs)
        if missing:
            raise ValueError(f"missing inputs {sorted(missing)}; the model takes {self.input_names}")
        feeds = {name: np.ascontiguousarray(inputs[name], dtype=np.float32) for name in self.input_names}
        return self.session.run([OUTPUT_NAME], feeds)[0]

    def embed(self, **inputs: np.ndarray) -> np.ndarray:
        """L2-normalised float32 descriptors (for retrieval)."""
        return l2_normalize(self(**inputs))
