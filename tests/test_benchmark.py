"""The benchmarks of scripts/benchmark.py (emanet.benchmarks) at toy sizes: each measures,
records its JSON line and rebuilds its table.

Speeds are not asserted here (they belong to docs/benchmarks.md); the structure of the
records, the FLOP count and the configurations the GPU run will use are.
"""

import json
from concurrent.futures.process import BrokenProcessPool

import pytest
import torch
import torchvision
from tests_paths import REPO
from torch.utils.flop_counter import FlopCounterMode

import emanet.benchmarks.measure
from emanet.benchmarks import inference, records
from emanet.benchmarks.data_pipeline import data_benchmark
from emanet.benchmarks.flops import bf16_peak_tflops, forward_flops, targets_benchmark, train_step_flops
from emanet.benchmarks.measure import VOC_IMAGE_SIZES, eval_benchmark, train_benchmark, voc_sized_batches
from emanet.benchmarks.tables import command_line, keep_result, rebuild_every_table
from emanet.benchmarks.unit import power_law_exponent, unit_benchmark, unit_growth
from emanet.cli import compose_config
from emanet.errors import MissingSectionError
from emanet.models.segmentor import build_model

BENCHMARKS = ("unit", "unit-growth", "train", "eval", "data", "targets", "acceptance", "infer", "demo")
CPU = torch.device("cpu")
PUBLISHED = REPO / "docs"


@pytest.fixture
def docs(tmp_path):
    """A folder of published results with an old table in each section."""
    sections = [f"## {name}\n<!-- {name}-table:begin -->\nold\n<!-- {name}-table:end -->\n" for name in BENCHMARKS]
    (tmp_path / records.MARKDOWN).write_text("# Benchmarks\n" + "".join(sections) + "tail\n")
    return tmp_path


def publish(docs, benchmark, result, *argv):
    """Keep ``result`` as ``benchmark.py BENCHMARK *argv --record`` does; the record written."""
    command = command_line("scripts/benchmark.py", [benchmark, *argv, "--record"])
    keep_result(benchmark, command, result, docs, publish=True)
    lines = (docs / records.JSONL).read_text().splitlines()
    return json.loads(lines[-1])


def table_lines(docs, name):
    text = (docs / records.MARKDOWN).read_text()
    section = text.split(f"<!-- {name}-table:begin -->\n", 1)[1].split(f"\n<!-- {name}-table:end -->", 1)[0]
    return section.splitlines()


def test_unit_benchmark_records_every_module_at_every_size_in_both_layouts(docs):
    result = unit_benchmark([9, 17], 16, 1, ["contiguous", "channels_last"], CPU)
    record = publish(docs, "unit", result, "--sizes", "9", "17", "--channels", "16", "--repeats", "1")
    assert record["benchmark"] == "unit" and record["channels"] == 16
    assert record["command"] == "python scripts/benchmark.py unit --sizes 9 17 --channels 16 --repeats 1"
    assert [(row["memory_format"], row["size"], row["module"]) for row in record["rows"]] == [
        (layout, size, module)
        for layout in ("contiguous", "channels_last") for size in (9, 17)
        for module in ("EMA unit", "non-local", "3x3 conv")
    ]
    memory = {(row["memory_format"], row["size"], row["module"]): row["memory_mib"] for row in record["rows"]}
    assert memory[("contiguous", 17, "non-local")] > memory[("contiguous", 9, "non-local")]
    lines = table_lines(docs, "unit")
    assert len(lines) == 2 + 12  # header, rule, a line per row; the old content is gone
    assert {line.count("|") for line in lines} == {2 + 8 + 1}  # date, machine, eight columns
    # Each module is compared with the 3x3 conv of its own layout and size.
    for line, row in zip(lines[2:], record["rows"], strict=True):
        conv = next(
            c["forward_backward_ms"] for c in record["rows"]
            if (c["memory_format"], c["size"], c["module"]) == (row["memory_format"], row["size"], "3x3 conv")
        )
        layout = {"contiguous": "NCHW", "channels_last": "NHWC"}[row["memory_format"]]
        assert f"| {layout} | {row['size']} | {row['module']} |" in line
        assert f"| {row['forward_backward_ms'] / conv:.2f}x |" in line
    growth = table_lines(docs, "unit-growth")
    assert len(growth) == 2 + 6  # a line per layout and module
    assert "| 16 | NCHW | EMA unit | 9 -> 17 | 3.6x |" in growth[2]
    assert growth[2].endswith("| - | - |")  # its memory at S=9 rounds to 0.0 MiB: no ratio
    assert (docs / records.MARKDOWN).read_text().endswith("tail\n")


