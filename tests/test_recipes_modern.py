"""torchvision V2 and timm racm recipe configs train a few steps on mocked data, with their
augmentation policies, repeats, Mixup / CutMix and EMA (tests/recipe_run.py)."""

import pytest
from recipe_run import MODERN, run_recipe

pytestmark = pytest.mark.e2e  # about 30 s each (compilation): see pyproject.toml


@pytest.mark.parametrize("name", MODERN)
def test_modern_recipe_trains(name, tmp_path):
    run_recipe(name, tmp_path)
