"""The test dependencies are installed where the suite is meant to run in full.

Some tests import an independent reference with ``pytest.importorskip`` (nodepy, momentumnet,
Triton) so that the suite still runs on the GPU machine, whose image lacks some of them. On the
CPU machines that run the README's test command, a missing one would skip those tests without a
word: this fails instead.
"""

import importlib

import pytest
import torch

DECLARED = ["nodepy", "momentumnet", "triton", "hypothesis", "sklearn", "torchdiffeq"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU image carries its own packages")
@pytest.mark.parametrize("name", DECLARED)
def test_declared_test_dependency_is_installed(name):
    importlib.import_module(name)
