"""Fixtures of the LGM tests (the backbones themselves are in lgm_helpers, which also registers
the ``lgmtest`` backbone family)."""

import pytest

from lgm_helpers import smooth_backbone, tiny_backbone


@pytest.fixture(scope="session")
def tiny():
    return tiny_backbone()


@pytest.fixture(scope="session")
def smooth():
    return smooth_backbone()
