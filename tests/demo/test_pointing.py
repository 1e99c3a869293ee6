"""Pointing game and mass-in-box on hand-made attribution grids with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.demo.evaluate import (
    box_fraction,
    centre_prior_hit,
    centres_in_box,
    mass_in_box,
    pointing_hit,
)


def _grid_with_peak(i: int, j: int) -> np.ndarray:
    m = np.full((8, 8), -0.5)
    m[1, 1] = 0.4
    m[i, j] = 3.0
    return m


def test_pointing_hit_uses_the_patch_centre():
    m = _grid_with_peak(2, 5)  # patch (2, 5): pixels x 40..47, y 16..23, centre (44, 20)
    assert pointing_hit(m, [40, 16, 48, 24], 64)
    assert pointing_hit(m, [44, 20, 45, 21], 64)  # a box holding just the centre pixel
    assert not pointing_hit(m, [45, 16, 60, 30], 64)  # starts right of the centre
    assert not pointing_hit(m, [30, 10, 44, 30], 64)  # x1 is exclusive
    assert not pointing_hit(m, [8, 8, 16, 16], 64)  # the second-highest patch does not count


def test_centres_in_box_counts_by_hand():
    inside = centres_in_box([10, 0, 30, 9], (8, 8), 64)  # x centres 12, 20, 28; y centre 4
    assert inside.sum() == 3 and inside[0, 1:4].all()


def test_mass_in_box_by_hand():
    m = np.zeros((8, 8))
    m[0, 0] = 2.0  # pixels [0,8) x [0,8)
    m[0, 1] = 1.0  # pixels [8,16) x [0,8)
    m[5, 5] = 1.0  # far away
    m[3, 3] = -7.0  # negative mass is ignored
    box = [0, 0, 12, 8]  # all of patch (0,0), half of patch (0,1)
    assert mass_in_box(m, box, 64) == pytest.approx((2.0 + 0.5) / 4.0)
    frac = box_fraction(box, (8, 8), 64)
    assert frac[0, 0] == 1.0 and frac[0, 1] == 0.5 and frac.sum() == 1.5
    assert mass_in_box(-np.ones((8, 8)), box, 64) == 0.0


def test_centre_prior_shares_the_four_central_patches():
    # centres nearest the image centre: (28, 28), (36, 28), (28, 36), (36, 36)
    assert centre_prior_hit([24, 24, 40, 40], (8, 8), 64) == 1.0
    assert centre_prior_hit([30, 30, 40, 40], (8, 8), 64) == 0.25
    assert centre_prior_hit([0, 0, 20, 20], (8, 8), 64) == 0.0
