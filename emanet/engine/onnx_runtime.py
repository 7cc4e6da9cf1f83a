"""An exported network (``scripts/export.py``) run with onnxruntime, as a callable that the
evaluation protocol (:mod:`emanet.engine.evaluator`) drives like the PyTorch model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from emanet.data import dataset_class_names
from emanet.errors import ConfigError
from emanet.models.segmentor import eval_output_stride_of, eval_stages_of

EXPORT_EXTRA = "pip install 'emanet[export]' (onnx, onnxscript and onnxruntime)"
# Metadata entries of an exported file whose values are JSON; the others are plain text.
JSON_METADATA = (
    "config", "class_names", "palette", "mean", "std", "eval_stages", "output_stride", "check", "checkpoint_file",
    "trained",
)


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as error:
        raise ConfigError(f"running an exported model needs onnxruntime: {EXPORT_EXTRA}") from error
    return onnxruntime


class OnnxNetwork:
    """Normalised images (B, 3, H, W) to logits (B, classes, H, W) with an onnxruntime
    session of ``model`` (a file, or its bytes): on the CPU with as many threads as torch
    uses, or with CUDA's provider where ``device`` is a GPU and onnxruntime has it.
    ``metadata``: what the export recorded (:data:`JSON_METADATA` decoded)."""

    def __init__(self, model: str | Path | bytes, device: torch.device | None = None) -> None:
        onnxruntime = import_onnxruntime()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.log_severity_level = 3  # errors only: its warnings are about graph rewrites, not the user's input
        providers = ["CPUExecutionProvider"]
        on_gpu = device is not None and device.type == "cuda"
        if on_gpu and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        source = str(model) if isinstance(model, Path | str) else model
        self.session = onnxruntime.InferenceSession(source, options, providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        recorded = self.session.get_modelmeta().custom_metadata_map
        self.metadata = {key: json.loads(value) if key in JSON_METADATA else value for key, value in recorded.items()}

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        # images: (B, 3, H, W) float -> logits (B, classes, H, W) float32, on the images' device
        inputs = np.ascontiguousarray(images.detach().float().cpu().numpy())
        (logits,) = self.session.run(None, {self.input_name: inputs})
        return torch.from_numpy(logits).to(images.device)


def check_matches_config(metadata: dict, cfg: DictConfig, path: Path) -> None:
    """Refuse an exported file whose classes, normalisation or EM iterations are not those of
    the composed ``cfg`` it is to run under (``scripts/predict.py backend=onnxruntime``)."""
    recorded = metadata.get("config")
    if recorded is None:
        raise ConfigError(f"{path}: no emanet metadata in the file; export it with python scripts/export.py")
    differences = []
    if list(metadata["class_names"]) != list(dataset_class_names(cfg.dataset)):
        differences.append("its classes")
    if [metadata["mean"], metadata["std"]] != [list(cfg.dataset.mean), list(cfg.dataset.std)]:
        differences.append("dataset.mean/std")
    configured_stages = eval_stages_of(cfg)
    if metadata["eval_stages"] != configured_stages:
        differences.append(f"model.ema.eval_stages (exported with {metadata['eval_stages']}, "
                           f"configured {configured_stages}: export again with eval_stages={configured_stages})")
    if differences:
        raise ConfigError(f"{path} was exported with other {', '.join(differences)} than this run's config")


def checkpoint_stamp(path: Path) -> dict[str, int]:
    """What tells a checkpoint file apart from another at the same path: its size and
    modification time (a training run's ``last.pt`` rewritten in place changes them)."""
    stat = Path(path).stat()
    return {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def exported_from(metadata: dict, checkpoint: Path, cfg: DictConfig) -> bool:
    """Whether an exported file's metadata says it was exported from the file ``checkpoint``
    as it is now, with the T and output stride ``cfg`` evaluates with."""
    return (
        metadata.get("checkpoint") == str(checkpoint)
        and metadata.get("checkpoint_file") == checkpoint_stamp(checkpoint)
        and metadata.get("eval_stages") == eval_stages_of(cfg)
        and metadata.get("output_stride") == eval_output_stride_of(cfg)
    )

