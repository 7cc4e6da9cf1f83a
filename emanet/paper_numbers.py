"""The numbers others printed, which our runs are set beside, and the experiments that fill
each row.

Sources: Li et al., "Expectation-Maximization Attention Networks for Semantic
Segmentation", ICCV 2019 (arXiv:1907.13426), Tables 1, 3 and 4 and the ablation of T; the
authors' release (github.com/XiaLiPKU/EMANet, README); mmsegmentation
(github.com/open-mmlab/mmsegmentation, configs/emanet/README.md).
"""

from __future__ import annotations

from dataclasses import dataclass

# The paper's ablation of T, PASCAL VOC val mIoU (%), ResNet-50: row train_stages (T), the
# list runs over eval_stages (T) from train_stages up.
PAPER_ITERATION_TABLE = {
    1: [77.34, 77.52, 77.60, 77.59, 77.59, 77.59, 77.59, 77.59],
    2: [77.75, 78.04, 78.15, 78.15, 78.12, 78.12, 78.17],
    3: [78.52, 78.80, 78.86, 78.88, 78.89, 78.88],
    4: [78.14, 78.25, 78.27, 78.28, 78.27],
    5: [77.70, 77.76, 77.82, 77.86],
    6: [77.85, 77.91, 77.92],
    7: [77.11, 77.14],
    8: [77.24],
}


def paper_iteration_value(train_stages: int, eval_stages: int) -> float | None:
    """The paper's mIoU for a model trained with ``train_stages`` and evaluated with
    ``eval_stages``; None outside its table (eval_stages < train_stages, or past 8)."""
    row = PAPER_ITERATION_TABLE.get(train_stages, [])
    offset = eval_stages - train_stages
    return row[offset] if 0 <= offset < len(row) else None


# Table 1 (PASCAL VOC val, ResNet-101): method -> (SS, MS+flip).
PAPER_TABLE1 = {
    "ResNet-101": (None, None),
    "DeeplabV3": (78.51, 79.77),
    "DeeplabV3+": (79.35, 80.57),
    "PSANet": (78.51, 79.77),
    "EMANet(256)": (79.73, 80.94),
    "EMANet(512)": (80.05, 81.32),
}
# Baselines trained on the same recipe that the paper's Table 1 does not list.
EXTRA_TABLE1 = ("Non-local", "FCN")
# Table 3 (PASCAL Context) and Table 4 (COCO-Stuff): method -> mIoU (MS+flip).
PAPER_TABLE3 = {
    "PSPNet (ResNet-101)": 47.8, "DANet (ResNet-50)": 50.1, "MSCI (ResNet-152)": 50.3,
    "EMANet (ResNet-50)": 50.5, "SGR (ResNet-101)": 50.8, "CCL (ResNet-101)": 51.6,
    "EncNet (ResNet-101)": 51.7, "SGR+ (ResNet-101)": 52.5, "DANet (ResNet-101)": 52.6,
    "EMANet (ResNet-101)": 53.1,
}
PAPER_TABLE4 = {
    "RefineNet (ResNet-101)": 33.6, "CCL (ResNet-101)": 35.7, "DANet (ResNet-50)": 37.2,
    "DSSPN (ResNet-101)": 37.3, "EMANet (ResNet-50)": 37.6, "SGR (ResNet-101)": 39.1,
    "DANet (ResNet-101)": 39.7, "EMANet (ResNet-101)": 39.9,
}

# The experiments behind each row: Table 1's by experiment (ResNet-101), Tables 3 and 4 by
# experiment and backbone depth ("EMANet (ResNet-<depth>)").
TABLE1_ROWS = {
    "voc_emanet512": "EMANet(512)",
    "voc_emanet256": "EMANet(256)",
    "voc_deeplabv3": "DeeplabV3",
    "voc_deeplabv3plus": "DeeplabV3+",
    "voc_psanet": "PSANet",
    "voc_nonlocal": "Non-local",
    "voc_fcn": "FCN",
}
RANKING_ROWS = {"context_emanet512": 3, "cocostuff10k_emanet512": 4}
RANKING_TABLES = {3: PAPER_TABLE3, 4: PAPER_TABLE4}
RANKING_TITLES = {3: "Table 3: PASCAL Context", 4: "Table 4: COCO-Stuff 10k"}


@dataclass(frozen=True)
class BeyondRow:
    """A row of the table beyond the paper: a network on a benchmark, trained here from an
    experiment, or someone's published weights (``imported``) evaluated here; and the
    mIoU others published for it, (source, SS, MS+flip)."""

    benchmark: str
    network: str
    experiment: str
    imported: bool
    references: tuple[tuple[str, float | None, float | None], ...]

    @property
    def weights(self) -> str:
        return "published, evaluated here" if self.imported else "trained here"


MMSEG_R101_769 = ("mmsegmentation R-101-D8 769x769 80k", 79.62, 81.00)
MMSEG_R50_769 = ("mmsegmentation R-50-D8 769x769 80k", 79.33, 80.49)
MMSEG_R101_512x1024 = ("mmsegmentation R-101-D8 512x1024 80k", 79.10, 81.21)
MMSEG_R50_512x1024 = ("mmsegmentation R-50-D8 512x1024 80k", 77.59, 79.44)
BEYOND_ROWS = (
    BeyondRow("Cityscapes val", "EMANet(512), ResNet-101", "cityscapes_emanet512", False,
              (("the authors' release README", 79.79, None), MMSEG_R101_512x1024)),
    BeyondRow("Cityscapes val", "EMANet(512), ResNet-50", "cityscapes_r50_emanet512", False, (MMSEG_R50_512x1024,)),
    BeyondRow("Cityscapes val", "mmsegmentation's EMANet, R-101-D8 769x769", "cityscapes_mmseg_r101", False,
              (MMSEG_R101_769,)),
    BeyondRow("Cityscapes val", "mmsegmentation's EMANet, R-101-D8 769x769", "cityscapes_mmseg_r101", True,
              (MMSEG_R101_769,)),
    BeyondRow("Cityscapes val", "mmsegmentation's EMANet, R-50-D8 769x769", "cityscapes_mmseg_r50", False,
              (MMSEG_R50_769,)),
    BeyondRow("Cityscapes val", "mmsegmentation's EMANet, R-50-D8 769x769", "cityscapes_mmseg_r50", True,
              (MMSEG_R50_769,)),
    # Their 512x1024 models: the published weights, each evaluated under the experiment of
    # its own recipe (training them is `python train.py experiment=...`, not part of this table).
    BeyondRow("Cityscapes val", "mmsegmentation's EMANet, R-101-D8 512x1024", "cityscapes_mmseg_r101_512x1024", True,
              (MMSEG_R101_512x1024,)),
    BeyondRow("Cityscapes val", "mmsegmentation's EMANet, R-50-D8 512x1024", "cityscapes_mmseg_r50_512x1024", True,
              (MMSEG_R50_512x1024,)),
    BeyondRow("ADE20K val", "EMANet(512), ResNet-101", "ade20k_emanet512", False, ()),
)
BEYOND_KEYS = {(row.experiment, row.imported) for row in BEYOND_ROWS}
# The experiments reproduce_paper.py trains for the table (published weights are imported by hand).
BEYOND_EXPERIMENTS = tuple(dict.fromkeys(row.experiment for row in BEYOND_ROWS if not row.imported))
