"""check_config: a key the run would ignore is a one-line error naming it, why and the fix;
every packaged recipe passes."""

from __future__ import annotations

import pytest

from resnext_jax.errors import UsageError
from resnext_jax.train.config import check_config, default_config, get_config, list_configs

# (the setting that ignores the knob, the knob set away from its default, the setting that reads
# it, what the message says after the knob)
RULES = {
    "momentum_under_adamw": ({"optimizer.name": "adamw"}, ("optimizer.momentum", 0.8),
                             {"optimizer.name": "sgd"},
                             "does not apply to optimizer.name='adamw' (it uses b1/b2); remove "
                             "it or use name='sgd' or 'lars'"),
    "b1_under_sgd": ({"optimizer.name": "sgd"}, ("optimizer.b1", 0.8),
                     {"optimizer.name": "adamw"},
                     "does not apply to optimizer.name='sgd' (it uses momentum)"),
    "b2_under_lars": ({"optimizer.name": "lars"}, ("optimizer.b2", 0.99),
                      {"optimizer.name": "lamb"},
                      "does not apply to optimizer.name='lars' (it uses momentum)"),
    "trust_coefficient_under_sgd": ({"optimizer.name": "sgd"},
                                    ("optimizer.trust_coefficient", 0.02),
                                    {"optimizer.name": "lars"},
                                    "does not apply to optimizer.name='sgd'"),
    "decay_epochs_under_cosine": ({"optimizer.schedule": "cosine"},
                                  ("optimizer.decay_epochs", (10, 20)),
                                  {"optimizer.schedule": "step"},
                                  "does not apply to optimizer.schedule='cosine'"),
    "decay_factor_under_constant": ({"optimizer.schedule": "constant"},
                                    ("optimizer.decay_factor", 0.5),
                                    {"optimizer.schedule": "step"},
                                    "does not apply to optimizer.schedule='constant'"),
}


def _config(settings: dict, knob: tuple | None = None):
    config = default_config()
    config.update_from_flattened_dict({**settings, **dict([knob] if knob else [])})
    return config


@pytest.mark.parametrize("rule", RULES)
def test_a_knob_the_run_ignores_is_one_line_naming_it_and_the_fix(rule):
    ignoring, (key, value), _, says = RULES[rule]
    with pytest.raises(UsageError) as err:
        check_config(_config(ignoring, (key, value)))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{key}={value!r} {says}")
    assert "remove it" in message


@pytest.mark.parametrize("rule", RULES)
def test_the_same_knob_passes_where_it_is_read(rule):
    _, knob, reading, _ = RULES[rule]
    check_config(_config(reading, knob))


@pytest.mark.parametrize("rule", RULES)
def test_a_knob_left_at_its_default_passes_everywhere(rule):
    ignoring, _, _, _ = RULES[rule]
    check_config(_config(ignoring))


@pytest.mark.parametrize("key", ["optimizer.name", "optimizer.schedule"])
def test_an_unknown_optimizer_or_schedule_lists_the_choices(key):
    with pytest.raises(UsageError, match=rf"^{key}='nadam' is unknown; choose one of \w+, "):
        check_config(_config({key: "nadam"}))


@pytest.mark.parametrize("name", list_configs())
def test_every_packaged_recipe_passes(name):
    check_config(get_config(name))


def test_the_packaged_recipes_are_found():
    assert {"digits", "finetune", "synthetic", "resnext50_32x4d"} <= set(list_configs())