def test_power_law_exponent_is_one_for_linear_and_two_for_quadratic_growth_in_n():
    sizes = [33, 65, 97, 129]
    assert power_law_exponent(sizes, [3.0 * s * s for s in sizes]) == pytest.approx(1.0, abs=1e-12)
    assert power_law_exponent(sizes, [0.5 * s**4 for s in sizes]) == pytest.approx(2.0, abs=1e-12)
    assert power_law_exponent([10, 20], [1.0, 8.0]) == pytest.approx(1.5, abs=1e-12)  # 8 = 4^1.5


def test_unit_growth_reports_ratios_and_exponents_per_layout_and_module():
    rows = [
        {"memory_format": layout, "size": size, "module": module, "forward_backward_ms": time, "memory_mib": memory}
        for layout, scale in (("contiguous", 1.0), ("channels_last", 0.5))
        for size, module, time, memory in (
            (10, "EMA unit", 2.0 * scale, 1.0), (20, "EMA unit", 8.0 * scale, 4.0),
            (10, "non-local", 1.0, 1.0), (20, "non-local", 16.0, 16.0),
        )
    ] + [{"size": 30, "module": "3x3 conv", "forward_backward_ms": 1.0, "memory_mib": 1.0}]  # one size: no growth
    growth = unit_growth(rows)
    assert [(g["memory_format"], g["module"]) for g in growth] == [
        ("contiguous", "EMA unit"), ("contiguous", "non-local"), ("channels_last", "EMA unit"),
        ("channels_last", "non-local"),
    ]
    assert growth[0] == {
        "memory_format": "contiguous", "module": "EMA unit", "sizes": "10 -> 20", "n_ratio": 4.0,
        "time_ratio": 4.0, "time_exponent": 1.0, "memory_ratio": 4.0, "memory_exponent": 1.0,
    }
    assert (growth[1]["time_ratio"], growth[1]["time_exponent"], growth[1]["memory_exponent"]) == (16.0, 2.0, 2.0)
    assert growth[2]["time_ratio"] == 4.0 and growth[2]["time_exponent"] == 1.0


def test_unit_table_reads_records_from_before_the_layout_option_as_nchw(docs):
    rows = [
        {"size": 9, "module": "EMA unit", "forward_ms": 1.0, "forward_backward_ms": 3.0, "memory_mib": 0.5},
        {"size": 9, "module": "3x3 conv", "forward_ms": 2.0, "forward_backward_ms": 12.0, "memory_mib": 0.1},
    ]
    records.append_record(docs, "unit", "python scripts/benchmark.py unit", {"channels": 8, "rows": rows})
    rebuild_every_table(docs)
    lines = table_lines(docs, "unit")
    assert "| NCHW | 9 | EMA unit | 1.0 | 3.0 | 0.25x | 0.5 |" in lines[2]


@pytest.mark.slow
def test_train_benchmark_runs_the_full_size_gpu_configuration_at_toy_size(docs, monkeypatch):
    steps = []
    trainer_step = emanet.benchmarks.measure.train_step

    def recording_step(*args, **kwargs):
        amp = args[-1]
        steps.append((amp.dtype, amp.channels_last))
        return trainer_step(*args, **kwargs)

    monkeypatch.setattr(emanet.benchmarks.measure, "train_step", recording_step)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)  # restored after the test
    overrides = ["dataset.crop_size=33", "schedule.batch_size=2", "runtime.cudnn_benchmark=false"]
    result = train_benchmark(CPU, ["fp32", "bf16_cl", "fp32_cl"], 1, "full", overrides)
    record = publish(docs, "train", result)
    assert record["model"] == "voc_emanet512 R101 OS8"
    assert (record["crop"], record["batch"]) == (33, 2)
    # cuDNN autotuning follows runtime.cudnn_benchmark, as in the trainer, and is recorded.
    assert record["cudnn_benchmark"] is False and torch.backends.cudnn.benchmark is False
    assert [row["variant"] for row in record["rows"]] == ["fp32", "bf16_cl", "fp32_cl"]
    assert all(row["images_per_second"] > 0 and row["fraction_of_bf16_peak"] is None for row in record["rows"])
    # The trainer's own step is timed: a warm-up and one timed step per variant.
    fp32, bf16_cl, fp32_cl = (None, False), (torch.bfloat16, True), (None, True)
    assert steps == [fp32, fp32, bf16_cl, bf16_cl, fp32_cl, fp32_cl]

    # One step's FLOPs: a forward pass and a backward pass of about twice its cost.
    cfg = compose_config("train", ["experiment=voc_emanet512", "model.backbone.pretrained=null"])
    torch.manual_seed(0)
    model = build_model(cfg.model, 21, load_pretrained=False).train()
    with FlopCounterMode(display=False) as counter:
        model(torch.randn(2, 3, 33, 33))
    ratio = record["gflops_per_step"] * 1e9 / counter.get_total_flops()
    assert 2.5 < ratio < 3.05
    assert len(table_lines(docs, "train")) == 2 + 3


