"""Export a trained model to ONNX, checked against PyTorch with onnxruntime.

    python scripts/export.py checkpoint=RUN [eval_stages=T] [output=PATH]

``checkpoint`` is a training run's directory or one of its checkpoint files; the model is
written to ``RUN/export/model.onnx`` (``output=`` elsewhere) with ``RUN/export/export.json``,
the report of its check. The file takes normalised images (N, 3, H, W) float32, N, H and
W dynamic, and gives logits (N, classes, H, W) at the input size; the EM iterations are
unrolled with the run's evaluation T (``eval_stages=`` another). Its metadata holds the
class names and colours, the mean and std, T, the experiment and the run's config.

Before it is written, the export is run with onnxruntime on three input sizes (one the
evaluation window, two that are not multiples of 8) beside the PyTorch model: the largest
logit difference and the share of pixels whose class agrees are printed, and an export
that agrees on fewer than 99.99% of the pixels at some size is not written (exit status 1).
Needs the [export] extra: ``pip install 'emanet[export]'``. The same program as
``emanet-export``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from emanet.errors import ConfigError, EmanetError

USAGE = "usage: python scripts/export.py checkpoint=RUN [eval_stages=T] [output=PATH]"
KEYS = ("checkpoint", "eval_stages", "output")


def parse_arguments(arguments: list[str]) -> dict[str, str]:
    """``key=value`` arguments as a dict; ConfigError naming an unknown or missing key."""
    settings = {}
    for argument in arguments:
        key, equals, value = argument.partition("=")
        if not equals or key not in KEYS:
            raise ConfigError(f"{argument!r}: expected one of {', '.join(f'{key}=...' for key in KEYS)}; {USAGE}")
        settings[key] = value
    if "checkpoint" not in settings:
        raise ConfigError(f"checkpoint=RUN is required; {USAGE}")
    if "eval_stages" in settings and not settings["eval_stages"].isdigit():
        raise ConfigError(f"eval_stages={settings['eval_stages']}: expected a whole number of EM iterations")
    return settings


def export(settings: dict[str, str]) -> dict:
    """Export the checkpoint ``settings`` names; returns the report written beside it."""
    from emanet.engine.onnx_export import export_onnx
    from emanet.engine.segmenter import Segmenter, export_dir

    stages = int(settings["eval_stages"]) if "eval_stages" in settings else None
    segmenter = Segmenter.from_checkpoint(settings["checkpoint"], device="cpu", eval_stages=stages, backend="pytorch")
    output = Path(settings["output"]) if "output" in settings else export_dir(segmenter.source) / "model.onnx"
    return export_onnx(segmenter, output)


def main(arguments: list[str] | None = None) -> None:
    arguments = sys.argv[1:] if arguments is None else arguments
    if "-h" in arguments or "--help" in arguments:
        print(__doc__)
        sys.exit(0)
    # This project's lines; the exporter's own loggers (onnxscript's graph passes) stay at warnings.
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("emanet").setLevel(logging.INFO)
    from emanet.engine.segmenter import ExportDisagrees

    try:
        report = export(parse_arguments(arguments))
    except ExportDisagrees as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except EmanetError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {report['model']} ({report['bytes'] / 2**20:.1f} MiB, opset {report['opset']}, "
          f"T={report['eval_stages']}); check: {Path(report['model']).with_name('export.json')}")
