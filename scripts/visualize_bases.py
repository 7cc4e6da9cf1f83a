"""The responsibilities Z of a few EMA bases on one image, after the last EM iteration
(the paper's visualisation of what the bases stand for), saved as one PNG.

    python scripts/visualize_bases.py checkpoint=PATH [experiment=...] [--index 0 | --image PATH]
        [--bases 3 17 40] [--count 6] [--output bases.png]

Without --bases, the ``--count`` bases with the largest total responsibility on the image
are shown. Each panel is the map z[:, k] over the feature grid, upsampled to the image,
from dark (0) to yellow (the map's maximum).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from emanet.cli import compose_config, one_line_errors
from emanet.data import build_dataset
from emanet.data.segmentation import read_image
from emanet.data.transforms import eval_transform
from emanet.engine.evaluate import evaluation_settings, load_trained_model
from emanet.engine.visualize import denormalize
from emanet.errors import ConfigError
from emanet.io import atomic_write
from emanet.models.ema import em_iterations
from emanet.tables import colour_scale


@torch.no_grad()
def responsibilities(model: torch.nn.Module, image: torch.Tensor) -> torch.Tensor:
    """Z (N, K) of the EMA unit for one normalised image (3, H, W), and the grid (h, w)."""
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
    return z[0].reshape(height, width, -1)  # (h, w, K)


def evaluation_responsibilities(model, cfg, image: torch.Tensor) -> torch.Tensor:
    """:func:`responsibilities` on the grid evaluation uses (``eval_output_stride``, e.g.
    the OS16-trained, OS8-evaluated ablation models)."""
    with evaluation_settings(model, cfg):
        return responsibilities(model, image)


def colour_map(values: np.ndarray) -> np.ndarray:
    table = np.array([colour_scale(f) for f in np.linspace(0, 1, 256)], dtype=np.uint8)
    scaled = values / values.max() if values.max() > 0 else values
    return table[np.round(scaled * 255).astype(int)]


def figure(image: np.ndarray, maps: torch.Tensor, bases: list[int]) -> Image.Image:
    height, width = image.shape[:2]
    panels = [image]
    for k in bases:
        upsampled = F.interpolate(maps[..., k][None, None], size=(height, width), mode="bilinear", align_corners=True)
        panels.append(colour_map(upsampled[0, 0].numpy()))
    canvas = Image.fromarray(np.concatenate(panels, axis=1))
    draw = ImageDraw.Draw(canvas)
    for position, k in enumerate(bases, start=1):
        draw.text((position * width + 4, 4), f"base {k}", fill="white")
    return canvas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=int, default=0, help="image of the val split")
    parser.add_argument("--image", type=Path, help="an image file instead")
    parser.add_argument("--bases", type=int, nargs="*", help="which bases to show")
    parser.add_argument("--count", type=int, default=6, help="how many bases when --bases is not given")
    parser.add_argument("--output", type=Path, default=Path("bases.png"))
    parser.add_argument("overrides", nargs="*", help="evaluate.py overrides: checkpoint=PATH, experiment=...")
    args = parser.parse_args()
    with one_line_errors():
        visualize(args)


def visualize(args: argparse.Namespace) -> None:
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
    image = figure(denormalize(tensor, cfg.dataset.mean, cfg.dataset.std), maps, bases)
    atomic_write(args.output, lambda temp: image.save(temp, format="PNG"))
    print(f"bases {bases} written to {args.output}")


if __name__ == "__main__":
    main()
