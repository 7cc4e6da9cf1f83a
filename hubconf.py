"""torch.hub entry points: a trained EMANet as a :class:`emanet.Segmenter`.

    seg = torch.hub.load("path/to/emanet", "emanet", checkpoint="runs/voc_emanet512/RUN", source="local")
    mask = seg.predict("photo.jpg")

No weights can be downloaded from here: ``emanet`` takes a run of this project, and the
other entry points take the published weights of an experiment once imported into this
project's format, each with its import command in its docstring (``torch.hub.help`` reads
GitHub repositories only: ``help(hubconf.NAME)`` in a checkout shows it).
"""

from __future__ import annotations

dependencies = ["torch", "torchvision", "omegaconf", "albumentations", "numpy", "PIL"]


def emanet(checkpoint, eval=None, device=None, eval_stages=None, backend=None):  # noqa: A002  # torch.hub's keywords
    """A trained model of this project: ``checkpoint`` is a training run's directory or a
    checkpoint file. ``eval`` (a protocol preset: ss, ms_flip, ss_slide, ms_flip_slide,
    release_ss), ``device``, ``eval_stages`` (EM iterations T) and ``backend`` (pytorch,
    onnxruntime) as :meth:`emanet.Segmenter.from_checkpoint` takes them."""
    from emanet.engine.segmenter import Segmenter

    return Segmenter.from_checkpoint(checkpoint, eval=eval, device=device, eval_stages=eval_stages, backend=backend)


def _published(experiment: str, source: str, command: str):
    def entry(checkpoint, eval=None, device=None, eval_stages=None, backend=None):  # noqa: A002
        segmenter = emanet(checkpoint, eval=eval, device=device, eval_stages=eval_stages, backend=backend)
        if segmenter.cfg.name != experiment:
            raise ValueError(
                f"{checkpoint} holds a model of experiment {segmenter.cfg.name}, not {experiment}: "
                f"load it with torch.hub.load(REPO, {segmenter.cfg.name!r}, ...) or 'emanet'"
            )
        return segmenter

    entry.__name__ = entry.__qualname__ = experiment
    entry.__doc__ = (
        f"experiment={experiment}: {source}. Import the published weights first:\n\n"
        f"    {command}\n\n"
        f"then torch.hub.load(REPO, {experiment!r}, checkpoint=DST, source='local'); the other keywords as "
        "for 'emanet'."
    )
    return entry


voc_release = _published(
    "voc_release", "EMANet(512) ResNet-101 of the authors' release (github.com/XiaLiPKU/EMANet), PASCAL VOC",
    "python scripts/import_official_checkpoint.py SRC.pth DST.pt --experiment voc_release",
)
cityscapes_mmseg_r101 = _published(
    "cityscapes_mmseg_r101", "mmsegmentation's EMANet ResNet-101, Cityscapes, 769x769 crops",
    "python scripts/import_mmseg_checkpoint.py SRC.pth DST.pt --experiment cityscapes_mmseg_r101",
)
cityscapes_mmseg_r50 = _published(
    "cityscapes_mmseg_r50", "mmsegmentation's EMANet ResNet-50, Cityscapes, 769x769 crops",
    "python scripts/import_mmseg_checkpoint.py SRC.pth DST.pt --experiment cityscapes_mmseg_r50",
)
cityscapes_mmseg_r101_512x1024 = _published(
    "cityscapes_mmseg_r101_512x1024", "mmsegmentation's EMANet ResNet-101, Cityscapes, 512x1024 crops",
    "python scripts/import_mmseg_checkpoint.py SRC.pth DST.pt --experiment cityscapes_mmseg_r101_512x1024",
)
cityscapes_mmseg_r50_512x1024 = _published(
    "cityscapes_mmseg_r50_512x1024", "mmsegmentation's EMANet ResNet-50, Cityscapes, 512x1024 crops",
    "python scripts/import_mmseg_checkpoint.py SRC.pth DST.pt --experiment cityscapes_mmseg_r50_512x1024",
)
