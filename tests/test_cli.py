"""Command-line overrides: paths that Hydra's grammar would reject are quoted. Errors the
user can fix: one line on the terminal, a copy in the run's log file."""

import os
import subprocess
import sys

from hydra.core.override_parser.overrides_parser import OverridesParser
from tests_paths import REPO

from emanet.cli import compose_config, quote_path_overrides
from emanet.engine.checkpoint import save_checkpoint
from emanet.models.segmentor import build_model


def test_existing_paths_with_hydra_syntax_are_quoted_and_nothing_else(tmp_path):
    sweep_run = tmp_path / "model.ema.train_stages=2,seed=1"
    apostrophe = tmp_path / "it's=here"
    for folder in (sweep_run, apostrophe):
        folder.mkdir()
    checkpoint = sweep_run / "last.pt"
    checkpoint.touch()
    plain = tmp_path / "last.pt"
    plain.touch()
    overrides = [
        f"checkpoint={checkpoint}", f"hydra.run.dir={apostrophe}", f"+extra={plain}", "-m", "--cfg=job",
        "checkpoint=a.pt,b.pt", f"checkpoint='{checkpoint}'", f"checkpoint={tmp_path}/missing=1,2.pt",
        "model.backbone.multi_grid=[1,2,4]", "schedule.iterations=10", "model.aux.weight=",
    ]
    assert quote_path_overrides(overrides) == [
        f"checkpoint='{checkpoint}'", f'hydra.run.dir="{apostrophe}"', *overrides[2:],
    ]
    parser = OverridesParser.create()
    for override, path in zip(quote_path_overrides(overrides[:2]), (checkpoint, apostrophe), strict=True):
        assert parser.parse_override(override).value() == str(path)  # Hydra reads back the path itself


def test_composed_configs_take_such_paths_too(tmp_path):
    checkpoint = tmp_path / "T=2,seed=1" / "last.pt"
    checkpoint.parent.mkdir()
    checkpoint.touch()
    assert compose_config("evaluate", [f"checkpoint={checkpoint}"]).checkpoint == str(checkpoint)


def run_script(script, *overrides):
    return subprocess.run(
        [sys.executable, script, *overrides], cwd=REPO, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120,
    )


def test_a_checkpoint_that_does_not_fit_is_one_line_on_the_terminal_and_every_key_in_the_log(tmp_path):
    cfg = compose_config("train", ["model.ema.channels=32"])
    model = build_model(cfg.model, cfg.dataset.num_classes, load_pretrained=False)
    save_checkpoint({"model": model.state_dict(), "config": {"name": "wider"}}, tmp_path / "wider.pt")
    run_dir = tmp_path / "run"
    result = run_script("evaluate.py", f"checkpoint={tmp_path / 'wider.pt'}", f"hydra.run.dir={run_dir}")
    assert result.returncode == 2
    terminal = result.stdout + result.stderr
    assert terminal.count("was trained with experiment=wider") == 1, terminal
    line = result.stderr.splitlines()[-1]
    assert line.startswith(f"error: {tmp_path / 'wider.pt'} was trained with experiment=wider and does not fit")
    assert len(terminal) < 1000
    log = (run_dir / "evaluate.log").read_text()
    assert log.count("was trained with experiment=wider") == 1
    assert "size mismatch for head.ema.conv_out.0.weight" not in terminal  # one of "and 13 more"
    assert "size mismatch for head.ema.conv_out.0.weight" in log


def test_a_required_key_left_unset_is_printed_once_and_logged_once(tmp_path):
    result = run_script("evaluate.py", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2
    message = "checkpoint is not set: pass checkpoint=... on the command line"
    assert (result.stdout + result.stderr).count(message) == 1
    assert (tmp_path / "evaluate.log").read_text().count(message) == 1


def test_a_refused_config_is_printed_once_and_leaves_no_run_directory(tmp_path):
    run_dir = tmp_path / "run"
    result = run_script("train.py", "eval.stride=100", f"hydra.run.dir={run_dir}")
    assert result.returncode == 2
    assert (result.stdout + result.stderr).count("eval.stride") == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert not run_dir.exists()
