"""Speed and memory benchmarks; each prints a table and keeps its measurement as a JSON line.

A measurement goes to a run directory, runs/benchmarks/<date>/ (--out DIR to choose):
benchmarks.jsonl and the tables of what was measured there, benchmarks.md. --record
publishes it instead: a line in docs/benchmarks.jsonl and the tables of docs/benchmarks.md
rebuilt, for the numbers the README and the docs quote.

    python scripts/benchmark.py unit  [--sizes 33 65 97 129] [--channels 512] [--device cpu]
    python scripts/benchmark.py train [--variants fp32 bf16_cl bf16_cl_compile] [--preset full|small] [overrides...]
    python scripts/benchmark.py eval  [--variants fp32 bf16_cl] [--images 8] [--preset full|small] [overrides...]
    python scripts/benchmark.py data  [--images 200] [--workers 1 2]
    python scripts/benchmark.py targets [overrides...]
    python scripts/benchmark.py infer [--presets small full] [--batches 1 8] [--variants ...] [--size 512]
                                      [--repeats 3] [--threads N]
    python scripts/benchmark.py acceptance [--steps 3] [--repeats 3] [--images N] [--preset full|small] [overrides...]
    python scripts/benchmark.py tables

``python scripts/benchmark.py BENCHMARK --help`` says what each measures (emanet.benchmarks).
``acceptance`` exits with status 1 if a check fails. ``tables`` rebuilds every table of
docs/benchmarks.md from docs/benchmarks.jsonl, e.g. after adding lines measured on another
machine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import emanet.benchmarks
from emanet.benchmarks.acceptance import acceptance_benchmark
from emanet.benchmarks.data_pipeline import data_benchmark
from emanet.benchmarks.flops import targets_benchmark
from emanet.benchmarks.inference import INFER_VARIANTS, infer_benchmark
from emanet.benchmarks.measure import (
    DEFAULT_VARIANTS,
    EVAL_VARIANTS,
    PRESETS,
    TRAIN_VARIANTS,
    default_device,
    eval_benchmark,
    train_benchmark,
)
from emanet.benchmarks.tables import command_line, keep_result, rebuild_every_table
from emanet.benchmarks.unit import MEMORY_FORMATS, unit_benchmark
from emanet.errors import MissingSectionError

DOCS = Path(__file__).resolve().parents[1] / "docs"  # the published records and tables


def positive_int(text: str) -> int:
    """An argparse type: a count of at least 1 (argparse names the option in its error)."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def run_benchmark(args: argparse.Namespace) -> dict:
    """The result of the chosen benchmark."""
    if args.benchmark == "unit":
        return unit_benchmark(args.sizes, args.channels, args.repeats, args.memory_formats, torch.device(args.device))
    if args.benchmark == "train":
        return train_benchmark(torch.device(args.device), args.variants, args.repeats, args.preset, args.overrides)
    if args.benchmark == "eval":
        return eval_benchmark(torch.device(args.device), args.variants, args.images, args.preset, args.overrides)
    if args.benchmark == "data":
        return data_benchmark(args.images, args.workers)
    if args.benchmark == "targets":
        return targets_benchmark(args.overrides)
    if args.benchmark == "infer":
        return infer_benchmark(args.presets, args.batches, args.variants, args.size, args.repeats, args.threads)
    return acceptance_benchmark(torch.device(args.device), args.steps, args.repeats, args.images, args.preset,
                                args.overrides)


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    benchmarks = parser.add_subparsers(dest="benchmark", required=True)

    def benchmark(name: str, summary: str, module) -> argparse.ArgumentParser:
        return benchmarks.add_parser(name, help=summary, description=module.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)

    unit = benchmark("unit", "EMA unit vs non-local vs 3x3 conv", emanet.benchmarks.unit)
    unit.add_argument("--sizes", type=int, nargs="*", default=[33, 65, 97, 129], help="feature map sides S")
    unit.add_argument("--channels", type=int, default=512)
    unit.add_argument("--repeats", type=int, default=3)
    unit.add_argument(
        "--memory-formats", nargs="*", default=list(MEMORY_FORMATS), choices=list(MEMORY_FORMATS),
        help="layouts of the feature maps and weights (runtime.channels_last)",
    )
    train = benchmark("train", "training-step throughput", emanet.benchmarks.measure)
    train.add_argument("--variants", nargs="*", default=DEFAULT_VARIANTS, choices=list(TRAIN_VARIANTS))
    train.add_argument("--repeats", type=int, default=5)
    evaluation = benchmark("eval", "single-scale and MS+flip evaluation speed", emanet.benchmarks.measure)
    evaluation.add_argument(
        "--variants", nargs="*", choices=list(EVAL_VARIANTS),
        default=[variant for variant in DEFAULT_VARIANTS if variant in EVAL_VARIANTS],
    )
    evaluation.add_argument("--images", type=int, default=8, help="VOC-sized images to evaluate")
    data = benchmark("data", "training data pipeline throughput", emanet.benchmarks.data_pipeline)
    data.add_argument("--images", type=int, default=200, help="how many 500x375 JPEGs to write and read")
    data.add_argument("--workers", type=int, nargs="*", default=[1, 2], help="DataLoader worker counts to time")
    accepting = benchmark("acceptance", "GPU acceptance: CUDA/AMP/channels_last/compile/SyncBatchNorm checks, "
                          "then speed", emanet.benchmarks.acceptance)
    accepting.add_argument("--steps", type=positive_int, default=3, help="training steps of the mixed-precision checks")
    accepting.add_argument("--repeats", type=positive_int, default=3, help="timed training steps per variant")
    accepting.add_argument("--images", type=positive_int,
                           help="VOC-sized images for the MS+flip speed (default 16 on a GPU, 2 on a CPU)")
    inferring = benchmark("infer", "CPU inference: eager, channels_last, bf16, compile and onnxruntime side by side",
                          emanet.benchmarks.inference)
    inferring.add_argument("--presets", nargs="+", default=["small", "full"], choices=list(PRESETS),
                           help="small: the demo network; full: EMANet(512) R101 OS8")
    inferring.add_argument("--batches", type=positive_int, nargs="+", default=[1, 8])
    inferring.add_argument("--variants", nargs="+", default=INFER_VARIANTS, choices=INFER_VARIANTS,
                           help="eager (the reference) is always measured")
    inferring.add_argument("--size", type=positive_int, default=512, help="the images' side")
    inferring.add_argument("--repeats", type=positive_int, default=3, help="timed calls after the warm-up call")
    inferring.add_argument("--threads", type=positive_int, help="torch's threads (default: the usable cores)")
    targets = benchmark("targets", "TFLOP/s that the GPU targets require (meta device)", emanet.benchmarks.flops)
    for measuring in (unit, train, evaluation, accepting):
        measuring.add_argument("--device", default=str(default_device()))
    for configured in (train, evaluation, accepting):
        configured.add_argument(
            "--preset", choices=list(PRESETS),
            help="full: EMANet(512) R101 OS8 (the default on a GPU); small: the demo network (on a CPU)",
        )
    for configured in (train, evaluation, accepting, targets):
        configured.add_argument("overrides", nargs="*", help="train.py overrides")
    for measuring in (unit, train, evaluation, data, targets, inferring, accepting):
        measuring.add_argument(
            "--record", action="store_true",
            help="publish: append to docs/benchmarks.jsonl and rebuild docs/benchmarks.md's tables",
        )
        measuring.add_argument("--out", type=Path, help="run directory (default: runs/benchmarks/<date>/)")
    benchmarks.add_parser("tables", help="rebuild the tables of docs/benchmarks.md from the JSON lines")
    return parser.parse_args()


def main() -> None:
    args = parse_arguments()
    try:
        if args.benchmark == "tables":
            for name in rebuild_every_table(DOCS):
                print(f"rebuilt the {name} table")
            return
        result = run_benchmark(args)
        command = command_line("scripts/benchmark.py", sys.argv[1:])
        keep_result(args.benchmark, command, result, DOCS, args.record, args.out)
    except MissingSectionError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    if args.benchmark == "acceptance" and not result["passed"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
