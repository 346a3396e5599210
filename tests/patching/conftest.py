"""Fixtures shared by the patching tests: an amplified tiny model and random pairs."""

from __future__ import annotations

import pytest
from helpers import amplify, random_patching_data
from patching_common import POS, N


@pytest.fixture
def model(tiny_model):
    return amplify(tiny_model)


@pytest.fixture
def data():
    return random_patching_data(7, N, POS)
