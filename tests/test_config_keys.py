"""A key the config schema does not have, a value its rule refuses, or a config group
option that does not exist is refused in one line before Hydra composes anything
(emanet/config_keys.py): Hydra itself would add ``+schedule.iteratons=5`` and train with
the default, or stop with a message of several lines and exit status 1."""

import os
import re
import subprocess
import sys

import pytest
from tests_paths import REPO

from emanet import reproduce
from emanet.cli import CONFIG_DIR, compose_config
from emanet.config_keys import check_command_line
from emanet.config_schema import ADDED_KEYS
from emanet.errors import ConfigError

HINT = "(python train.py --cfg job lists every setting)"


def check(argv, config_name="train"):
    check_command_line(config_name, argv, CONFIG_DIR)


@pytest.mark.parametrize("override", ["+schedule.iteratons=5", "schedule.iteratons=5", "++schedule.iteratons=5",
                                      "~schedule.iteratons"])
def test_a_typo_in_a_key_is_refused_naming_the_closest_key(override):
    with pytest.raises(ConfigError) as error:
        check([override])
    assert str(error.value) == f"schedule.iteratons is not a setting: did you mean schedule.iterations? {HINT}"


def test_a_typo_inside_a_sweep_is_refused_and_a_lone_leaf_finds_its_group():
    with pytest.raises(ConfigError, match=r"^schedule\.iteratons is not a setting: did you mean schedule\.iterations"):
        check(["-m", "schedule.iteratons=1,2"])
    with pytest.raises(ConfigError, match=r"^model\.ema\.train_stagez is not a setting: did you mean "
                                          r"model\.ema\.train_stages\?"):
        check(["--multirun", "experiment=voc_emanet512,demo", "model.ema.train_stagez=range(1,4)"])
    with pytest.raises(ConfigError, match=r"^lr is not a setting: did you mean optim\.lr\?"):
        check(["lr=0.1"])


def test_an_unknown_group_option_is_refused_listing_the_options():
    with pytest.raises(ConfigError) as error:
        check(["experiment=nonexistent", "checkpoint=x"], "evaluate")
    message = str(error.value)
    assert message.startswith("experiment=nonexistent is not an option of experiment: the options are ")
    options = message.partition("the options are ")[2].split(", ")
    assert {"voc_emanet512", "demo"} <= set(options) and "_common" not in options
    with pytest.raises(ConfigError) as error:
        check(["model=foo"])
    assert str(error.value) == ("model=foo is not an option of model: the options are deeplabv3, deeplabv3plus, "
                                "emanet, emanet_mmseg, fcn, nonlocal, psanet")
    with pytest.raises(ConfigError, match=r"^eval=ms_fllip is not an option of eval: did you mean ms_flip\?"):
        check(["-m", "eval=ss,ms_fllip"])
    with pytest.raises(ConfigError, match=r"^hydra/launcher=nope is not an option of hydra/launcher: .*submitit_local"):
        check(["-m", "hydra/launcher=nope"])


@pytest.mark.parametrize("argv", [
    [],
    ["experiment=voc_emanet512", "schedule.iterations=1000", "optim.lr=0.005", "eval=ss"],
    ["~experiment", "name=plain", "dataset=voc_aug", "model=psanet", "model.psa.attention_size=17"],
    ["experiment=voc_psanet", "model.psa.channels=256"],  # declared by the experiment's model only
    ["hydra.run.dir=somewhere", "hydra.job.chdir=false", "hydra/launcher=submitit_local"],
    ["-m", "+iteration_cell={train:1,eval:1},{train:1,eval:2}", "model.ema.train_stages=${iteration_cell.train}"],
    ["-m", "model.ema.train_stages=range(1,4)", "seed=0,1", "experiment=glob(voc_*)", "++model.aux.weight=0.4"],
    ["--cfg", "job", "dataset.crop_size=[512,1024]", "model.backbone={depth:50}"],
    ["+schedule.iteratons=5", "--help"],  # a help page or Hydra's information is shown as it is
    ["--info", "defaults", "experiment=nonexistent"],
    ["experiment=demo", "+experiment=demo"],  # not a key or option problem: Hydra says what it is
])
def test_correct_overrides_pass_untouched(argv):
    given = list(argv)
    check(argv)
    assert argv == given


def test_a_key_is_known_from_the_schema_whichever_experiment_is_chosen():
    check(["experiment=voc_psanet", "model.psa.attention_size=17"])
    check(["-m", "experiment=voc_emanet512,voc_psanet", "model.psa.attention_size=17"])
    with pytest.raises(ConfigError) as error:
        check(["experiment=voc_emanet512", "+model.psa.attention_sise=17"])
    assert str(error.value) == ("model.psa.attention_sise is not a setting: did you mean model.psa.attention_size? "
                                "(python train.py experiment=voc_emanet512 --cfg job lists every setting)")


@pytest.mark.parametrize(("argv", "message"), [
    (["schedule.iterations=abc"], "schedule.iterations=abc: expected an integer >= 1"),
    (["-m", "optim.lr=0.1,-1"], "optim.lr=-1: expected a number > 0"),
    (["runtime.threads=null", "eval.flip=maybe"], "eval.flip=maybe: expected true or false"),
])
def test_a_value_the_schema_refuses_is_refused_before_hydra_types_it(argv, message):
    with pytest.raises(ConfigError) as error:
        check(argv)
    assert str(error.value) == message


def test_every_command_reproduce_paper_launches_passes(tmp_path):
    # Its smoke run narrows every head with ++model.psa.channels=... and the like (keys that
    # another head's config declares), and the iteration table's evaluations add
    # +iteration_cell={train:T,eval:T'} (ADDED_KEYS).
    demo = compose_config("train", ["experiment=demo"])
    for smoke in (None, reproduce.smoke_overrides(demo, 2, side_by_side=True)):
        runs = reproduce.paper_runs(tmp_path, reproduce.PARTS, ["data_root=data"], smoke, 2)
        sweeps = reproduce.unfinished_sweeps(runs)
        assert {sweep.runs[0].script for sweep in sweeps} == {"train", "evaluate"}
        for sweep in sweeps:
            command = sweep.command(["hydra/launcher=submitit_local"])
            check(command[2:], sweep.runs[0].script)
    with pytest.raises(ConfigError, match=r"^iteration_cell is not in the config: add it with \+iteration_cell=\.\.\."):
        check(["iteration_cell={train:1,eval:1}", "checkpoint=x"], "evaluate")


def test_each_added_key_is_read_where_it_says():
    for key, path in ADDED_KEYS.items():
        text = (REPO / path).read_text()
        assert "${" + key + "." in text or "${" + key + "}" in text, (key, path)


@pytest.mark.slow
@pytest.mark.parametrize(("script", "argv"), [
    ("train.py", ["+schedule.iteratons=5"]),
    ("evaluate.py", ["experiment=nonexistent", "checkpoint=x"]),
])
def test_the_entry_points_refuse_in_one_line_with_status_2_and_write_nothing(tmp_path, script, argv):
    result = subprocess.run(
        [sys.executable, str(REPO / script), *argv], cwd=tmp_path, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert re.fullmatch(r"error: [^\n]+\n", result.stderr), result.stderr
    assert list(tmp_path.iterdir()) == []  # no runs/<name>/<date> of a run that never started
