"""The paper's tables: values, layouts, charts, the iteration-table command and the bases
figure."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from figure_checks import texts_inside, written_png_and_pdf
from helpers import compose_config
from matplotlib.colors import to_rgba

from emanet import visualize_bases
from emanet.iteration_table import parse_arguments
from emanet.models.segmentor import build_model
from emanet.paper_numbers import PAPER_TABLE3, paper_iteration_value
from emanet.plots import OURS_COLOUR, REFERENCE_COLOUR, comparison_chart, iteration_heatmap
from emanet.run_results import collect, read_metrics
from emanet.tables import (
    beyond_markdown,
    beyond_rows,
    iteration_markdown,
    iteration_rows,
    ranking_markdown,
    records_csv,
    table1_markdown,
    write_beyond_table,
)

REPO = Path(__file__).resolve().parents[1]


def test_paper_iteration_values():
    assert paper_iteration_value(1, 1) == 77.34
    assert paper_iteration_value(3, 5) == 78.86
    assert paper_iteration_value(8, 8) == 77.24
    assert paper_iteration_value(4, 3) is None  # eval_stages < train_stages is not in the table


def test_iteration_table_layouts():
    results = {(1, 1): 60.0, (1, 2): 61.5, (2, 2): 62.25}
    rows = iteration_rows(results, 3)
    assert len(rows) == 6
    markdown = iteration_markdown(rows, 3, "demo")
    assert "| train_stages (T) \\ eval_stages (T) | 1 | 2 | 3 |" in markdown
    assert "| 1 | 60.00 | 61.50 | - |" in markdown
    assert "| 2 |  | 62.25 | - |" in markdown
    assert "| 3 |  |  | 78.86 |" not in markdown  # 3x3 table: paper (3, 3) is 78.52
    assert "| 3 |  |  | 78.52 |" in markdown
    lines = records_csv(rows).splitlines()
    assert lines[0] == "train_stages,eval_stages,mIoU,paper_mIoU"
    assert lines[1] == "1,1,60.0,77.34" and lines[3] == "1,3,,77.6"


def test_heatmap_panels_share_one_colour_scale_shown_by_a_colour_bar():
    # Ours spans 17.09-17.11, the paper's 77.34-77.75: on one scale ours is all dark and only
    # the paper's best cell is the brightest colour (each panel on its own scale made our 17.11
    # as bright as the paper's 77.75, and our 17.09 as dark as its 77.34).
    rows = iteration_rows({(1, 1): 17.09, (1, 2): 17.11, (2, 2): 17.10}, 2)
    figure = iteration_heatmap(rows, 2, "t")
    ours, paper, colour_bar = figure.axes
    grids = {"ours": ours.images[0], "paper": paper.images[0]}
    np.testing.assert_array_equal(grids["ours"].get_array().filled(np.nan), [[17.09, 17.11], [np.nan, 17.10]])
    np.testing.assert_array_equal(grids["paper"].get_array().filled(np.nan), [[77.34, 77.52], [np.nan, 77.75]])
    for image in grids.values():
        assert (image.norm.vmin, image.norm.vmax) == (17.09, 77.75)
    colour_map = matplotlib.colormaps["viridis"]
    assert grids["paper"].to_rgba(77.75) == colour_map(1.0)
    # Our three cells differ by 0.02 of the 60.66 the scale spans: all its darkest colour.
    assert {grids["ours"].to_rgba(value) for value in (17.09, 17.10, 17.11)} == {colour_map(0.0)}
    assert colour_bar.get_ylabel() == "mIoU (%)" and colour_bar.get_ylim() == (17.09, 77.75)
    # Each value written in its cell; the cell eval_stages < train_stages is empty, one not run says "-".
    assert {(t.get_position(), t.get_text()) for t in ours.texts} == {
        ((0, 0), "17.09"), ((1, 0), "17.11"), ((1, 1), "17.10")}
    assert (ours.get_xlabel(), ours.get_ylabel()) == ("eval_stages (T)", "train_stages (T)")
    missing = iteration_heatmap(iteration_rows({(1, 1): 60.0}, 2), 2, "t").axes[0]
    assert {(t.get_position(), t.get_text()) for t in missing.texts} == {
        ((0, 0), "60.00"), ((1, 0), "-"), ((1, 1), "-")}


@pytest.mark.slow
@pytest.mark.parametrize("max_stages", [1, 2, 8])
def test_heatmap_leaves_nothing_cut_off(max_stages):
    # A long title (the command's, with its overrides) over a small table was cut off.
    title = "Iteration table: voc_r50_ablation (schedule.iterations=30000 dataset.crop_size=513), eval=ss"
    results = {(t, e): 60.0 + t + e / 10 for t in range(1, max_stages + 1) for e in range(t, max_stages + 1)}
    assert texts_inside(iteration_heatmap(iteration_rows(results, max_stages), max_stages, title))


def test_comparison_chart_draws_each_value_from_below_the_lowest():
    groups = [("EMANet(512)", [("SS", 79.0, False), ("SS paper", 80.05, True)]), ("FCN", [("SS", None, False)])]
    figure = comparison_chart("Table 1", groups)
    axes = figure.axes[0]
    # The axis starts at the ten below the lowest value's ten: bars from 60, as long as the value.
    assert axes.get_xlim()[0] == 60
    bars = [(bar.get_x(), bar.get_width(), bar.get_facecolor()) for bar in axes.patches]
    assert [(x, round(width, 6)) for x, width, _ in bars] == [(60, 19.0), (60, 20.05)]
    assert [colour for _, _, colour in bars] == [to_rgba(OURS_COLOUR), to_rgba(REFERENCE_COLOUR)]
    assert [t.get_text() for t in axes.texts] == ["79.00", "80.05", "-"]
    assert [t.get_text() for t in axes.get_yticklabels()] == ["EMANet(512), SS", "EMANet(512), SS paper", "FCN, SS"]
    assert texts_inside(figure)


def test_table1_puts_runs_beside_the_paper():
    run = {"mIoU": 81.0, "single_scale": {"mIoU": 79.9}, "eval": {"scales": [0.5, 1.0], "flip": True}}
    complexity = [{"method": "EMANet(512)", "flops_g": 43.06, "memory_m": 53.6, "params_m": 9.997},
                  {"method": "ResNet-101", "flops_g": 190.6, "memory_m": None, "params_m": 42.6}]
    text = table1_markdown({"EMANet(512)": run}, complexity)
    assert "| EMANet(512) | 79.90 | 80.05 | -0.15 | 81.00 | 81.32 | -0.32 | +43.06 | +53.6 | +9.997 |" in text
    # A value not measured is "-", as every missing cell (it read "+-" for the heads).
    assert "| DeeplabV3 | - | 78.51 | - | - | 79.77 | - | - | - | - |" in text
    assert "| ResNet-101 | - | - | - | - | - | - | 190.6 | - | 42.6 |" in text
    fcn = {"mIoU": 75.5, "eval": {"scales": [1.0], "flip": False}}
    text = table1_markdown({"FCN": fcn}, [{"method": "FCN", "flops_g": 39.87, "memory_m": 16.5, "params_m": 9.438}])
    assert text.splitlines()[-1] == "| FCN | 75.50 | - | - | - | - | - | +39.87 | +16.5 | +9.438 |"
    assert text.splitlines()[-2].startswith("| Non-local | - |")


def test_ranking_table_fills_the_emanet_row():
    run = {"mIoU": 52.0, "single_scale": {"mIoU": 51.0}, "eval": {"scales": [1.0, 1.5], "flip": True}}
    text = ranking_markdown("Table 3", PAPER_TABLE3, {"EMANet (ResNet-101)": run})
    assert "| EMANet (ResNet-101) | 53.1 | 52.00 | -1.10 |" in text
    assert "| DANet (ResNet-101) | 52.6 | - | - |" in text
    single_scale_only = {"mIoU": 50.5, "eval": {"scales": [1.0], "flip": False}}
    text = ranking_markdown("Table 3", PAPER_TABLE3, {"EMANet (ResNet-101)": single_scale_only})
    assert "| EMANet (ResNet-101) | 53.1 | 50.50 (SS) | -2.60 |" in text


@pytest.mark.slow
def test_iteration_table_command_trains_evaluates_and_resumes(tmp_path):
    overrides = [
        "schedule.iterations=2", "schedule.batch_size=2", "dataset.generate.num_train=4",
        "dataset.generate.num_val=2", "runtime.num_workers=0", "runtime.progress=false",
        "data_root=itdata",  # relative: training and evaluation must both read it from the current directory
    ]
    command = [
        sys.executable, str(REPO / "scripts" / "iteration_table.py"), "--max-stages", "2", "--root", "root",
        "--output", "out", *overrides,
    ]
    try:
        subprocess.run(command, cwd=tmp_path, check=True, capture_output=True)
        assert (tmp_path / "itdata" / "demo" / "VOC2012").is_dir() and not (REPO / "itdata").exists()
    finally:
        shutil.rmtree(REPO / "itdata", ignore_errors=True)
    root = tmp_path / "root"
    evaluated = {(t, e): json.loads((root / f"T{t}" / f"eval_ss_T{e}" / "metrics.json").read_text()) for t, e in
                 [(1, 1), (1, 2), (2, 2)]}
    assert {key: m["eval"]["eval_stages"] for key, m in evaluated.items()} == {(1, 1): 1, (1, 2): 2, (2, 2): 2}
    assert "train_stages: 2" in (root / "T2" / "config.yaml").read_text()
    csv_lines = (tmp_path / "out" / "iteration_table.csv").read_text().splitlines()
    assert csv_lines[1] == f"1,1,{evaluated[(1, 1)]['mIoU']},77.34"
    width, height = written_png_and_pdf(tmp_path / "out" / "iteration_table")
    assert 500 < width < 2000 and 300 < height < 1500

    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("metrics.json")}
    subprocess.run(command, cwd=tmp_path, check=True, capture_output=True)
    assert {p: p.stat().st_mtime_ns for p in root.rglob("metrics.json")} == stamps  # nothing redone

    # Another protocol evaluates the same trainings again, into its own folders.
    subprocess.run([*command, "--eval", "ms_flip"], cwd=tmp_path, check=True, capture_output=True)
    multi = json.loads((root / "T1" / "eval_ms_flip_T2" / "metrics.json").read_text())
    assert multi["eval"]["flip"] and multi["eval"]["eval_stages"] == 2
    assert {p: p.stat().st_mtime_ns for p in root.rglob("metrics.json") if p in stamps} == stamps

    # Other training settings cannot reuse these trainings.
    changed = subprocess.run(
        [*command[:-len(overrides)], *overrides, "optim.lr=0.5"], cwd=tmp_path, capture_output=True, text=True
    )
    assert changed.returncode == 2  # a problem for the user to fix: one line, status 2
    assert f"error: {root} holds runs made with {{'overrides': {overrides}}}, not" in changed.stderr
    assert "pass --root DIR for the new settings" in changed.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["--train-stages", "1", "3", "experiment=demo", "schedule.iterations=5"],
        ["experiment=demo", "--train-stages", "1", "3", "schedule.iterations=5"],
        ["experiment=demo", "schedule.iterations=5", "--train-stages", "1", "3"],
    ],
)
def test_iteration_table_overrides_may_follow_the_train_stages(argv):
    args = parse_arguments(argv)
    assert args.train_stages == [1, 3]
    assert args.overrides == ["experiment=demo", "schedule.iterations=5"]


def test_base_responsibilities_are_the_units_last_e_step():
    cfg = compose_config(["model.ema.eval_stages=2"])
    torch.manual_seed(0)
    model = build_model(cfg.model, 5).eval()
    image = torch.randn(3, 40, 48)
    maps = visualize_bases.responsibilities(model, image)
    assert maps.shape == (5, 6, 16)  # 40x48 at output stride 8; K = 16 in the demo
    torch.testing.assert_close(maps.sum(-1), torch.ones(5, 6))  # a distribution over bases
    # The same Z as the unit's own E step: recompute from the features the unit sees.
    unit = model.head.ema
    features = {}
    unit.conv_in.register_forward_hook(lambda m, a, out: features.setdefault("x", out))
    with torch.no_grad():
        model(image[None])
        x = features["x"].reshape(1, unit.mu.shape[1], -1)
        mu = unit.mu.clone()
        for _ in range(2):
            z = torch.softmax(unit.lambda_ * x.transpose(1, 2) @ mu, dim=2)
            mu = x @ (z / (1e-6 + z.sum(1, keepdim=True)))
            mu = mu / (1e-6 + mu.norm(dim=1, keepdim=True))
    torch.testing.assert_close(maps.reshape(30, 16), z[0], rtol=1e-4, atol=1e-5)
    panels = visualize_bases.figure(np.zeros((40, 48, 3), dtype=np.uint8), maps, [0, 3]).axes
    # The image and two bases, each map upsampled to the image with its corners kept.
    assert [axes.get_title() for axes in panels[:3]] == ["image", "base 0", "base 3"]
    for axes, k in zip(panels[1:3], [0, 3], strict=True):
        shown = axes.images[0].get_array()
        assert shown.shape == (40, 48)
        np.testing.assert_allclose(shown[[0, 0, -1, -1], [0, -1, 0, -1]], maps[[0, 0, -1, -1], [0, -1, 0, -1], k],
                                   rtol=1e-5)


def test_base_maps_are_shown_at_the_evaluation_output_stride():
    cfg = compose_config(["model.backbone.output_stride=16", "model.backbone.eval_output_stride=8"])
    model = build_model(cfg.model, 5).eval()
    maps = visualize_bases.evaluation_responsibilities(model, cfg, torch.randn(3, 40, 48))
    assert maps.shape == (5, 6, 16)  # the OS8 grid of evaluation, not the OS16 one of training (3 x 3)
    assert model.backbone.output_stride == 16  # restored afterwards


def write_run(directory: Path, metrics: dict, depth: int, aux_weight: float = 0.0) -> Path:
    directory.mkdir()
    (directory / "metrics.json").write_text(json.dumps(metrics))
    config = f"model:\n  backbone:\n    depth: {depth}\n  aux:\n    weight: {aux_weight}\n"
    (directory / "config.yaml").write_text(config)
    return directory


def test_paper_tables_sorts_runs_into_their_rows(tmp_path):
    def run(name, experiment, depth, aux_weight=0.0):
        metrics = {"experiment": experiment, "mIoU": 50.0, "eval": {"scales": [1.0], "flip": False}}
        return write_run(tmp_path / name, metrics, depth, aux_weight)

    no_config = run("e", "voc_emanet512", 101)
    (no_config / "config.yaml").unlink()
    not_json = tmp_path / "f"
    not_json.mkdir()
    (not_json / "metrics.json").write_text("hydra: {}")
    runs = [run("a", "voc_emanet512", 101), run("b", "context_emanet512", 50) / "metrics.json", run("c", "demo", 18),
            tmp_path / "unfinished", run("d", "voc_emanet256", 101, aux_weight=0.4),
            run("g", "cocostuff10k_emanet512", 152), run("h", "voc_emanet512", 50) / "metrics.json", no_config,
            not_json]
    results = collect(runs)
    # A metrics.json given for its run counts as the run (its config says ResNet-50).
    assert list(results.table1) == ["EMANet(512)", "EMANet(256)"] and list(results.table3) == ["EMANet (ResNet-50)"]
    assert results.table4 == {} and results.beyond == {}
    notes = results.notes
    assert notes[:6] == [
        f"{runs[2]}: experiment 'demo' (depth 18) is in none of the tables",
        f"{runs[3]}: no metrics.json (not finished?)",
        f"{runs[4]}: trained with an auxiliary head (model.aux.weight=0.4), the paper without",
        f"{runs[5]}: experiment 'cocostuff10k_emanet512' (depth 152) is in none of the tables",
        f"{tmp_path / 'h'}: experiment 'voc_emanet512' (depth 50) is in none of the tables",
        f"{no_config}: no config.yaml beside metrics.json, so its backbone is unknown; left out",
    ]
    assert notes[6].startswith(f"{not_json / 'metrics.json'}: not a metrics.json (") and len(notes) == 7


def test_a_metrics_json_of_the_old_format_is_still_read(tmp_path):
    # Runs made before T took its config key's name recorded it as eval.em_iterations.
    old = {"experiment": "voc_emanet512", "mIoU": 80.5, "single_scale": {"mIoU": 79.25},
           "eval": {"scales": [0.5, 1.0], "flip": True, "em_iterations": 4}}
    new = {**old, "eval": {"scales": [1.0], "flip": False, "eval_stages": 2}}
    old_run, new_run = write_run(tmp_path / "old", old, 101), write_run(tmp_path / "new", new, 101)
    assert read_metrics(old_run)["eval"] == {"scales": [0.5, 1.0], "flip": True, "eval_stages": 4}
    assert read_metrics(new_run / "metrics.json")["eval"] == {"scales": [1.0], "flip": False, "eval_stages": 2}
    results = collect([old_run])
    assert results.table1["EMANet(512)"]["eval"]["eval_stages"] == 4 and results.notes == []
    assert "| EMANet(512) | 79.25 | 80.05 | -0.80 | 80.50 | 81.32 | -0.82 |" in table1_markdown(results.table1, [])


@pytest.mark.slow
def test_visualize_bases_writes_the_figure_and_refuses_bad_options_in_one_line(tmp_path, capsys):
    overrides = ["experiment=demo", f"data_root={tmp_path / 'data'}", "dataset.generate.num_train=2",
                 "dataset.generate.num_val=2"]
    cfg = compose_config(overrides)  # the network the checkpoint is of
    torch.save({"model": build_model(cfg.model, 5).state_dict()}, tmp_path / "model.pt")
    overrides.append(f"checkpoint={tmp_path / 'model.pt'}")
    output = tmp_path / "figures" / "bases.png"

    def run(*argv):
        try:
            visualize_bases.main([*argv, "--output", str(output), *overrides])
        except SystemExit as exit_:
            return exit_.code, capsys.readouterr().err.strip().splitlines()[-1]
        return 0, capsys.readouterr().out.strip()

    num_bases = cfg.model.ema.num_bases
    assert run("--bases", "1", str(num_bases)) == (
        2, f"error: --bases must lie in 0-{num_bases - 1} (model.ema.num_bases={num_bases}), got [1, {num_bases}]"
    )
    assert run("--index", "2") == (2, "error: --index must lie in 0-1 (the val split), got 2")
    assert not output.parent.exists()
    status, line = run("--index", "1", "--bases", "0", "3")
    assert (status, line) == (0, f"bases [0, 3] written to {output}")
    width, height = written_png_and_pdf(output.with_suffix(""))
    assert 600 < width < 1500 and 200 < height < 800  # the image, two bases and a colour bar side by side
    assert sorted(p.name for p in output.parent.iterdir()) == ["bases.pdf", "bases.png"]


def test_base_figure_shows_every_map_on_one_scale_with_a_colour_bar():
    image = np.full((64, 80, 3), 128, dtype=np.uint8)  # the demo's size
    maps = torch.zeros(8, 10, 4)
    maps[..., 1], maps[..., 2] = 0.2, 0.8  # two flat maps, one four times the other
    figure = visualize_bases.figure(image, maps, [1, 2])
    picture, weaker, stronger, colour_bar = figure.axes
    np.testing.assert_array_equal(picture.images[0].get_array(), image)
    # One scale for both maps: the weaker one is drawn at a quarter of it, not as bright.
    for axes, value in ((weaker, 0.2), (stronger, 0.8)):
        shown = axes.images[0]
        np.testing.assert_allclose(shown.get_array(), np.full((64, 80), value))
        assert (shown.norm.vmin, shown.norm.vmax) == pytest.approx((0.0, 0.8))
    colour_map = matplotlib.colormaps["viridis"]
    np.testing.assert_allclose(weaker.images[0].to_rgba(0.2), colour_map(0.25), atol=0.01)  # 256 colours
    assert stronger.images[0].to_rgba(0.8) == colour_map(1.0)
    assert colour_bar.get_ylabel() == "responsibility z"
    assert texts_inside(figure)


def test_the_table_beyond_the_paper_puts_trained_and_imported_runs_beside_the_published_numbers(tmp_path):
    def run(name, experiment, depth, ss, ms=None, imported=False):
        directory = tmp_path / name
        directory.mkdir()
        scales, flip = ([0.5, 1.0, 1.75], True) if ms is not None else ([1.0], False)
        metrics = {"experiment": experiment, "mIoU": ms if ms is not None else ss,
                   "single_scale": {"mIoU": ss}, "eval": {"scales": scales, "flip": flip}}
        if imported:
            metrics["imported_from"] = "mmsegmentation: emanet_r101-d8_769x769_80k_cityscapes.pth"
        (directory / "metrics.json").write_text(json.dumps(metrics))
        (directory / "config.yaml").write_text(f"model:\n  backbone:\n    depth: {depth}\n  aux:\n    weight: 0.4\n")
        return directory

    runs = [run("a", "cityscapes_emanet512", 101, 79.0, 80.5), run("b", "cityscapes_mmseg_r101", 101, 79.5, 81.0,
            imported=True), run("c", "cityscapes_mmseg_r101", 101, 78.0), run("d", "ade20k_emanet512", 101, 42.1)]
    results = collect(runs)
    beyond, notes = results.beyond, results.notes
    assert set(beyond) == {("cityscapes_emanet512", False), ("cityscapes_mmseg_r101", True),
                           ("cityscapes_mmseg_r101", False), ("ade20k_emanet512", False)}
    assert notes == []  # their recipes have auxiliary heads of their own: no note
    lines = beyond_markdown(beyond).splitlines()
    assert ("| Cityscapes val | EMANet(512), ResNet-101 | cityscapes_emanet512 | trained here | 79.00 | 80.50 | "
            "the authors' release README | 79.79 | -0.79 | - | - |") in lines
    assert ("| Cityscapes val | EMANet(512), ResNet-101 | cityscapes_emanet512 | trained here | 79.00 | 80.50 | "
            "mmsegmentation R-101-D8 512x1024 80k | 79.10 | -0.10 | 81.21 | -0.71 |") in lines
    assert ("| Cityscapes val | mmsegmentation's EMANet, R-101-D8 769x769 | cityscapes_mmseg_r101 | published, "
            "evaluated here | 79.50 | 81.00 | mmsegmentation R-101-D8 769x769 80k | 79.62 | -0.12 | 81.00 | +0.00 "
            "|") in lines
    assert ("| Cityscapes val | mmsegmentation's EMANet, R-101-D8 769x769 | cityscapes_mmseg_r101 | trained here | "
            "78.00 | - | mmsegmentation R-101-D8 769x769 80k | 79.62 | -1.62 | 81.00 | - |") in lines
    assert ("| ADE20K val | EMANet(512), ResNet-101 | ade20k_emanet512 | trained here | 42.10 | - | - | - | - | - "
            "| - |") in lines
    # their 512x1024 checkpoints under their own experiment, beside their own published numbers
    assert ("| Cityscapes val | mmsegmentation's EMANet, R-101-D8 512x1024 | cityscapes_mmseg_r101_512x1024 | "
            "published, evaluated here | - | - | mmsegmentation R-101-D8 512x1024 80k | 79.10 | - | 81.21 | - "
            "|") in lines
    assert len(records_csv(beyond_rows(beyond)).splitlines()) == 1 + 10  # a row per reference, one for ADE20K's none


@pytest.mark.slow
def test_table_files_are_markdown_csv_and_the_chart_as_png_and_pdf(tmp_path):
    run = {"experiment": "ade20k_emanet512", "mIoU": 42.1, "eval": {"scales": [1.0], "flip": False}}
    markdown, csv_file, *chart = write_beyond_table({("ade20k_emanet512", False): run}, tmp_path / "tables")
    assert markdown.read_text() == beyond_markdown({("ade20k_emanet512", False): run}) + "\n"
    last_row = 'ADE20K val,"EMANet(512), ResNet-101",ade20k_emanet512,trained here,42.1,,-,,'
    assert csv_file.read_text().splitlines()[-1] == last_row
    width, height = written_png_and_pdf(tmp_path / "tables" / "beyond", chart)
    assert 800 < width < 2000 and 700 < height < 2000  # 38 labelled bars
