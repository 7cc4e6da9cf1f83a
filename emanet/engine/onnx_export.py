"""Exporting a trained network to ONNX, checked against the PyTorch model with onnxruntime.

The file takes normalised images (N, 3, H, W) float32, N, H and W dynamic, and gives
logits (N, classes, H, W) at the input size; the EM iterations are unrolled with the
evaluation's T, and the backbone runs at the evaluation's output stride. Its metadata
records what an application needs to use it: the class names and colours, the mean and
std, T, the experiment, and the run's config (the evaluation protocol), from which
:meth:`emanet.engine.segmenter.Segmenter.from_onnx` runs it as evaluation would.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from emanet.data.transforms import height_width
from emanet.engine.onnx_runtime import EXPORT_EXTRA, OnnxNetwork, checkpoint_stamp
from emanet.engine.segmenter import ExportDisagrees, Segmenter
from emanet.errors import ConfigError
from emanet.io import atomic_write, write_json

if TYPE_CHECKING:  # imported where used: the [export] extra is optional
    import onnx

log = logging.getLogger(__name__)

# ONNX opset of the exported graph: 18, the first with Resize's antialias attribute and
# the one torch.onnx's dynamo exporter targets; onnxruntime has run it since 1.14.
OPSET = 18
# The share of pixels whose class onnxruntime must give as PyTorch does, at each checked size.
MIN_AGREEMENT = 0.9999
INPUT_NAME, OUTPUT_NAME = "images", "logits"


def check_sizes(cfg) -> list[tuple[int, int, int]]:
    """(batch, height, width) of the inputs an export is checked at: the evaluation window
    (or training crop), and two smaller sizes that are not multiples of 8 (the output
    stride), the last a batch of two."""
    crop = cfg.eval.crop_size if cfg.eval.mode == "slide" else cfg.dataset.crop_size
    height, width = height_width(crop)
    return [(1, height, width), (1, height // 2 + 3, width * 3 // 4 + 5), (2, height * 3 // 4 + 1, width // 2 + 7)]


def check_input(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A normalised input that varies smoothly as photos do (noise at an eighth of the size,
    upsampled), rather than per-pixel noise, which no network was trained on."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(batch, 3, max(1, height // 8), max(1, width // 8), generator=generator)
    return F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)


@contextmanager
def quiet_loggers(*names: str) -> Iterator[None]:
    """Warnings and errors only from the loggers ``names`` for the duration: the exporter's
    graph passes log every rewrite at INFO, which an application logging at INFO would show."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def export_graph(model: nn.Module) -> onnx.ModelProto:
    """The ONNX graph of ``model`` in eval mode, with dynamic batch, height and width.

    torch.onnx's dynamo exporter (``torch.export``): the exporter PyTorch maintains; the
    TorchScript one is deprecated. Traced on a batch of two, since ``torch.export``
    specialises a dimension that is 1 in the example.
    """
    try:
        import onnx  # noqa: F401  # the exporter needs both: say which extra, not which module
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise ConfigError(f"exporting to ONNX needs onnx and onnxscript: {EXPORT_EXTRA}") from error
    model.eval()
    example = check_input(2, 64, 64)
    dynamic = {
        INPUT_NAME: {0: torch.export.Dim("batch"), 2: torch.export.Dim("height", min=8),
                     3: torch.export.Dim("width", min=8)},
    }
    with warnings.catch_warnings(), torch.no_grad(), quiet_loggers("onnxscript", "onnx_ir"):
        warnings.simplefilter("ignore")  # the exporter's notices about its own internals
        program = torch.onnx.export(
            model, (example,), dynamo=True, dynamic_shapes=dynamic, input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME], opset_version=OPSET, verbose=False, external_data=False,
        )
    return program.model_proto


def with_metadata(proto: onnx.ModelProto, metadata: dict[str, object]) -> bytes:
    """The ONNX file (bytes) of ``proto`` with ``metadata`` (JSON values) in its
    ``metadata_props``, checked by ``onnx.checker``."""
    import onnx

    onnx.helper.set_model_props(
        proto, {key: value if isinstance(value, str) else json.dumps(value) for key, value in metadata.items()}
    )
    proto.producer_name = "emanet"
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString()


