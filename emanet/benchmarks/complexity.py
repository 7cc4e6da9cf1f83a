"""Table 1's complexity columns: FLOPs, memory and parameters at 513x513, beside the paper's
(Li et al., "Expectation-Maximization Attention Networks for Semantic Segmentation", ICCV
2019, Table 1).

Rows: the ResNet-101 backbone (output stride 8, deep stem), then each head as an
increment over it, counted the way the paper counts (the head modules each row names in
``ROWS`` below): for EMANet the 3x3 conv in front of the unit and the unit itself, which
gives 43.06 G and 9.997 M for EMANet(512), the paper's 43.1 and 10.0 at its precision.
The last row, beyond the paper, is mmsegmentation's EMANet head (``model=emanet_mmseg``),
counted up to its classifier: its 3x3 conv and unit (the same layers and cost as
EMANet(512)'s), plus the 3x3 bottleneck and the 3x3 conv over the head's input
concatenated with it, which the release does not have.

* FLOPs are multiply-accumulates: torch.utils.flop_counter's count (2 per MAC) halved. It
  sees every matmul, the no-gradient EM iterations included.
* Params are the parameters of the counted modules, plus the EMA bases (K x C, a buffer
  learned by moving average, which the paper counts; ``mu`` in the release's unit,
  ``bases`` in mmsegmentation's).
* Memory is the size of the activations a training-mode forward pass keeps for the
  backward pass (float32, per image), measured with autograd's saved-tensor hooks on the
  meta device, each storage counted once: what a network costs per image in training.
  For a head it is what the counted modules keep, less what the backbone keeps already
  (the layer4 output, which the head's first conv keeps again): the same layers as the
  FLOPs and params columns, so what only the classifier keeps is left out there too.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

from emanet.cli import compose_config
from emanet.models.segmentor import build_model

PAPER_SIZE = 513  # the input side of Table 1's FLOPs and memory

# method name -> (model config, overrides, head modules counted, paper FLOPs G, memory M, params M)
ROWS = {
    "ResNet-101": ("fcn", [], None, 190.6, 2603.0, 42.6),
    "DeeplabV3": ("deeplabv3", [], ("aspp",), 63.4, 66.0, 15.5),
    "DeeplabV3+": ("deeplabv3plus", [], ("aspp", "low_level", "decoder"), 84.1, 99.3, 16.3),
    "PSANet": ("psanet", [], ("collect", "distribute", "project", "fuse"), 56.3, 59.4, 18.5),
    "EMANet(256)": ("emanet", ["model.ema.channels=256"], ("reduce", "ema"), 21.1, 12.3, 4.87),
    "EMANet(512)": ("emanet", ["model.ema.channels=512"], ("reduce", "ema"), 43.1, 22.1, 10.0),
    "Non-local": ("nonlocal", [], ("reduce", "non_local"), None, None, None),
    "FCN": ("fcn", [], ("conv",), None, None, None),
    "EMANet(512) mmseg": (
        "emanet_mmseg", [], ("ema_in_conv", "ema_mid_conv", "ema_module", "ema_out_conv", "bottleneck", "conv_cat"),
        None, None, None,
    ),
}


def build(model: str, overrides: list[str]) -> torch.nn.Module:
    cfg = compose_config("train", ["experiment=voc_emanet512", f"model={model}", *overrides])
    return build_model(cfg.model, cfg.dataset.num_classes, load_pretrained=False)


def count_macs(model_name: str, overrides: list[str], size: int) -> dict[str, float]:
    """Multiply-accumulates per submodule name (``SegmentationModel.head.aspp``...).

    The model runs on the meta device: shapes only, so counting takes no compute.
    """
    with torch.device("meta"):
        module = build(model_name, overrides).eval()
        images = torch.empty(1, 3, size, size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(images)
    return {name: sum(ops.values()) / 2 for name, ops in counter.get_flop_counts().items()}


def saved_activation_bytes(
    module: torch.nn.Module, images: torch.Tensor, counted: Sequence[torch.nn.Module] | None = None,
    excluded: Sequence[torch.nn.Module] = (),
) -> int:
    """Bytes per image of distinct storages autograd keeps for backward in a training-mode forward.

    With ``counted``, only the storages saved while one of those submodules runs are
    counted, less any storage also saved while a module of ``excluded`` runs (the head's
    input, which the backbone keeps already). Without it, every saved storage is counted.

    Runs on the meta device: shapes and storages without data, so a 513x513 ResNet-101
    costs no memory. Storages are told apart by their C++ handle (meta storages all
    have data_ptr 0) and kept referenced, so no handle is reused during the pass. The
    pass runs on two copies of the image (BatchNorm after global pooling needs more than
    one value per channel in training) and the total is halved.
    """
    storages: dict[int, tuple[torch.UntypedStorage, int, set[str]]] = {}
    weights = {p.untyped_storage()._cdata for p in module.parameters()}
    active: list[str] = []  # the labels of the marked submodules now running

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage._cdata not in weights:
            storages.setdefault(storage._cdata, (storage, storage.nbytes(), set()))[2].update(active)
        return tensor

    def enter(label: str):
        def hook(*_) -> None:  # returns None: the module's input is left as it is
            active.append(label)

        return hook

    def leave(*_) -> None:  # returns None: the module's output is left as it is
        active.pop()

    handles = []
    for label, parts in (("counted", counted or ()), ("excluded", excluded)):
        for part in parts:
            handles += [part.register_forward_pre_hook(enter(label)), part.register_forward_hook(leave)]
    module.train()
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            module(images.expand(2, -1, -1, -1).contiguous())
    finally:
        for handle in handles:
            handle.remove()
    return sum(
        nbytes for _, nbytes, labels in storages.values()
        if counted is None or ("counted" in labels and "excluded" not in labels)
    ) // 2


def head_params(model: torch.nn.Module, counted: tuple[str, ...]) -> int:
    total = 0
    for name in counted:
        part = getattr(model.head, name)
        total += sum(p.numel() for p in part.parameters())
        total += sum(b.numel() for n, b in part.named_buffers() if n.endswith(("mu", "bases")))  # the EMA bases
    return total


def measure(size: int, with_memory: bool = True) -> list[dict]:
    """A row per method of :data:`ROWS` at ``size`` x ``size`` inputs: FLOPs (G MACs),
    parameters (M) and, ``with_memory``, activation memory (MiB), with the paper's values
    where they apply (FLOPs and memory at 513 only)."""
    images = torch.empty(1, 3, size, size, device="meta")
    rows = []
    for method, (model_name, overrides, counted, paper_flops, paper_memory, paper_params) in ROWS.items():
        macs = count_macs(model_name, overrides, size)
        with torch.device("meta"):
            model = build(model_name, overrides)
        if counted is None:  # the backbone itself
            flops = macs["SegmentationModel.backbone"]
            params = sum(p.numel() for p in model.backbone.parameters())
        else:
            flops = sum(macs.get(f"SegmentationModel.head.{name}", 0.0) for name in counted)
            params = head_params(model, counted)
        row = {
            "method": method,
            "flops_g": round(flops / 1e9, 2),
            "params_m": round(params / 1e6, 3),
            "memory_m": None,
            # The paper's FLOPs and memory are those of a 513x513 input; its parameters hold at any size.
            "paper_flops_g": paper_flops if size == PAPER_SIZE else None,
            "paper_params_m": paper_params,
            "paper_memory_m": paper_memory if size == PAPER_SIZE else None,
        }
        if with_memory:
            if counted is None:
                memory = saved_activation_bytes(model.backbone, images)
            else:
                parts = [getattr(model.head, name) for name in counted]
                memory = saved_activation_bytes(model, images, parts, excluded=[model.backbone])
            row["memory_m"] = round(memory / 2**20, 1)
        rows.append(row)
    return rows


def format_rows(rows: list[dict]) -> str:
    """A Markdown table of ``rows`` (of :func:`measure`), each value beside the paper's."""
    def cell(value, paper, increment):
        if value is None:
            return "-"
        if paper is None:
            return f"{'+' if increment else ''}{value:g} (paper -)"
        gap = 100 * (value - paper) / paper
        return f"{'+' if increment else ''}{value:g} (paper {paper:g}, {gap:+.1f}%)"

    lines = [
        "| Method | FLOPs (G MACs) | Memory (MiB) | Params (M) |",
        "|---|---|---|---|",
    ]
    for index, row in enumerate(rows):
        increment = index > 0
        lines.append(
            f"| {row['method']} | {cell(row['flops_g'], row['paper_flops_g'], increment)} | "
            f"{cell(row['memory_m'], row['paper_memory_m'], increment)} | "
            f"{cell(row['params_m'], row['paper_params_m'], increment)} |"
        )
    return "\n".join(lines)


MEMORY_NOTE = (
    "Memory: activations kept for backward per training image (float32). The paper does not say "
    "what its memory column measures, so compare rows with each other, not with the paper."
)


def json_rows(rows: list[dict]) -> list[dict]:
    """What ``complexity.py --json`` prints of each row: the method and our three numbers."""
    return [{key: row[key] for key in ("method", "flops_g", "params_m", "memory_m")} for row in rows]
