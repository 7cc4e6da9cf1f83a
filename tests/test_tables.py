"""The paper's tables: values, layouts, heatmap colours, and the iteration-table command."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from emanet.tables import (
    PAPER_TABLE3,
    colour_scale,
    heatmap,
    iteration_csv,
    iteration_markdown,
    iteration_rows,
    paper_iteration_value,
    ranking_markdown,
    table1_markdown,
)

REPO = Path(__file__).resolve().parents[1]


def test_paper_iteration_values():
    assert paper_iteration_value(1, 1) == 77.34
    assert paper_iteration_value(3, 5) == 78.86
    assert paper_iteration_value(8, 8) == 77.24
    assert paper_iteration_value(4, 3) is None  # T_eval < T_train is not in the table


def test_iteration_table_layouts():
    results = {(1, 1): 60.0, (1, 2): 61.5, (2, 2): 62.25}
    rows = iteration_rows(results, 3)
    assert len(rows) == 6
    markdown = iteration_markdown(rows, 3, "demo")
    assert "| 1 | 60.00 | 61.50 | - |" in markdown
    assert "| 2 |  | 62.25 | - |" in markdown
    assert "| 3 |  |  | 78.86 |" not in markdown  # 3x3 table: paper (3, 3) is 78.52
    assert "| 3 |  |  | 78.52 |" in markdown
    lines = iteration_csv(rows).splitlines()
    assert lines[0] == "t_train,t_eval,mIoU,paper_mIoU"
    assert lines[1] == "1,1,60.0,77.34" and lines[3] == "1,3,,77.6"


def scale_colour_counts(image: Image.Image) -> dict[tuple[int, int, int], int]:
    """How many pixels of the image have each colour of the heatmap's colour scale."""
    scale = {colour_scale(fraction) for fraction in np.linspace(0, 1, 2001)}
    return {colour: count for count, colour in image.getcolors(maxcolors=1 << 20) if colour in scale}


def test_heatmap_panels_share_one_colour_scale_shown_by_a_colour_bar():
    # Ours spans 17.09-17.11, the paper's 77.34-77.75: on one scale ours is all dark and only
    # the paper's best cell is the brightest colour (each panel on its own scale made our 17.11
    # as bright as the paper's 77.75, and our 17.09 as dark as its 77.34).
    rows = iteration_rows({(1, 1): 17.09, (1, 2): 17.11, (2, 2): 17.10}, 2)
    counts = scale_colour_counts(heatmap(rows, 2, "t", cell_size=64))
    cell_pixels = 63 * 63 - 400  # filled inside a one-pixel white outline, less its written value
    assert cell_pixels <= counts[colour_scale(1.0)] < 2 * cell_pixels  # the paper's (2, 2) only
    # Our three cells differ by 0.02 of the 60.66 the scale spans: all the darkest colour.
    assert 3 * cell_pixels <= counts[colour_scale(0.0)] < 4 * cell_pixels
    # The colour bar runs through the scale: far more of its colours than the grids have cells.
    assert len(counts) > 100


@pytest.mark.parametrize("max_stages", [1, 2, 8])
def test_heatmap_leaves_nothing_cut_off(max_stages):
    # A long title (the command's, with its overrides) over a small table was cut off.
    title = "Iteration table: voc_r50_ablation (schedule.iterations=30000 dataset.crop_size=513), eval=ss"
    results = {(t, e): 60.0 + t + e / 10 for t in range(1, max_stages + 1) for e in range(t, max_stages + 1)}
    pixels = np.asarray(heatmap(iteration_rows(results, max_stages), max_stages, title))
    frame = np.concatenate([pixels[:4].reshape(-1, 3), pixels[-4:].reshape(-1, 3),
                            pixels[:, :4].reshape(-1, 3), pixels[:, -4:].reshape(-1, 3)])
    assert (frame == 255).all()  # a white margin on every side: every text and cell is inside


