"""The `search` config group (conf/search/: Optuna searches as presets, `fmsweep -m search=fc_lr_l2`) and a search's
space (fmsweep.sweep.space): hydra.sweeper.params with the command line's overrides, the samplers, and the values
as people read them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from conftest import CONF, ROOT
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from fmsweep.errors import UserError
from fmsweep.sweep import prelaunch, space

SEARCH_SWEEPER = "hydra_plugins.fmsweep_sweeper.search_sweeper.SearchSweeper"
GRID_SWEEPER = "hydra_plugins.fmsweep_sweeper.reporting_sweeper.ReportingSweeper"
# every search preset (none, the group's default, is no search)
SEARCHES = sorted(p.stem for p in (CONF / "search").glob("*.yaml") if p.stem != "none")
LR = "tag(log,interval(1e-4,1e-2))"


def hydra_config(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


def test_a_search_preset_chooses_the_optuna_sweeper_its_space_and_its_model() -> None:
    cfg = hydra_config("search=fc_lr_l2")
    assert cfg.hydra.sweeper._target_ == SEARCH_SWEEPER
    assert set(cfg.hydra.sweeper.params) == {"optimizer.lr", "reg.l2"}
    assert cfg.hydra.runtime.choices.model == "fc" and cfg.model._target_ == "fmsweep.models.FullyConnected"
    fixed, searched = space.split([], cfg.hydra.sweeper.params)
    assert fixed == [] and set(searched) == {"optimizer.lr", "reg.l2"}
    assert all(isinstance(d, FloatDistribution) and d.log for d in searched.values())


def test_without_a_search_a_sweep_is_a_grid_and_the_command_line_still_chooses_the_sweeper() -> None:
    assert hydra_config().hydra.sweeper._target_ == GRID_SWEEPER
    assert hydra_config("hydra/sweeper=optuna").hydra.sweeper._target_ == SEARCH_SWEEPER
    assert hydra_config("search=fc_lr_l2", "hydra/sweeper=grid").hydra.sweeper._target_ == GRID_SWEEPER


def test_the_command_line_wins_over_the_params() -> None:
    params = OmegaConf.create({"optimizer.lr": LR, "reg.l2": "tag(log,interval(1e-6,1e-2))", "seed": 1})
    # a sweep replaces the param's range
    fixed, searched = space.split(["epochs=3", "reg.l2=interval(0,0.1)"], params)
    assert fixed == ["seed=1", "epochs=3"]  # params' fixed overrides first
    assert searched["reg.l2"] == FloatDistribution(0.0, 0.1) and searched["optimizer.lr"].log
    # a plain value fixes the key: it is no longer searched
    fixed, searched = space.split(["seed=2", "reg.l2=0.001"], params)
    assert fixed == ["seed=2", "reg.l2=0.001"] and list(searched) == ["optimizer.lr"]
    with pytest.raises(UserError, match="needs a search space"):
        space.split(["optimizer.lr=0.01"], {"optimizer.lr": LR})


def test_params_take_what_the_command_line_says_and_lists_as_choices() -> None:
    params = OmegaConf.create(
        {
            "model": ["fc", "linear"],
            "model.hidden": [[32], [64, 64]],
            "seed": "range(1,4)",
            "optimizer": "adam,sgd",
            "epochs": 3,
            "optimizer.nesterov": True,
        }
    )
    fixed, searched = space.split(["optimizer.lr=choice(0.1,0.01)"], params)
    assert fixed == ["epochs=3", "optimizer.nesterov=True"]
    assert searched == {
        "model": CategoricalDistribution(["fc", "linear"]),
        "model.hidden": CategoricalDistribution(["[32]", "[64,64]"]),
        "seed": IntDistribution(1, 3),
        "optimizer": CategoricalDistribution(["adam", "sgd"]),
        "optimizer.lr": CategoricalDistribution([0.1, 0.01]),
    }
    with pytest.raises(UserError, match="needs a search space"):
        space.split([], None)


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("interval(1e-4", "hydra.sweeper.params.optimizer.lr: optimizer.lr=interval(1e-4: no viable alternative"),
        ("interval(1,0)", "hydra.sweeper.params.optimizer.lr: optimizer.lr=interval(1,0): not a search space"),
        ([], "hydra.sweeper.params.optimizer.lr: optimizer.lr=choice(): ValueError while evaluating 'choice()': empty"),
    ],
)
def test_a_bad_param_is_one_line_naming_it(value: object, words: str) -> None:
    with pytest.raises(UserError) as error:
        space.split([], {"optimizer.lr": value})
    assert str(error.value).startswith(words) and "\n" not in str(error.value)


@pytest.mark.parametrize("name", space.SAMPLERS)
def test_every_sampler_draws_from_the_space(name: str) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    searched = space.split([f"optimizer.lr={LR}", "model=fc,linear", "seed=range(3)"])[1]
    study = optuna.create_study(sampler=space.make_sampler(name, seed=0))
    for _ in range(3):
        trial = study.ask(searched)
        study.tell(trial, trial.params["optimizer.lr"] * (1 + trial.params["seed"]))
    assert len(study.trials) == 3 and all(1e-4 <= t.params["optimizer.lr"] <= 1e-2 for t in study.trials)
    again = optuna.create_study(sampler=space.make_sampler(name, seed=0))
    assert again.ask(searched).params == study.trials[0].params  # seeded


def test_an_unknown_sampler_is_refused_with_the_names_it_takes() -> None:
    with pytest.raises(UserError, match=r"^hydra.sweeper.sampler must be one of tpe, random, nsgaii, got 'cmaes'$"):
        space.make_sampler("cmaes", 0)


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (0.006431172050131994, "0.006431"),
        (1.2345678e-05, "1.235e-05"),
        (3.0, "3.0"),
        (-2.5, "-2.5"),
        (1234.0, "1234.0"),
        (123456.7, "1.235e+05"),
        (float("inf"), "inf"),
        (3, "3"),
        (True, "True"),
        ("fc", "fc"),
        ("[32]", "[32]"),
    ],
)
def test_readable_writes_floats_to_four_significant_digits(value: object, shown: str) -> None:
    assert space.readable(value) == shown


def test_display_overrides_rounds_long_floats_and_leaves_the_rest_as_written() -> None:
    given = [
        "optimizer.lr=0.006431172050131994",
        "+reg.l2=1.2345678e-05",
        "model@net=fc",
        "seed=3",
        "~aug",
        "reg.l2=1e-3",
        "epochs=3.0",
        "data.root=/x/y.z",
        "s='0.123456789'",
        "model.hidden=[0.123456789]",
        "x=(",
    ]
    assert space.display_overrides(given) == ["optimizer.lr=0.006431", "+reg.l2=1.235e-05", *given[2:]]


@pytest.mark.parametrize("preset", SEARCHES)
def test_every_search_preset_passes_the_checks_before_launch(preset: str, data_root: Path, tmp_path: Path) -> None:
    """The real command line composes the preset with the search's sweeper; its space's corners pass the checks
    that a search makes before its study exists (as run_search does), without training."""
    proc = subprocess.run(
        [sys.executable, "-m", "fmsweep", f"search={preset}", "--cfg", "hydra"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert OmegaConf.create(proc.stdout).hydra.sweeper._target_ == SEARCH_SWEEPER
    arguments = [f"search={preset}", f"data.root={data_root}", "data.download=false", "device=cpu"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3", job_name="fmsweep"):
        hydra = GlobalHydra.instance().hydra
        assert hydra is not None
        loader = hydra.config_loader
        master = loader.load_configuration(
            "config", [f"hydra.sweep.dir={tmp_path}", "hydra.mode=MULTIRUN", *arguments], run_mode=RunMode.MULTIRUN
        )
        fixed, searched = space.split(arguments, master.hydra.sweeper.params)
        jobs = space.corners(fixed, searched)
        checked = prelaunch.check_jobs(loader, master, jobs, names=[space.display_overrides(j) for j in jobs])
    assert len(checked) == len(jobs) >= 2 and len(searched) >= 2
    assert all(c.hydra.runtime.choices.search == preset for c in checked)


def test_the_help_lists_the_search_group() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fmsweep", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert f"search: {', '.join(sorted([*SEARCHES, 'none']))}\n" in proc.stdout
