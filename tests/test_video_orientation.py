"""falco.video.orientation: turning frames upright and back, by hand-made arrays."""

from __future__ import annotations

import numpy as np
import pytest

from falco.errors import InputError
from falco.video.orientation import check_rotation, stored, upright, upright_size


def test_upright_turns_counter_clockwise_and_stored_undoes_it():
    frame = np.arange(2 * 3).reshape(2, 3)[..., None]  # [[0 1 2], [3 4 5]]
    assert upright(frame, 90)[..., 0].tolist() == [[2, 5], [1, 4], [0, 3]]  # a quarter turn to the left
    assert upright(frame, 180)[..., 0].tolist() == [[5, 4, 3], [2, 1, 0]]
    assert upright(frame, 270)[..., 0].tolist() == [[3, 0], [4, 1], [5, 2]]
    assert upright(frame, 0) is frame
    for r in (0, 90, 180, 270):
        assert np.array_equal(stored(upright(frame, r), r), frame)
        assert upright(frame, r).flags["C_CONTIGUOUS"]


def test_sizes_and_angles():
    assert upright_size(640, 360, 90) == (360, 640) and upright_size(640, 360, 180) == (640, 360)
    assert check_rotation(None) == 0 and check_rotation(-90) == 270 and check_rotation(450.0) == 90
    for bad in (45, 90.5):
        with pytest.raises(InputError, match="only multiples of 90"):
            check_rotation(bad)
