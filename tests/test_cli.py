"""Command-line overrides: paths that Hydra's grammar would reject are quoted. Errors the
user can fix: one line on the terminal, a copy in the run's log file."""

import re

import pytest
from helpers import experiment_overrides, run_entry_point
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf
from tests_paths import REPO

from emanet import cli, reproduce
from emanet.cli import PATH_KEYS, compose_config, quote_path_overrides
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
        f"+note={checkpoint}",  # not a key that holds a path: left to Hydra as it is
    ]
    assert quote_path_overrides(overrides) == [
        f"checkpoint='{checkpoint}'", f'hydra.run.dir="{apostrophe}"', *overrides[2:],
    ]
    assert quote_path_overrides([f"++checkpoint={checkpoint}"]) == [f"++checkpoint='{checkpoint}'"]
    parser = OverridesParser.create()
    for override, path in zip(quote_path_overrides(overrides[:2]), (checkpoint, apostrophe), strict=True):
        assert parser.parse_override(override).value() == str(path)  # Hydra reads back the path itself


def test_reproduce_papers_36_cell_sweep_is_passed_on_without_asking_the_file_system(tmp_path):
    # The iteration table's evaluations as reproduce_paper launches them: one value of 36
    # {train:T,eval:T'} pairs, longer than a file name may be (255 bytes on Linux).
    runs = reproduce.paper_runs(tmp_path, ["iteration"], [], None, 8)
    evaluations = [sweep for sweep in reproduce.unfinished_sweeps(runs) if sweep.runs[0].script == "evaluate"]
    command = evaluations[0].command([])
    overrides = command[command.index("-m") + 1:]
    cell = next(override for override in overrides if override.startswith("+iteration_cell="))
    assert cell.count("{train:") == 36 and len(cell) > 255
    assert quote_path_overrides(overrides) == overrides
    # A path key's value the file system refuses to look up is no file either.
    for value in ("x" * 300, "a\0b"):
        assert quote_path_overrides([f"checkpoint={value}"]) == [f"checkpoint={value}"]


@pytest.mark.slow
def test_the_path_keys_are_the_configs_keys_that_hold_paths():
    # Each one is a key of the configs (predict's holds every other's), and every value of
    # an experiment that is built from one of them (${data_root}/...) is one of them.
    cfg = compose_config("predict", ["checkpoint=last.pt", "input=photos"], return_hydra_config=True)
    for key in PATH_KEYS:
        parent, _, leaf = key.rpartition(".")
        assert leaf in list(OmegaConf.select(cfg, parent) if parent else cfg), key  # "???" counts too
    built_from_a_path = re.compile(r"\$\{(" + "|".join(re.escape(key) for key in PATH_KEYS) + r")\}")
    for experiment in sorted(path.stem for path in (REPO / "configs" / "experiment").glob("*.yaml")):
        composed = compose_config("predict", [*experiment_overrides(experiment), "checkpoint=last.pt", "input=photos"])
        raw = OmegaConf.to_container(composed, resolve=False)
        for key, value in leaves(raw):
            if isinstance(value, str) and built_from_a_path.search(value):
                assert key in PATH_KEYS, f"experiment={experiment}: {key}={value}"


def leaves(node, prefix=""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from leaves(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, node


@pytest.mark.parametrize("overrides,cores,jobs", [
    (["hydra/launcher=submitit_local", "runtime.threads=1"], 2, 2),
    (["hydra/launcher=submitit_local", "runtime.threads=2"], 8, 4),
    (["hydra/launcher=submitit_local", "runtime.threads=1", "hydra.launcher.tasks_per_node=2"], 8, 4),
    (["hydra/launcher=submitit_local"], 8, 1),  # torch's default threads: a thread per core
    (["hydra/launcher=submitit_local", "runtime.threads=4"], 2, 1),
    (["hydra/launcher=submitit_local", "hydra.sweeper.max_batch_size=3"], 2, 3),  # set by hand
    ([], 2, None),  # the basic launcher runs one job after another anyway
    (["hydra/launcher=submitit_slurm", "runtime.threads=1"], 2, None),  # the cluster's to schedule
])
def test_the_local_launcher_runs_as_many_jobs_at_once_as_the_cores_hold(overrides, cores, jobs, monkeypatch):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    monkeypatch.setattr(cli, "usable_cores", lambda: cores)
    for script, own in (("train", []), ("evaluate", ["checkpoint=last.pt"])):
        assert compose_config(script, [*overrides, *own], return_hydra_config=True).hydra.sweeper.max_batch_size == jobs


def test_composed_configs_take_such_paths_too(tmp_path):
    checkpoint = tmp_path / "T=2,seed=1" / "last.pt"
    checkpoint.parent.mkdir()
    checkpoint.touch()
    assert compose_config("evaluate", [f"checkpoint={checkpoint}"]).checkpoint == str(checkpoint)


@pytest.mark.slow
def test_a_checkpoint_that_does_not_fit_is_one_line_on_the_terminal_and_every_key_in_the_log(tmp_path):
    cfg = compose_config("train", ["model.ema.channels=32"])
    model = build_model(cfg.model, cfg.dataset.num_classes, load_pretrained=False)
    save_checkpoint({"model": model.state_dict(), "config": {"name": "wider"}}, tmp_path / "wider.pt")
    run_dir = tmp_path / "run"
    result = run_entry_point("evaluate.py", f"checkpoint={tmp_path / 'wider.pt'}", f"hydra.run.dir={run_dir}")
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


@pytest.mark.slow
def test_a_required_key_left_unset_is_printed_once_and_leaves_no_run_directory(tmp_path):
    run_dir = tmp_path / "run"
    result = run_entry_point("evaluate.py", f"hydra.run.dir={run_dir}")
    assert result.returncode == 2
    message = "checkpoint is not set: pass checkpoint=... on the command line"
    assert (result.stdout + result.stderr).count(message) == 1
    assert not run_dir.exists()  # refused as every config problem is: before anything is kept


@pytest.mark.slow
def test_a_refused_config_is_printed_once_and_leaves_no_run_directory(tmp_path):
    run_dir = tmp_path / "run"
    result = run_entry_point("train.py", "eval.stride=100", f"hydra.run.dir={run_dir}")
    assert result.returncode == 2
    assert (result.stdout + result.stderr).count("eval.stride") == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert not run_dir.exists()
