"""The responsibilities Z of a few EMA bases on one image, after the last EM iteration
(the paper's visualisation of what the bases stand for), drawn as one figure.

    python scripts/visualize_bases.py checkpoint=PATH [experiment=...] [--index 0 | --image PATH]
        [--bases 3 17 40] [--count 6] [--output PATH]

The figure is written as bases.png and bases.pdf in the checkpoint's run directory (beside
its checkpoints/ folder; the checkpoint's own folder for a file elsewhere), or to --output
(and the .pdf beside it).

Without --bases, the ``--count`` bases with the largest total responsibility on the image
are shown. Each panel is the map z[:, k] over the feature grid, upsampled to the image, all
on one colour scale from 0 to the largest responsibility shown, as the colour bar beside
them says.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from emanet.cli import compose_config, one_line_errors
from emanet.data import build_dataset
from emanet.data.segmentation import read_image
from emanet.data.transforms import eval_transform
from emanet.engine.checkpoint import checkpoint_file
from emanet.engine.evaluate import evaluation_settings
from emanet.engine.segmenter import load_trained_model
from emanet.engine.visualize import denormalize
from emanet.errors import ConfigError
from emanet.models.ema import em_iterations
from emanet.plots import bases_figure, write_figure


@torch.no_grad()
def responsibilities(model: torch.nn.Module, image: torch.Tensor) -> torch.Tensor:
    """Z of the EMA unit for one normalised image (3, H, W), as (h, w, K) over the feature grid."""
    unit = model.head.ema
    captured = {}
    handle = unit.conv_in.register_forward_hook(lambda module, args, output: captured.setdefault("x", output))
    model.eval()(image.unsqueeze(0))
    handle.remove()
    x = captured["x"]  # (1, C, h, w): what the EM iterations see
    _, channels, height, width = x.shape
    z, _ = em_iterations(
        x.reshape(1, channels, height * width).float(), unit.mu.float(), unit.eval_stages, unit.lambda_,
        unit.normalize_bases,
    )
    return z[0].reshape(height, width, -1)


def evaluation_responsibilities(model, cfg, image: torch.Tensor) -> torch.Tensor:
    """:func:`responsibilities` on the grid evaluation uses (``eval_output_stride``, e.g.
    the OS16-trained, OS8-evaluated ablation models)."""
    with evaluation_settings(model, cfg):
        return responsibilities(model, image)


def figure(image: np.ndarray, maps: torch.Tensor, bases: list[int]) -> Figure:
    """The image (H, W, 3) and the maps (h, w, K) of ``bases``, each upsampled bilinearly to
    the image (corners aligned, as the grid's cells are centred on them)."""
    height, width = image.shape[:2]
    upsampled = {
        f"base {k}": F.interpolate(maps[..., k][None, None].float(), size=(height, width), mode="bilinear",
                                   align_corners=True)[0, 0].numpy()
        for k in bases
    }
    return bases_figure(image, upsampled)


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=int, default=0, help="image of the val split")
    parser.add_argument("--image", type=Path, help="an image file instead")
    parser.add_argument("--bases", type=int, nargs="*", help="which bases to show")
    parser.add_argument("--count", type=int, default=6, help="how many bases when --bases is not given")
    parser.add_argument("--output", type=Path,
                        help="the PNG, the PDF beside it (default: bases.png in the checkpoint's run directory)")
    parser.add_argument("overrides", nargs="*", help="evaluate.py overrides: checkpoint=PATH, experiment=...")
    return parser.parse_args(argv)


def visualize(args: argparse.Namespace) -> tuple[list[int], list[Path]]:
    """Draw the figure ``args`` ask for; returns the bases shown and the files written."""
    cfg = compose_config("evaluate", args.overrides)
    if cfg.model.head != "ema":
        raise ConfigError(f"model.head is {cfg.model.head!r}; only the EMA head has bases")
    num_bases = cfg.model.ema.num_bases
    if args.bases and not all(0 <= k < num_bases for k in args.bases):
        raise ConfigError(f"--bases must lie in 0-{num_bases - 1} (model.ema.num_bases={num_bases}), got {args.bases}")
    model, _ = load_trained_model(cfg, torch.device("cpu"))
    transform = eval_transform(cfg.dataset.mean, cfg.dataset.std)
    if args.image:
        tensor = transform(image=read_image(args.image, upright=True))["image"]
    else:
        dataset = build_dataset(cfg.dataset, cfg.dataset.val_split, transform)
        if not 0 <= args.index < len(dataset):
            raise ConfigError(f"--index must lie in 0-{len(dataset) - 1} (the {dataset.split} split), got {args.index}")
        tensor = dataset[args.index]["image"]
    maps = evaluation_responsibilities(model, cfg, tensor)
    bases = args.bases or maps.sum(dim=(0, 1)).argsort(descending=True)[: args.count].tolist()
    drawn = figure(denormalize(tensor, cfg.dataset.mean, cfg.dataset.std), maps, bases)
    return bases, write_figure(drawn, args.output or default_output(cfg.checkpoint))


def default_output(checkpoint: str) -> Path:
    """bases.png in the run directory the checkpoint belongs to, next to what the run
    wrote, not in the working directory (the repository root, often)."""
    path = checkpoint_file(checkpoint)
    folder = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return folder / "bases.png"


def main(argv: list[str] | None = None) -> None:
    """scripts/visualize_bases.py: a problem the user can fix ends it with one line, status 2."""
    args = parse_arguments(argv)
    with one_line_errors():
        bases, (png, _) = visualize(args)
    print(f"bases {bases} written to {png}")
