"""Command-line overrides: paths that Hydra's grammar would reject are quoted."""

from hydra.core.override_parser.overrides_parser import OverridesParser

from emanet.cli import compose_config, quote_path_overrides


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
