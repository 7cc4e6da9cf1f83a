"""Prepare a benchmark from its original downloads (see data/README.md for each layout).

    emanet-prepare-dataset voc_aug [--voc DIR] [--sbd DIR] [--workers N]
    emanet-prepare-dataset pascal_context [--voc2010 DIR] [--context DIR] [--workers N]
    emanet-prepare-dataset coco_stuff10k [--root DIR] [--workers N]
    emanet-prepare-dataset coco_stuff164k [--root DIR] [--workers N]
    emanet-prepare-dataset cityscapes [--root DIR] [--workers N]
    emanet-prepare-dataset ade20k [--root DIR] [--workers N]

Your own data (data/README.md, "Your own data"):

    emanet-prepare-dataset folder --root ROOT [--val-fraction 0.1] [--seed 0] [--reduce-zero-label]
    emanet-prepare-dataset coco_json --annotations FILE.json --images DIR --root OUT [--split train|val]
                                     [--no-background]
    emanet-prepare-dataset cvat_mask --export DIR --root OUT

``folder`` checks every image and mask pair of ROOT (each problem one line naming the
file, then exit status 2, before anything is written), converts colour masks to index
PNGs, writes the split lists (val drawn from train where there is no images/val) and the
pixels per class (ROOT/class_pixels.md and .png). ``coco_json`` and ``cvat_mask`` write an
annotation tool's export in that layout at OUT; ``folder --root OUT`` follows.

In a checkout, ``python scripts/prepare_dataset.py`` is the same command. Paths default to
the places the dataset configs read from, under $EMANET_DATA_ROOT (or data/). --workers
(conversion processes, default: the cores, at most 8) may also come before the benchmark
name. Re-running checks each label file already written against its source and rewrites,
naming them in one line, those that differ (wrong ids, another PNG mode, undecodable);
Ctrl-C ends it with exit status 130, and two runs on one dataset take turns. A source file
that cannot be used ends it with one line naming the file and exit status 2. The split
sizes are printed beside the published ones; a split of another size (an archive left out
or unpacked partly) ends the script with exit status 1 once every file is written, unless
--allow-partial says the copy is deliberately partial. Cityscapes images without their
label are left out of the split, counted and named in one warning line.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from emanet.data import ade20k, cityscapes, coco_json, coco_stuff, cvat_mask, folder, pascal_context, prepare, voc_aug
from emanet.errors import EmanetError


def build_parser(data_root: Path) -> argparse.ArgumentParser:
    workers_help = "conversion processes (default: the cores, at most 8)"
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # Each worker imports torch (about 0.5 GB); past 8 the disk, not the CPU, limits a conversion.
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), metavar="N", help=workers_help)
    partial_help = "exit 0 even when a split's size differs from the published one"
    parser.add_argument("--allow-partial", action="store_true", help=partial_help)
    # The same options after the benchmark name; SUPPRESS keeps a value given before the
    # name (or the default) when it is not repeated there.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--workers", type=int, default=argparse.SUPPRESS, metavar="N", help=workers_help)
    common.add_argument("--allow-partial", action="store_true", default=argparse.SUPPRESS, help=partial_help)
    benchmarks = parser.add_subparsers(dest="benchmark", required=True)
    voc = benchmarks.add_parser("voc_aug", parents=[common], help="VOC 2012 + SBD -> SegmentationClassAug, trainaug")
    voc.add_argument("--voc", type=Path, default=data_root / "VOCdevkit" / "VOC2012")
    voc.add_argument("--sbd", type=Path, default=data_root / "benchmark_RELEASE")
    context = benchmarks.add_parser(
        "pascal_context", parents=[common], help="PASCAL Context 459-class .mat -> 60-class PNGs"
    )
    context.add_argument("--voc2010", type=Path, default=data_root / "VOCdevkit" / "VOC2010")
    context.add_argument("--context", type=Path, default=None, help="folder with trainval/ (default: --voc2010)")
    coco10k = benchmarks.add_parser("coco_stuff10k", parents=[common], help="COCO-Stuff 10k .mat -> 171-class PNGs")
    coco10k.add_argument("--root", type=Path, default=data_root / "cocostuff-10k-v1.1")
    coco164k = benchmarks.add_parser("coco_stuff164k", parents=[common], help="COCO-Stuff 164k maps -> 171-class PNGs")
    coco164k.add_argument("--root", type=Path, default=data_root / "coco_stuff164k")
    city = benchmarks.add_parser(
        "cityscapes", parents=[common], help="Cityscapes gtFine labelIds -> labelTrainIds, split lists"
    )
    city.add_argument("--root", type=Path, default=data_root / "cityscapes")
    ade = benchmarks.add_parser(
        "ade20k", parents=[common], help="ADE20K SceneParsing: check the annotations, write the split lists"
    )
    ade.add_argument("--root", type=Path, default=data_root / "ADEChallengeData2016")
    folder = benchmarks.add_parser(
        "folder", parents=[common], help="your own images and masks: check them, write labels and split lists"
    )
    folder.add_argument("--root", type=Path, required=True, help="the folder with classes.txt, images/ and masks/")
    folder.add_argument("--val-fraction", type=float, default=0.1, metavar="F",
                        help="share of train that becomes val where there is no images/val (default: 0.1)")
    folder.add_argument("--seed", type=int, default=0, help="seed of that draw (default: 0)")
    folder.add_argument("--reduce-zero-label", action="store_true",
                        help="mask value 0 means unlabelled; classes.txt names values 1, 2, ... "
                        "(train with dataset.reduce_zero_label=true)")
    coco = benchmarks.add_parser(
        "coco_json", parents=[common], help="a COCO-format JSON export -> the folder layout at --root"
    )
    coco.add_argument("--annotations", type=Path, required=True, help="the COCO JSON file")
    coco.add_argument("--images", type=Path, required=True, help="the folder its file_name entries are relative to")
    coco.add_argument("--root", type=Path, required=True, help="where to write the folder layout")
    coco.add_argument("--split", choices=("train", "val"), default="train", help="the split these images are")
    coco.add_argument("--no-background", action="store_true",
                      help="no class 'background': pixels of no annotation are ignored (255)")
    cvat = benchmarks.add_parser(
        "cvat_mask", parents=[common], help="CVAT's 'Segmentation mask 1.1' export -> the folder layout at --root"
    )
    cvat.add_argument("--export", type=Path, required=True, help="the unzipped export (labelmap.txt, ...)")
    cvat.add_argument("--root", type=Path, required=True, help="where to write the folder layout")
    return parser


def prepare_benchmark(args: argparse.Namespace) -> dict[str, int]:
    """Run the converter of ``args.benchmark`` with the parsed paths; the split sizes."""
    if args.benchmark == "voc_aug":
        return voc_aug.prepare_voc_aug(args.voc, args.sbd, args.workers)
    if args.benchmark == "pascal_context":
        return pascal_context.prepare_pascal_context(args.voc2010, args.context or args.voc2010, args.workers)
    if args.benchmark == "coco_stuff10k":
        return coco_stuff.prepare_coco_stuff10k(args.root, args.workers)
    if args.benchmark == "coco_stuff164k":
        return coco_stuff.prepare_coco_stuff164k(args.root, args.workers)
    if args.benchmark == "cityscapes":
        return cityscapes.prepare_cityscapes(args.root, args.workers)
    if args.benchmark == "folder":
        return folder.prepare_folder(args.root, args.val_fraction, args.seed, args.reduce_zero_label, args.workers)
    if args.benchmark == "coco_json":
        return coco_json.prepare_coco_json(
            args.annotations, args.images, args.root, args.split, not args.no_background, args.workers
        )
    if args.benchmark == "cvat_mask":
        return cvat_mask.prepare_cvat_mask(args.export, args.root, args.workers)
    return ade20k.prepare_ade20k(args.root, args.workers)


def main(argv: list[str] | None = None) -> None:
    """``emanet-prepare-dataset`` (``scripts/prepare_dataset.py``): exit status 2 for a source
    that cannot be used, 1 for a split of another size, 130 for Ctrl-C."""
    data_root = Path(os.environ.get("EMANET_DATA_ROOT", "data"))
    args = build_parser(data_root).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        counts = prepare_benchmark(args)
    except EmanetError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        # Every file is written atomically, so nothing half-written is left to report.
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        sys.exit(130)  # 128 + SIGINT, as the shell reports a command Ctrl-C ended
    mismatches = prepare.count_mismatches(args.benchmark, counts)
    if mismatches and not args.allow_partial:
        print(
            f"error: {'; '.join(mismatches)}. Check that every archive of data/README.md is unpacked completely "
            "and re-run (files already written are kept), or pass --allow-partial for a deliberately partial copy",
            file=sys.stderr,
        )
        sys.exit(1)