def test_table1_puts_runs_beside_the_paper():
    run = {"mIoU": 81.0, "single_scale": {"mIoU": 79.9}, "eval": {"scales": [0.5, 1.0], "flip": True}}
    complexity = [{"method": "EMANet(512)", "flops_g": 43.06, "memory_m": 53.6, "params_m": 9.997}]
    text = table1_markdown({"EMANet(512)": run}, complexity)
    assert "| EMANet(512) | 79.90 | 80.05 | -0.15 | 81.00 | 81.32 | -0.32 | +43.06 | +53.6 | +9.997 |" in text
    assert "| DeeplabV3 | - | 78.51 | - | - | 79.77 | - | +- | +- | +- |" in text
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
    assert {key: m["eval"]["em_iterations"] for key, m in evaluated.items()} == {(1, 1): 1, (1, 2): 2, (2, 2): 2}
    assert "train_stages: 2" in (root / "T2" / "config.yaml").read_text()
    csv_lines = (tmp_path / "out" / "iteration_table.csv").read_text().splitlines()
    assert csv_lines[1] == f"1,1,{evaluated[(1, 1)]['mIoU']},77.34"
    assert Image.open(tmp_path / "out" / "iteration_table.png").size[0] > 200

    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("metrics.json")}
    subprocess.run(command, cwd=tmp_path, check=True, capture_output=True)
    assert {p: p.stat().st_mtime_ns for p in root.rglob("metrics.json")} == stamps  # nothing redone

    # Another protocol evaluates the same trainings again, into its own folders.
    subprocess.run([*command, "--eval", "ms_flip"], cwd=tmp_path, check=True, capture_output=True)
    multi = json.loads((root / "T1" / "eval_ms_flip_T2" / "metrics.json").read_text())
    assert multi["eval"]["flip"] and multi["eval"]["em_iterations"] == 2
    assert {p: p.stat().st_mtime_ns for p in root.rglob("metrics.json") if p in stamps} == stamps

    # Other training settings cannot reuse these trainings.
    changed = subprocess.run(
        [*command[:-len(overrides)], *overrides, "optim.lr=0.5"], cwd=tmp_path, capture_output=True, text=True
    )
    assert changed.returncode == 1
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
    sys.path.insert(0, str(REPO / "scripts"))
    from iteration_table import parse_arguments

    args = parse_arguments(argv)
    assert args.train_stages == [1, 3]
    assert args.overrides == ["experiment=demo", "schedule.iterations=5"]


def test_base_responsibilities_are_the_units_last_e_step():
    import torch
    from hydra import compose, initialize_config_dir

    from emanet.models.segmentor import build_model

    sys.path.insert(0, str(REPO / "scripts"))
    from visualize_bases import figure, responsibilities

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        cfg = compose("train", ["model.ema.eval_stages=2"])
    torch.manual_seed(0)
    model = build_model(cfg.model, 5).eval()
    image = torch.randn(3, 40, 48)
    maps = responsibilities(model, image)
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
    panel = figure(np.zeros((40, 48, 3), dtype=np.uint8), maps, [0, 3])
    assert panel.width > 3 * round(48 * 256 / 40)  # the image and two bases enlarged, and a colour bar


def test_base_maps_are_shown_at_the_evaluation_output_stride():
    import torch
    from hydra import compose, initialize_config_dir

    from emanet.models.segmentor import build_model

    sys.path.insert(0, str(REPO / "scripts"))
    from visualize_bases import evaluation_responsibilities

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        cfg = compose("train", ["model.backbone.output_stride=16", "model.backbone.eval_output_stride=8"])
    model = build_model(cfg.model, 5).eval()
    maps = evaluation_responsibilities(model, cfg, torch.randn(3, 40, 48))
    assert maps.shape == (5, 6, 16)  # the OS8 grid of evaluation, not the OS16 one of training (3 x 3)
    assert model.backbone.output_stride == 16  # restored afterwards