def test_train_step_flops_counts_forward_and_backward_of_a_convolution():
    conv = torch.nn.Conv2d(4, 6, 3, padding=1, bias=False)
    images, labels = torch.randn(2, 4, 5, 5, requires_grad=True), torch.randint(0, 6, (2, 5, 5))
    flops = train_step_flops(conv, images, labels)
    multiply_adds = 2 * 6 * 5 * 5 * 4 * 3 * 3  # per pass: batch x out x H x W x in x k x k
    # forward, gradient of the input, gradient of the weight; 2 FLOPs per multiply-add
    assert flops == 3 * 2 * multiply_adds
    assert conv.weight.grad is None  # the counting pass leaves no gradients behind


@pytest.mark.slow
def test_targets_turn_images_per_second_into_tflops_and_fractions_of_peak(docs):
    record = publish(docs, "targets", targets_benchmark())
    assert record["model"] == "voc_emanet512 R101 OS8"
    train, evaluation = record["rows"]
    assert train["target_images_per_second"] == 150 and evaluation["target_images_per_second"] == 8.05
    assert evaluation["workload"] == "evaluation, 500x375, 12 passes (MS+flip)"
    for row in record["rows"]:
        needed = row["tflop_per_image"] * row["target_images_per_second"]
        assert row["tflops_needed"] == pytest.approx(needed, rel=2e-3)
        assert row["fraction_of_bf16_peak"]["H100"] == pytest.approx(row["tflops_needed"] / 989.4, abs=1e-3)
    # A training image costs about three forward passes at 513 x 513; the MS+flip image
    # (12 passes at up to 1.75x a smaller image) about twelve.
    cfg = compose_config("train", ["experiment=voc_emanet512", "model.backbone.pretrained=null"])
    with torch.device("meta"):
        model = build_model(cfg.model, 21, load_pretrained=False).eval()
        forward_513 = forward_flops(model, torch.randn(1, 3, 513, 513)) / 1e12
    assert 2.9 < train["tflop_per_image"] / forward_513 < 3.05
    assert 11 < evaluation["tflop_per_image"] / forward_513 < 13
    assert len(table_lines(docs, "targets")) == 2 + 2


def test_bf16_peak_is_looked_up_by_the_most_specific_gpu_name():
    assert bf16_peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert bf16_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert bf16_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert bf16_peak_tflops("NVIDIA GeForce RTX 4090") is None


@pytest.mark.slow
def test_eval_benchmark_times_both_protocols_for_each_precision(docs):
    record = publish(docs, "eval", eval_benchmark(CPU, ["fp32", "bf16_cl"], 4, "small", ["eval.scales=[0.5,1.0]"]))
    assert record["model"] == "demo R18 OS8" and record["mode"] == "whole" and record["images"] == 4
    assert [(row["variant"], row["protocol"]) for row in record["rows"]] == [
        ("fp32", "single scale"), ("fp32", "MS+flip"), ("bf16_cl", "single scale"), ("bf16_cl", "MS+flip"),
    ]
    assert record["rows"][1]["scales"] == [0.5, 1.0] and record["rows"][1]["flip"] is True
    assert len(table_lines(docs, "eval")) == 2 + 4


def test_voc_sized_batches_cycle_voc_sizes_with_valid_labels():
    batches = voc_sized_batches(5, num_classes=21)
    assert [tuple(b["image"].shape[-2:]) for b in batches] == [*VOC_IMAGE_SIZES, (375, 500)]
    assert all(b["label"].shape == (1, *b["image"].shape[-2:]) for b in batches)
    assert max(int(b["label"].max()) for b in batches) == 20


