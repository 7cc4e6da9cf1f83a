"""A trained model as one object: images in, class masks out.

    from emanet import Segmenter
    seg = Segmenter.from_checkpoint("runs/voc_emanet512/2026-12-01_10-00-00")
    mask = seg.predict("photo.jpg")  # (H, W) uint8 class ids

A :class:`Segmenter` is built from a run's own ``config.yaml`` (or the config a checkpoint
records), so no Hydra call is needed; ``evaluate.py`` and ``scripts/predict.py`` load
their model through it too (:meth:`Segmenter.from_config`). The network is either the
PyTorch model or, from an exported file (``scripts/export.py``), an onnxruntime session
(:mod:`emanet.engine.onnx_runtime`); both run the same preprocessing and the same
evaluation protocol (scales, flip, whole, sliding-window or the release's padding).
"""

from __future__ import annotations

import importlib.util
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from PIL import Image

from emanet.data import dataset_class_names
from emanet.data.palette import colorize, palette
from emanet.data.segmentation import eight_bit_rgb, eight_bits, read_image
from emanet.data.transforms import eval_transform
from emanet.engine.amp import AmpSettings
from emanet.engine.checkpoint import checkpoint_file, load_checkpoint, load_model_weights
from emanet.engine.evaluator import eval_inference, predict_classes, predict_on_device
from emanet.errors import CheckpointError, ConfigError
from emanet.models.segmentor import EM_HEADS, SegmentationModel, build_model, eval_output_stride_of, eval_stages_of
from emanet.renamed_keys import rename_old_keys

log = logging.getLogger(__name__)

# The evaluation presets (configs/eval/<name>.yaml) a Segmenter can be given by name.
EVAL_PRESETS = Path(__file__).resolve().parents[1] / "configs" / "eval"
# The keys a preset file sets itself: the protocol. The others (window size, batch, ...)
# are the run's, as with eval=NAME on the command line, where the experiment's own eval.*
# settings apply over the preset.
PRESET_KEYS = ("mode", "scales", "flip")
BACKENDS = ("pytorch", "onnxruntime")
# How a Segmenter runs on a CPU unless told: the fastest backend of those measured by
# `scripts/benchmark.py infer` whose classes agree with eager float32 PyTorch on at least
# 99.99% of pixels (docs/benchmarks.md, "Inference on a CPU", 2 AVX2 cores at 512x512):
# onnxruntime, 1.22x / 1.68x eager float32 for EMANet(512) ResNet-101 at batch 1 / 8, and
# 2.0x for the demo network. torch.compile came second (1.13x / 1.56x) but compiles for
# 40-60 s, and again for every new image size. Without the [export] extra: PyTorch float32
# with channels_last activations (1.05x / 1.21x; the demo 1.5x). bfloat16 autocast needs
# AVX-512 BF16 or AMX to pay off.
CPU_DEFAULT_BACKEND = "onnxruntime"
CPU_FALLBACK = {"amp": "off", "channels_last": True}

ImageInput = str | Path | Image.Image | np.ndarray | torch.Tensor