def test_paper_tables_sorts_runs_into_their_rows(tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    from emanet.tables import collect

    def run(name, experiment, depth, aux_weight=0.0):
        directory = tmp_path / name
        directory.mkdir()
        metrics = {"experiment": experiment, "mIoU": 50.0, "eval": {"scales": [1.0], "flip": False}}
        (directory / "metrics.json").write_text(json.dumps(metrics))
        config = f"model:\n  backbone:\n    depth: {depth}\n  aux:\n    weight: {aux_weight}\n"
        (directory / "config.yaml").write_text(config)
        return directory

    no_config = run("e", "voc_emanet512", 101)
    (no_config / "config.yaml").unlink()
    not_json = tmp_path / "f"
    not_json.mkdir()
    (not_json / "metrics.json").write_text("hydra: {}")
    runs = [run("a", "voc_emanet512", 101), run("b", "context_emanet512", 50) / "metrics.json", run("c", "demo", 18),
            tmp_path / "unfinished", run("d", "voc_emanet256", 101, aux_weight=0.4),
            run("g", "cocostuff10k_emanet512", 152), run("h", "voc_emanet512", 50) / "metrics.json", no_config,
            not_json]
    table1, table3, table4, beyond, notes = collect(runs)
    # A metrics.json given for its run counts as the run (its config says ResNet-50).
    assert list(table1) == ["EMANet(512)", "EMANet(256)"] and list(table3) == ["EMANet (ResNet-50)"]
    assert table4 == {} and beyond == {}
    assert notes[:6] == [
        f"{runs[2]}: experiment 'demo' (depth 18) is in none of the tables",
        f"{runs[3]}: no metrics.json (not finished?)",
        f"{runs[4]}: trained with an auxiliary head (model.aux.weight=0.4), the paper without",
        f"{runs[5]}: experiment 'cocostuff10k_emanet512' (depth 152) is in none of the tables",
        f"{tmp_path / 'h'}: experiment 'voc_emanet512' (depth 50) is in none of the tables",
        f"{no_config}: no config.yaml beside metrics.json, so its backbone is unknown; left out",
    ]
    assert notes[6].startswith(f"{not_json / 'metrics.json'}: not a metrics.json (") and len(notes) == 7


@pytest.mark.slow
def test_visualize_bases_writes_the_figure_and_refuses_bad_options_in_one_line(tmp_path, monkeypatch, capsys):
    import torch

    from emanet.cli import compose_config
    from emanet.models.segmentor import build_model

    sys.path.insert(0, str(REPO / "scripts"))
    import visualize_bases

    overrides = ["experiment=demo", f"data_root={tmp_path / 'data'}", "dataset.generate.num_train=2",
                 "dataset.generate.num_val=2"]
    cfg = compose_config("evaluate", overrides)
    torch.save({"model": build_model(cfg.model, 5).state_dict()}, tmp_path / "model.pt")
    overrides.append(f"checkpoint={tmp_path / 'model.pt'}")
    output = tmp_path / "figures" / "bases.png"

    def run(*argv):
        monkeypatch.setattr(sys, "argv", ["visualize_bases.py", *argv, "--output", str(output), *overrides])
        try:
            visualize_bases.main()
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
    figure = Image.open(output)
    width, height = Image.open(tmp_path / "data" / "demo" / "VOC2012" / "JPEGImages" / "demo_val_00001.jpg").size
    zoom = 256 / min(width, height)  # the demo's small images are enlarged
    assert figure.format == "PNG" and figure.width > 3 * round(width * zoom)  # the image, two bases, a colour bar
    assert [p.name for p in output.parent.iterdir()] == ["bases.png"]  # no temporary left


def test_base_figure_shows_the_image_large_and_every_map_on_one_scale_with_a_colour_bar():
    import torch

    sys.path.insert(0, str(REPO / "scripts"))
    import visualize_bases

    image = np.full((64, 80, 3), 128, dtype=np.uint8)  # the demo's size
    maps = torch.zeros(8, 10, 4)
    maps[..., 1], maps[..., 2] = 0.2, 0.8  # two flat maps, one four times the other
    figure = visualize_bases.figure(image, maps, [1, 2])
    pixels = np.asarray(figure)
    assert ((pixels == 128).all(axis=2)).sum() >= 256 * 320  # the image enlarged to 256 x 320
    counts = scale_colour_counts(figure)
    # One scale for both maps: the weaker one is drawn at a quarter of it, not as bright.
    assert counts[colour_scale(1.0)] >= 256 * 320
    assert counts.get(colour_scale(round(0.25 * 255) / 255), 0) >= 256 * 320
    assert len(counts) > 100  # the colour bar runs through the scale
    frame = np.concatenate([pixels[:4].reshape(-1, 3), pixels[-4:].reshape(-1, 3),
                            pixels[:, :4].reshape(-1, 3), pixels[:, -4:].reshape(-1, 3)])
    assert (frame == 255).all()  # nothing cut off


def test_the_table_beyond_the_paper_puts_trained_and_imported_runs_beside_the_published_numbers(tmp_path):
    from emanet.tables import collect, write_beyond_table

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
    *_, beyond, notes = collect(runs)
    assert set(beyond) == {("cityscapes_emanet512", False), ("cityscapes_mmseg_r101", True),
                           ("cityscapes_mmseg_r101", False), ("ade20k_emanet512", False)}
    assert notes == []  # their recipes have auxiliary heads of their own: no note
    md, csv_path, png = write_beyond_table(beyond, tmp_path / "tables")
    lines = md.read_text().splitlines()
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
    assert len(csv_path.read_text().splitlines()) == 1 + 10  # a row per reference, one for ADE20K's none
    assert Image.open(png).size[0] > 300