def test_data_benchmark_reads_the_written_images(docs):
    record = publish(docs, "data", data_benchmark(3, [1]), "--images", "3", "--workers", "1")
    assert [row["workers"] for row in record["rows"]] == ["main process", 1]
    assert all(row["images_per_second"] > 0 for row in record["rows"])
    assert len(table_lines(docs, "data")) == 2 + 2
    assert table_lines(docs, "data")[3].endswith("| 1 | " + f"{record['rows'][1]['images_per_second']} | "
                                                 "`python scripts/benchmark.py data --images 3 --workers 1` |")


@pytest.fixture
def in_this_process(monkeypatch):
    """Each variant measured in the test's own process: a fresh Python with torch takes
    seconds to start (the slow tests below run the real processes)."""
    monkeypatch.setattr(inference, "in_fresh_process", lambda function, *args: function(*args))


@pytest.mark.parametrize("native_bf16", [False, True])
def test_infer_benchmark_compares_each_variant_with_eager_float32(docs, monkeypatch, in_this_process, native_bf16):
    monkeypatch.setattr(inference, "native_bf16", lambda: native_bf16)
    result = inference.infer_benchmark(["small"], [1], ["channels_last", "bf16"], size=64, repeats=1, threads=1)
    record = publish(docs, "infer", result, "--presets", "small", "--batches", "1", "--size", "64")
    assert (record["size"], record["threads"], record["repeats"]) == (64, 1, 1)
    assert record["machine"]["threads"] == 1  # the threads it ran at
    eager, channels_last, bf16 = record["rows"]
    assert [row["variant"] for row in record["rows"]] == ["eager", "channels_last", "bf16"]  # eager: the reference
    assert {row["model"] for row in record["rows"]} == {"demo R18 OS8"}
    for row in (eager, channels_last):
        assert row["images_per_second"] > 0 and row["peak_rss_gib"] > 0 and row["pixel_agreement"] == 1.0
        assert row["agrees"] is True and row["skipped"] is None and row["setup_seconds"] is None
    assert eager["speedup_vs_eager"] == 1.0
    assert channels_last["speedup_vs_eager"] == pytest.approx(
        channels_last["images_per_second"] / eager["images_per_second"], abs=0.01)
    lines = table_lines(docs, "infer")
    assert len(lines) == 2 + 3 and {line.count("|") for line in lines} == {2 + 11 + 1}
    assert "| speed-up vs eager fp32 | peak RSS of the process (GiB) | pixels agreeing with eager fp32 |" in lines[0]
    assert "| demo R18 OS8 | 64x64 | 1 | 1 | eager |" in lines[2]
    assert "the reference; weights random (seed 0)" in lines[2]
    assert "| 100.0000% |" in lines[3]
    if not native_bf16:
        assert bf16["skipped"] == "no AVX-512 BF16/AMX on this CPU" and bf16["images_per_second"] is None
        assert lines[4].endswith("| bf16 | - | - | - | - | - | skipped: no AVX-512 BF16/AMX on this CPU |")
    else:
        assert bf16["skipped"] is None and bf16["images_per_second"] > 0
        assert 0.5 < bf16["pixel_agreement"] <= 1.0 and bf16["agrees"] == (bf16["pixel_agreement"] >= 0.9999)
    agreeing = [row for row in record["rows"] if row["agrees"]]
    fastest = max(agreeing, key=lambda row: row["images_per_second"])
    assert record["fastest_agreeing"] == [
        {"model": "demo R18 OS8", "batch": 1, "variant": fastest["variant"],
         "speedup_vs_eager": fastest["speedup_vs_eager"]},
    ]
    assert sum("the fastest that agrees" in line for line in lines) == 1


def test_a_variant_whose_process_dies_is_recorded_as_skipped_and_the_others_measured(docs, monkeypatch):
    def dies_for_channels_last(function, *args):
        if "channels_last" in args:
            raise BrokenProcessPool("A process in the process pool was terminated abruptly")
        return function(*args)

    monkeypatch.setattr(inference, "in_fresh_process", dies_for_channels_last)
    result = inference.infer_benchmark(["small"], [1, 2], ["channels_last"], size=32, repeats=1)
    assert [(row["batch"], row["variant"], row["skipped"]) for row in result["rows"]] == [
        (1, "eager", None),
        (1, "channels_last", "failed with BrokenProcessPool: A process in the process pool was terminated abruptly"),
        (2, "eager", None),
        (2, "channels_last", "failed with BrokenProcessPool: A process in the process pool was terminated abruptly"),
    ]
    assert [(fastest["batch"], fastest["variant"]) for fastest in result["fastest_agreeing"]] == [
        (1, "eager"), (2, "eager"),
    ]


