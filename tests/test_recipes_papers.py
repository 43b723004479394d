"""The papers' recipe configs train a few steps on mocked data (tests/recipe_run.py)."""

import pytest
from recipe_run import MODERN, PAPERS, run_recipe

from resnext_jax import train

pytestmark = pytest.mark.e2e  # about 30 s each (compilation): see pyproject.toml


def test_every_training_recipe_is_tested():
    others = {"digits", "finetune", "synthetic"}  # tested end to end elsewhere
    assert set(train.list_configs()) - others == set(PAPERS + MODERN)


@pytest.mark.parametrize("name", PAPERS)
def test_paper_recipe_trains(name, tmp_path):
    run_recipe(name, tmp_path)
