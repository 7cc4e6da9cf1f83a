"""The responsibilities Z of a few EMA bases on one image, after the last EM iteration
(the paper's visualisation of what the bases stand for), saved as one PNG.

    python scripts/visualize_bases.py checkpoint=PATH [experiment=...] [--index 0 | --image PATH]
        [--bases 3 17 40] [--count 6] [--output PATH]

The figure is written to bases.png in the checkpoint's run directory (beside its
checkpoints/ folder; the checkpoint's own folder for a file elsewhere), or to --output.

Without --bases, the ``--count`` bases with the largest total responsibility on the image
are shown. Each panel is the map z[:, k] over the feature grid, upsampled to the image
(shown at least 256 pixels on its shorter side), all from dark (0) to yellow (the largest
responsibility shown) as the colour bar beside them says.
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
from emanet.engine.checkpoint import checkpoint_file
from emanet.engine.evaluate import evaluation_settings, load_trained_model
from emanet.engine.figures import PAD, colour_bar_width, colour_scale, draw_colour_bar, font, text_size
from emanet.engine.visualize import denormalize
from emanet.errors import ConfigError
from emanet.io import atomic_write
from emanet.models.ema import em_iterations


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


MIN_PANEL_SIDE = 256  # small images (the demo's are 64-80 pixels) are enlarged to at least this


def colour_map(values: np.ndarray, high: float) -> np.ndarray:
    """Responsibilities as colours, 0 dark blue to ``high`` yellow."""
    table = np.array([colour_scale(f) for f in np.linspace(0, 1, 256)], dtype=np.uint8)
    scaled = np.clip(values / high, 0, 1) if high > 0 else values
    return table[np.round(scaled * 255).astype(int)]


def figure(image: np.ndarray, maps: torch.Tensor, bases: list[int]) -> Image.Image:
    """The image and one panel per base, all on one colour scale (0 to the largest
    responsibility shown) given by a colour bar, so that the bases can be compared."""
    typeface = font(12)
    height, width = image.shape[:2]
    zoom = max(1.0, MIN_PANEL_SIDE / min(height, width))
    panel_height, panel_width = round(height * zoom), round(width * zoom)
    upsampled = [
        F.interpolate(maps[..., k][None, None], size=(panel_height, panel_width), mode="bilinear",
                      align_corners=True)[0, 0].numpy()
        for k in bases
    ]
    high = max(float(values.max()) for values in upsampled)
    panels = [np.asarray(Image.fromarray(image).resize((panel_width, panel_height), Image.Resampling.BICUBIC))]
    panels += [colour_map(values, high) for values in upsampled]
    names = ["image", *(f"base {k}" for k in bases)]

    def bar_label(value: float) -> str:
        return f"{value:.2f}"

    gap = 8
    bar_caption = "responsibility z"
    _, line_height = text_size("base", typeface)
    top = PAD + line_height + 6
    bar_left = PAD + len(panels) * (panel_width + gap) + 4
    width_needed = bar_left + max(colour_bar_width(0.0, high, bar_label, typeface), text_size(bar_caption, typeface)[0])
    canvas = Image.new("RGB", (width_needed + PAD, top + panel_height + PAD), "white")
    draw = ImageDraw.Draw(canvas)
    for position, (panel, name) in enumerate(zip(panels, names, strict=True)):
        left = PAD + position * (panel_width + gap)
        canvas.paste(Image.fromarray(panel), (left, top))
        draw.text((left, PAD), name, fill="black", font=typeface)
    draw.text((bar_left, PAD), bar_caption, fill="black", font=typeface)
    draw_colour_bar(draw, bar_left, top, panel_height, 0.0, high, bar_label, typeface)
    return canvas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=int, default=0, help="image of the val split")
    parser.add_argument("--image", type=Path, help="an image file instead")
    parser.add_argument("--bases", type=int, nargs="*", help="which bases to show")
    parser.add_argument("--count", type=int, default=6, help="how many bases when --bases is not given")
    parser.add_argument("--output", type=Path, help="the PNG (default: bases.png in the checkpoint's run directory)")
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
    output = args.output or default_output(cfg.checkpoint)
    atomic_write(output, lambda temp: image.save(temp, format="PNG"))
    print(f"bases {bases} written to {output}")


def default_output(checkpoint: str) -> Path:
    """bases.png in the run directory the checkpoint belongs to, next to what the run
    wrote, not in the working directory (the repository root, often)."""
    path = checkpoint_file(checkpoint)
    folder = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return folder / "bases.png"


if __name__ == "__main__":
    main()