@pytest.mark.slow
def test_infer_benchmark_runs_each_variant_in_a_process_of_its_own_and_onnxruntime_agrees(docs):
    result = inference.infer_benchmark(["small"], [1], ["onnxruntime"], size=64, repeats=1)
    record = publish(docs, "infer", result)
    eager, onnxruntime = record["rows"]
    # A process's peak holds torch's libraries: far more than this process's model and images.
    assert eager["peak_rss_gib"] > 0.2 and onnxruntime["peak_rss_gib"] > 0.2
    assert onnxruntime["images_per_second"] > 0 and onnxruntime["pixel_agreement"] >= 0.9999
    assert onnxruntime["agrees"] is True and onnxruntime["setup_seconds"] > 0  # the export's seconds
    assert onnxruntime["export_peak_rss_gib"] > 0.2 and eager["export_peak_rss_gib"] is None
    cells = table_lines(docs, "infer")[3].split(" | ")
    assert cells[-2] == str(onnxruntime["setup_seconds"])
    assert f"the export's process: {onnxruntime['export_peak_rss_gib']:.2f} GiB peak RSS" in cells[-1]


@pytest.mark.slow
def test_infer_benchmark_times_compilation_apart_from_the_compiled_calls(in_this_process):
    result = inference.infer_benchmark(["small"], [1], ["compile"], size=32, repeats=1)
    _, compiled = result["rows"]  # eager, then the compiled network
    assert compiled["setup_seconds"] > 1 / compiled["images_per_second"]  # the first call compiles
    assert compiled["pixel_agreement"] >= 0.9999 and compiled["agrees"] is True


def test_tables_are_rebuilt_from_lines_measured_elsewhere(docs):
    measured_on_a_gpu = {
        "benchmark": "train", "date": "2026-12-01T10:00:00+00:00", "command": "python scripts/benchmark.py train",
        "machine": {"gpu": "NVIDIA H100 80GB HBM3", "cpu_count": 16, "torch": "2.14.1"},
        "model": "voc_emanet512 R101 OS8", "crop": 513, "batch": 16, "gflops_per_step": 22672.0,
        "rows": [{"variant": "bf16_cl", "images_per_second": 160.0, "tflops": 226.7,
                  "fraction_of_bf16_peak": 0.229, "peak_memory_gib": 31.5}],
    }
    demo_on_a_workstation = {
        "benchmark": "demo", "date": "2026-12-02T10:00:00+00:00", "command": "python train.py",
        "machine": {"cpu_count": 32, "cpu_model": "AMD EPYC 9654", "torch": "2.14.1", "threads": 16},
        "overrides": ["seed=1"],
        "iterations": 2100, "wall_seconds": 41.5, "train_seconds": 35.0, "mIoU_ms_flip": 87.09,
        "mIoU_single_scale": 76.92,
    }
    (docs / records.JSONL).write_text(json.dumps(measured_on_a_gpu) + "\n" + json.dumps(demo_on_a_workstation) + "\n")
    assert rebuild_every_table(docs) == ["data", "unit", "train", "eval", "targets", "acceptance", "infer", "demo"]
    assert table_lines(docs, "demo")[2] == (
        "| 2026-12-02 | 32 CPUs (AMD EPYC 9654), torch 2.14.1 | 16 | 2100 | 41.5 | 35.0 | 87.09 | 76.92 | seed=1 |"
    )
    assert table_lines(docs, "train")[2] == (
        "| 2026-12-01 | NVIDIA H100 80GB HBM3, torch 2.14.1 | voc_emanet512 R101 OS8 | 513 | 16 | bf16_cl "
        "| 160.0 | 226.7 | 0.229 | 31.5 |"
    )
    assert len(table_lines(docs, "unit")) == 2  # no unit records: header and rule only


def test_without_record_a_measurement_goes_to_its_run_directory_and_the_docs_stay(docs):
    published = (docs / records.MARKDOWN).read_text()
    run_dir = docs / "run"
    argv = ["unit", "--sizes", "5", "--channels", "8", "--repeats", "1", "--memory-formats", "contiguous"]
    command = command_line("scripts/benchmark.py", [*argv, "--out", str(run_dir)])
    result = unit_benchmark([5], 8, 1, ["contiguous"], CPU)
    assert keep_result("unit", command, result, docs, publish=False, run_dir=run_dir) == run_dir
    assert (docs / records.MARKDOWN).read_text() == published and not (docs / records.JSONL).exists()
    [measured] = records.records("unit", run_dir)
    assert measured["command"] == f"python scripts/benchmark.py {' '.join(argv)} --out {run_dir}"
    table = (run_dir / "benchmarks.md").read_text()
    assert table.startswith("## unit\n\n| date | machine | C | layout |")
    assert len([line for line in table.splitlines() if "| NCHW | 5 |" in line]) == 3  # a line per module