class Segmenter:
    """A trained segmentation network with its classes, colours, normalisation and
    evaluation protocol.

    Build one with :meth:`from_checkpoint`, :meth:`from_onnx` or :meth:`from_config`.
    ``network`` maps normalised images (B, 3, H, W) to logits (B, classes, H, W) on
    ``device``: the PyTorch model in eval mode (at ``model.backbone.eval_output_stride``
    if the run sets one), or an onnxruntime session.
    """

    def __init__(
        self, network: Callable[[torch.Tensor], torch.Tensor], cfg: DictConfig, device: torch.device,
        amp: AmpSettings, backend: str, source: Path, trained: dict | None = None,
    ) -> None:
        self.network = network
        self.cfg = cfg
        self.device = device
        self.amp = amp
        self.backend = backend
        self.source = source
        self.trained = trained or {}
        self.inference = eval_inference(cfg)
        self.transform = eval_transform(cfg.dataset.mean, cfg.dataset.std)

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, eval: str | None = None, device: str | torch.device | None = None,  # noqa: A002
        eval_stages: int | None = None, backend: str | None = None,
    ) -> Segmenter:
        """The model of a training run's directory or of a checkpoint file.

        The config is the run's ``config.yaml`` (beside the checkpoint, or above its
        ``checkpoints/`` folder), else the one the checkpoint records. ``eval`` names a
        protocol preset (``ss``, ``ms_flip``, ``ss_slide``, ``ms_flip_slide``,
        ``release_ss``; default: the run's); ``eval_stages`` the EM iterations T (default:
        the run's ``model.ema.eval_stages``). ``device``: ``cuda`` if there is one, else the
        CPU. On a GPU the backend is PyTorch, under the run's ``eval.amp`` and
        ``eval.channels_last``. On a CPU it is :data:`CPU_DEFAULT_BACKEND` where the [export]
        extra is installed (:meth:`with_onnxruntime`: the run's saved export, or one made in
        memory and checked), else PyTorch float32 with :data:`CPU_FALLBACK`'s layout.
        ``backend`` (``pytorch``, ``onnxruntime``) chooses.
        """
        device = choose_device(device)
        cfg = run_config(path)
        with open_dict(cfg):
            cfg.checkpoint = str(checkpoint_file(path))
        apply_eval_choices(cfg, eval, eval_stages)
        if device.type == "cpu":
            with open_dict(cfg):
                cfg.eval.update(CPU_FALLBACK)
            if backend is None and onnx_export_available():
                try:
                    return cls.from_config(cfg, device, CPU_DEFAULT_BACKEND)
                except ExportDisagrees as error:  # the PyTorch model is the reference: fall back to it
                    log.warning("%s; running it with PyTorch instead", error)
        return cls.from_config(cfg, device, backend or "pytorch")

    @classmethod
    def from_config(
        cls, cfg: DictConfig, device: str | torch.device | None = None, backend: str = "pytorch"
    ) -> Segmenter:
        """From a composed config (``evaluate.py``'s and ``scripts/predict.py``'s): the weights
        of ``cfg.checkpoint`` in the model ``cfg.model`` describes, run with PyTorch, or with
        onnxruntime (:meth:`with_onnxruntime`)."""
        device = choose_device(device)
        if backend not in BACKENDS:
            raise ConfigError(f"backend={backend}: choose one of {', '.join(BACKENDS)}")
        amp = AmpSettings.from_config(cfg.eval, device)
        if backend == "onnxruntime":
            return cls.with_onnxruntime(cfg, device)
        model, checkpoint = load_trained_model(cfg, device, amp)
        model.eval()
        model.backbone.set_output_stride(eval_output_stride_of(cfg))
        return cls(model, cfg, device, amp, backend, checkpoint_file(cfg.checkpoint), trained_record(checkpoint))

    @classmethod
    def with_onnxruntime(cls, cfg: DictConfig, device: torch.device) -> Segmenter:
        """The checkpoint of ``cfg`` run with onnxruntime: the run's ``export/model.onnx`` where
        it was exported from this checkpoint file with this T, else an export made now, in
        memory and checked as ``scripts/export.py`` checks it."""
        from emanet.engine.onnx_export import exported_network
        from emanet.engine.onnx_runtime import OnnxNetwork, check_matches_config, exported_from

        checkpoint = checkpoint_file(cfg.checkpoint)
        saved = export_dir(checkpoint) / "model.onnx"
        if saved.is_file():
            network = OnnxNetwork(saved, device)
            if exported_from(network.metadata, checkpoint, cfg):
                check_matches_config(network.metadata, cfg, saved)
                return cls(network, cfg, device, AmpSettings(), "onnxruntime", saved, network.metadata["trained"])
        float32 = OmegaConf.merge(cfg, {"eval": {"amp": "off", "channels_last": False}})  # what the export runs
        reference = cls.from_config(float32, torch.device("cpu"), "pytorch")
        started = time.perf_counter()
        graph, _ = exported_network(reference)
        log.info(
            "exported %s to ONNX in memory for onnxruntime (%.0f s); python scripts/export.py checkpoint=%s saves it "
            "for the next time", checkpoint, time.perf_counter() - started, checkpoint,
        )
        return cls(OnnxNetwork(graph, device), cfg, device, AmpSettings(), "onnxruntime", checkpoint, reference.trained)

    @classmethod
    def from_onnx(
        cls, path: str | Path, eval: str | None = None, device: str | torch.device | None = None,  # noqa: A002
    ) -> Segmenter:
        """The network exported by ``scripts/export.py`` (a ``.onnx`` file, or a run directory
        holding ``export/model.onnx``), run with onnxruntime: the classes, colours,
        normalisation and protocol are those of the run it was exported from, recorded in
        the file. ``eval`` names another protocol preset; T is the file's."""
        from emanet.engine.onnx_runtime import OnnxNetwork

        device = choose_device(device or "cpu")
        path = exported_model_file(path)
        network = OnnxNetwork(path, device)
        cfg = OmegaConf.create(network.metadata["config"])
        apply_eval_choices(cfg, eval, None)
        return cls(network, cfg, device, AmpSettings(), "onnxruntime", path, network.metadata["trained"])

    # -- what the model knows --------------------------------------------------------------

    @property
    def classes(self) -> list[str]:
        """The class names, in label order: class k of a mask is ``classes[k]``."""
        return list(dataset_class_names(self.cfg.dataset))

    @property
    def palette(self) -> np.ndarray:
        """(classes, 3) uint8: the colour of each class (the dataset's, VOC's by default)."""
        return palette(self.cfg.dataset.class_colors)[: len(self.classes)]

    @property
    def eval_stages(self) -> int | None:
        """The EM iterations T the network runs (None for a head without them)."""
        return eval_stages_of(self.cfg)

    @property
    def output_stride(self) -> int:
        """The backbone's output stride as the network runs (the evaluation's)."""
        if self.backend == "onnxruntime":
            return self.network.metadata["output_stride"]
        return self.network.backbone.output_stride

    def __repr__(self) -> str:
        protocol = self.cfg.eval
        return (
            f"Segmenter({self.cfg.name}, {len(self.classes)} classes, {self.backend} on {self.device}, "
            f"eval {protocol.mode} scales={list(protocol.scales)} flip={protocol.flip}, T={self.eval_stages}, "
            f"from {self.source})"
        )

    # -- segmenting ------------------------------------------------------------------------

    def predict(self, image: ImageInput, probabilities: bool = False) -> np.ndarray:
        """The classes (H, W) uint8 of one image at its own size, or with ``probabilities``
        the class probabilities (classes, H, W) float32, averaged over the protocol's scales
        and flips. ``image``: a file path (turned upright as its EXIF orientation says), a
        PIL image, an (H, W, 3) RGB or (H, W) greyscale NumPy array (uint8, or uint16
        scaled to 8 bits), or a tensor: uint8 (3, H, W), or float (3, H, W) RGB in [0, 1]
        as torchvision's ``to_tensor`` gives."""
        return self.predict_batch([image], probabilities)[0]

    def predict_batch(
        self, images: Iterable[ImageInput], probabilities: bool = False, batch_size: int | None = None
    ) -> list[np.ndarray]:
        """:meth:`predict` for many images of any sizes, in their order. Images of one size
        run together, ``batch_size`` at a time (default ``eval.batch_size``)."""
        normalized = [self.normalize(image) for image in images]
        batch_size = batch_size or self.cfg.eval.batch_size
        by_size: dict[tuple[int, int], list[int]] = {}
        for index, tensor in enumerate(normalized):
            by_size.setdefault(tuple(tensor.shape[-2:]), []).append(index)
        results: list[np.ndarray | None] = [None] * len(normalized)
        for indices in by_size.values():
            for first in range(0, len(indices), batch_size):
                chosen = indices[first : first + batch_size]
                batch = torch.stack([normalized[index] for index in chosen])
                probs, _ = self.probabilities(batch)
                for index, image_probs in zip(chosen, probs, strict=True):
                    results[index] = (
                        image_probs.cpu().numpy() if probabilities else self.mask(image_probs.argmax(0))
                    )
        return results

    def mask(self, classes: torch.Tensor) -> np.ndarray:
        """Class ids (H, W) as a NumPy mask: uint8, or uint16 for a model of over 256 classes."""
        return classes.cpu().numpy().astype(np.uint8 if len(self.classes) <= 256 else np.uint16)

    def probabilities(
        self, images: torch.Tensor, ids: Sequence[str] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Class probabilities (B, classes, H, W) float32 on the device for normalised images
        (B, 3, H, W), under the protocol, precision and memory format; and the single-scale
        logits when that pass is part of the protocol (:func:`emanet.engine.evaluator.predict_on_device`).
        ``ids`` name the images if memory runs out."""
        with torch.inference_mode():
            return predict_on_device(
                self.network, images, self.device, self.cfg.eval.scales, self.cfg.eval.flip, self.inference,
                self.amp, ids,
            )

    def predict_classes(
        self, images: torch.Tensor, ids: Sequence[str] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Classes (B, H, W) on the CPU of normalised images (B, 3, H, W), and the
        single-scale classes when the protocol is more than that pass
        (:func:`emanet.engine.evaluator.predict_classes`)."""
        with torch.inference_mode():
            return predict_classes(
                self.network, images, self.device, self.cfg.eval.scales, self.cfg.eval.flip, self.inference,
                self.amp, ids,
            )

    def normalize(self, image: ImageInput) -> torch.Tensor:
        """An input of :meth:`predict` as the network's input: (3, H, W) float32,
        normalised with the dataset's mean and std as evaluation normalises."""
        if isinstance(image, torch.Tensor) and image.is_floating_point():
            if image.ndim != 3 or image.shape[0] != 3:
                raise ValueError(f"a float image tensor is (3, H, W) RGB in [0, 1]; got shape {tuple(image.shape)}")
            mean = torch.tensor(self.cfg.dataset.mean, dtype=image.dtype).view(3, 1, 1)
            std = torch.tensor(self.cfg.dataset.std, dtype=image.dtype).view(3, 1, 1)
            return ((image.cpu() - mean) / std).float()
        return self.transform(image=rgb_pixels(image))["image"]

    # -- showing a mask --------------------------------------------------------------------

    def colorize(self, mask: np.ndarray | torch.Tensor) -> np.ndarray:
        """A mask (H, W) of class ids in the classes' colours: (H, W, 3) uint8."""
        return colorize(np.asarray(mask, dtype=np.uint8), self.cfg.dataset.class_colors)

    def overlay(self, image: ImageInput, mask: np.ndarray | torch.Tensor, alpha: float = 0.5) -> np.ndarray:
        """The image with the mask's colours over it, ``alpha`` of each pixel the class
        colour's (0.5, as ``overlays/<id>.jpg``): (H, W, 3) uint8."""
        pixels = rgb_pixels(image)
        if pixels.shape[:2] != np.shape(mask)[:2]:
            raise ValueError(f"the image is {pixels.shape[:2]} and the mask {np.shape(mask)[:2]}: they must match")
        blend = (1 - alpha) * pixels + alpha * self.colorize(mask)
        return blend.astype(np.uint8)


def rgb_pixels(image: ImageInput) -> np.ndarray:
    """An image input as RGB (H, W, 3) uint8 pixels, as :func:`read_image` decodes files."""
    if isinstance(image, str | Path):
        return read_image(image, upright=True)
    if isinstance(image, Image.Image):
        return eight_bit_rgb(image)
    if isinstance(image, torch.Tensor):
        if image.is_floating_point():
            return (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
        image = image.cpu().numpy().transpose(1, 2, 0) if image.ndim == 3 else image.cpu().numpy()
    pixels = np.asarray(image)
    if pixels.dtype == np.uint16:
        pixels = eight_bits(pixels)
    if pixels.dtype != np.uint8:
        raise ValueError(f"an image array is uint8 (or uint16) RGB; got {pixels.dtype}")
    if pixels.ndim == 2:
        return np.repeat(pixels[..., None], 3, axis=2)
    if pixels.ndim == 3 and pixels.shape[2] in (3, 4):
        return np.ascontiguousarray(pixels[..., :3])
    raise ValueError(f"an image array is (H, W, 3) RGB, (H, W, 4) RGBA or (H, W) greyscale; got {pixels.shape}")


def load_trained_model(
    cfg: DictConfig, device: torch.device, amp: AmpSettings | None = None
) -> tuple[SegmentationModel, dict]:
    """The configured model with the weights of ``cfg.checkpoint``, on ``device`` in ``amp``'s
    memory format, and the checkpoint (for its iteration)."""
    checkpoint = load_checkpoint(cfg.checkpoint)
    model = build_model(cfg.model, cfg.dataset.num_classes, load_pretrained=False, auxiliary=False)
    if "model" in checkpoint:  # inference never runs the auxiliary head: its weights are not needed
        weights = {k: v for k, v in checkpoint["model"].items() if not k.startswith("aux_head.")}
        checkpoint = {**checkpoint, "model": weights}
    load_model_weights(model, checkpoint, cfg.checkpoint, cfg)
    channels_last = amp is not None and amp.channels_last
    model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    return model, checkpoint


def trained_record(checkpoint: dict) -> dict:
    """What a checkpoint says of its training: the iteration, and where imported weights came from."""
    return {key: checkpoint[key] for key in ("iteration", "imported_from") if key in checkpoint}


class ExportDisagrees(CheckpointError):
    """An ONNX export whose classes do not agree with the PyTorch model's."""


def onnx_export_available() -> bool:
    """Whether the [export] extra is installed: onnx, onnxscript and onnxruntime."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxscript", "onnxruntime"))


def choose_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def run_config(path: str | Path) -> DictConfig:
    """The config of the run a checkpoint belongs to: ``config.yaml`` of its run directory
    (:func:`run_dir_of`), else the config the checkpoint records. Keys renamed since are
    given their new names."""
    config_file = run_dir_of(path) / "config.yaml"
    if config_file.is_file():
        cfg, source = OmegaConf.load(config_file), config_file
    else:
        source = checkpoint_file(path)
        recorded = load_checkpoint(path).get("config")
        if not recorded:
            raise CheckpointError(
                f"{source}: no config.yaml beside it or in its run directory, and the checkpoint records no config; "
                "pass the training run's directory"
            )
        cfg = OmegaConf.create(recorded)
    rename_old_keys(cfg)
    for section in ("model", "dataset", "eval"):
        if section not in cfg:
            raise ConfigError(f"{source}: the run's config has no '{section}' section; is it a training run's?")
    return cfg


def apply_eval_choices(cfg: DictConfig, preset: str | None, eval_stages: int | None) -> None:
    """Set the protocol of the preset ``configs/eval/<preset>.yaml`` (its mode, scales and
    flip) and the EM iterations T on ``cfg``."""
    if preset is not None:
        presets = sorted(file.stem for file in EVAL_PRESETS.glob("*.yaml") if not file.stem.startswith("_"))
        if preset not in presets:
            raise ConfigError(f"eval={preset}: no such evaluation preset; choose one of {', '.join(presets)}")
        settings = OmegaConf.load(EVAL_PRESETS / f"{preset}.yaml")
        with open_dict(cfg):
            for key in PRESET_KEYS:
                cfg.eval[key] = settings[key]
    if eval_stages is not None:
        if cfg.model.head not in EM_HEADS:
            raise ConfigError(f"eval_stages={eval_stages}: model.head={cfg.model.head} has no EM iterations")
        if int(eval_stages) < 1:
            raise ConfigError(f"eval_stages={eval_stages}: T is at least 1")
        cfg.model.ema.eval_stages = int(eval_stages)


def exported_model_file(path: str | Path) -> Path:
    """The exported network a path names: a ``.onnx`` file, or ``export/model.onnx`` of the
    run directory a path (a run directory or one of its checkpoints) belongs to."""
    path = Path(path).expanduser()
    if path.suffix == ".onnx":
        candidate = path
    else:
        candidate = export_dir(path) / "model.onnx"
    if not candidate.is_file():
        raise CheckpointError(
            f"no exported model at {candidate}: export it with python scripts/export.py checkpoint={path}"
        )
    return candidate.resolve()


def export_dir(path: str | Path) -> Path:
    """``RUN/export``: where ``scripts/export.py`` writes the export of the run directory
    (:func:`run_dir_of`) of ``path``."""
    return run_dir_of(path) / "export"


def run_dir_of(path: str | Path) -> Path:
    """The run directory of a checkpoint path: the folder it names, else the folder above
    the ``checkpoints/`` folder holding the file, else the file's own folder."""
    path = Path(path).expanduser()
    if path.is_dir():
        return path
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent
