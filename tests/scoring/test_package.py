"""cello.scoring is one public namespace over modules with one job each.

    .venv/bin/pytest tests/scoring/test_package.py -q
"""

from __future__ import annotations

import cello.scoring as scoring
from cello.scoring import _chance, _metrics, _repair, _reward


def test_the_package_exports_exactly_the_public_names_of_its_modules():
    modules = (_reward, _repair, _metrics, _chance)
    assert sorted(scoring.__all__) == sorted(name for m in modules for name in m.__all__)
    for m in modules:
        for name in m.__all__:
            assert getattr(scoring, name) is getattr(m, name), name


def test_one_name_per_idea():
    # the validity diagnostic is `valid_reward`; `format_reward` is GRPO's layout reward (cello.train.grpo)
    assert not hasattr(scoring, "format_reward")