def test_the_published_page_opens_with_a_summary_with_a_column_for_every_recorded_machine():
    text = (PUBLISHED / records.MARKDOWN).read_text()
    summary = text.split("\n## ", 1)[0]  # before the first section
    header = next(line for line in summary.splitlines() if line.startswith("| measurement |"))
    measured = [json.loads(line) for line in (PUBLISHED / records.JSONL).read_text().splitlines() if line]
    machines = {record["machine"].get("gpu") or record["machine"].get("cpu_model") for record in measured}
    named = {machine or "processor not recorded" for machine in machines}
    assert [machine for machine in sorted(named) if machine not in header] == []


def test_a_missing_table_section_is_reported(docs):
    (docs / records.MARKDOWN).write_text("# Benchmarks\n")
    with pytest.raises(MissingSectionError) as error:
        publish(docs, "unit", {"channels": 8, "rows": []})
    assert str(error.value) == (f"{docs / 'benchmarks.md'} has no <!-- unit-table:begin --> ... "
                                "<!-- unit-table:end --> section; add one where the table should go")
    assert not (docs / records.JSONL).exists()  # refused before a record was written


def test_the_processor_is_named_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9654 96-Core Processor\n"
                       "flags\t\t: fpu sse2 avx f16c avx2 fma bmi2\n"
                       "processor\t: 1\nmodel name\t: AMD EPYC 9654 96-Core Processor\n")
    assert records.cpu_model(cpuinfo) == "AMD EPYC 9654 96-Core Processor"
    machine = records.machine_description(cpuinfo)
    assert (machine["cpu_model"], machine["cpu_vector_extension"]) == ("AMD EPYC 9654 96-Core Processor", "avx2")


@pytest.mark.parametrize(("flags", "expected"), [
    ("fpu sse2 avx f16c avx2 fma avx512f avx512dq avx512_bf16", "avx512"),
    ("fpu sse2 avx f16c avx2 fma bmi2", "avx2"),  # an AMD EPYC of the demo's records: no AVX-512
    ("fpu sse2 avx", "avx"),
    ("fp asimd evtstrm", None),  # not x86
])
def test_the_widest_vector_extension_is_read_from_the_flags(tmp_path, flags, expected):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: {flags}\n")
    assert records.cpu_vector_extension(cpuinfo) == expected
    assert records.cpu_vector_extension(tmp_path / "missing") is None
    machine = {"cpu_count": 2, "cpu_model": "AMD EPYC", "cpu_vector_extension": expected, "torch": "2.14.1"}
    assert records.machine_cell({"machine": machine}) == (
        f"2 CPUs (AMD EPYC, {expected}), torch 2.14.1" if expected else "2 CPUs (AMD EPYC), torch 2.14.1")


def test_machine_description_names_versions_and_the_float32_settings_of_a_gpu(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
                       "flags\t\t: fpu sse2 avx avx2 avx512f avx512_bf16\n")
    monkeypatch.setattr(torch, "__version__", "2.14.1+cu130")
    monkeypatch.setattr(torchvision, "__version__", "0.29.1+cu130")
    cpu = records.machine_description(cpuinfo)
    assert (cpu["cpu_model"], cpu["cpu_vector_extension"]) == ("Intel(R) Xeon(R) Platinum 8480+", "avx512")
    assert (cpu["torch"], cpu["torchvision"]) == ("2.14.1+cu130", "0.29.1+cu130")
    assert "gpu" not in cpu and "cudnn_allow_tf32" not in cpu
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 91000)  # asks the (absent) GPU otherwise
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # restored after the test
    gpu = records.machine_description(cpuinfo)
    assert (gpu["gpu"], gpu["cuda"], gpu["cudnn"]) == ("NVIDIA H100 80GB HBM3", "13.0", 91000)
    assert gpu["cudnn_allow_tf32"] is False and gpu["float32_matmul_precision"] == "highest"
    assert records.machine_cell({"machine": gpu}) == "NVIDIA H100 80GB HBM3, torch 2.14.1+cu130"