def export_metadata(segmenter: Segmenter) -> dict[str, object]:
    cfg = segmenter.cfg
    config = OmegaConf.to_container(cfg, resolve=True)
    config["eval"].update(amp="off", channels_last=False)  # what onnxruntime runs: float32, its own layout
    return {
        "experiment": str(cfg.name),
        "class_names": segmenter.classes,
        "palette": segmenter.palette.tolist(),
        "mean": list(cfg.dataset.mean),
        "std": list(cfg.dataset.std),
        "eval_stages": segmenter.eval_stages,
        "output_stride": segmenter.output_stride,
        "opset": str(OPSET),
        "input": f"{INPUT_NAME}: (N, 3, H, W) float32 RGB, (pixel / 255 - mean) / std",
        "output": f"{OUTPUT_NAME}: (N, classes, H, W) float32 at the input size; argmax over classes gives the mask",
        "checkpoint": str(segmenter.source),
        "checkpoint_file": checkpoint_stamp(segmenter.source),
        "trained": segmenter.trained,
        "config": config,
    }


def check_agreement(model: nn.Module, network: OnnxNetwork, sizes: list[tuple[int, int, int]]) -> list[dict]:
    """For each (batch, height, width): the largest absolute difference between the logits of
    onnxruntime and of the PyTorch model (float32), and the share of pixels whose argmax
    (class) they agree on."""
    results = []
    for batch, height, width in sizes:
        images = check_input(batch, height, width, seed=height * 10007 + width)
        with torch.no_grad():
            expected = model(images).float()
        logits = network(images)
        results.append({
            "size": [batch, height, width],
            "max_abs_logit_difference": float((logits - expected).abs().max()),
            "argmax_agreement": float((logits.argmax(1) == expected.argmax(1)).double().mean()),
        })
    return results


def agreement_summary(results: list[dict]) -> str:
    return "; ".join(
        f"{'x'.join(map(str, result['size']))}: max |logit difference| {result['max_abs_logit_difference']:.2e}, "
        f"classes agree on {100 * result['argmax_agreement']:.4f}% of pixels"
        for result in results
    )


def exported_network(segmenter: Segmenter) -> tuple[bytes, dict]:
    """The checked ONNX file (bytes) of a PyTorch ``segmenter``'s network, and the report of
    its export (sizes checked, differences, agreement, seconds). Raises
    :class:`~emanet.engine.segmenter.ExportDisagrees` with the numbers where onnxruntime's
    classes agree with PyTorch's on fewer than :data:`MIN_AGREEMENT` of the pixels at some
    size."""
    if segmenter.backend != "pytorch":
        raise ConfigError(f"only a PyTorch model can be exported, not one run with {segmenter.backend}")
    model = segmenter.network.float().to("cpu", memory_format=torch.contiguous_format)
    started = time.perf_counter()
    metadata = export_metadata(segmenter)
    graph = export_graph(model)
    exported_in = time.perf_counter() - started
    results = check_agreement(model, OnnxNetwork(graph.SerializeToString()), check_sizes(segmenter.cfg))
    metadata["check"] = results
    report = {
        "opset": OPSET, "eval_stages": segmenter.eval_stages, "checked": results,
        "min_agreement": MIN_AGREEMENT, "export_seconds": round(exported_in, 1),
        "check_seconds": round(time.perf_counter() - started - exported_in, 1),
    }
    if min(result["argmax_agreement"] for result in results) < MIN_AGREEMENT:
        raise ExportDisagrees(
            f"the ONNX export of {segmenter.source} does not agree with the PyTorch model "
            f"(at least {100 * MIN_AGREEMENT:g}% of pixels required): {agreement_summary(results)}"
        )
    return with_metadata(graph, metadata), report


def export_onnx(segmenter: Segmenter, path: Path) -> dict:
    """Write the checked export of ``segmenter`` to ``path`` (``RUN/export/model.onnx``) and
    its report beside it (``export.json``), each atomically; returns the report. Nothing is
    written when the check fails."""
    graph, report = exported_network(segmenter)
    atomic_write(path, lambda temp: Path(temp).write_bytes(graph))
    report = {"model": str(path), "bytes": len(graph), "checkpoint": str(segmenter.source), **report}
    write_json(report, path.with_name("export.json"))
    log.info("exported %s to %s (opset %d, T=%s): %s", segmenter.source, path, OPSET, segmenter.eval_stages,
             agreement_summary(report["checked"]))
    return report

