"""The ``>>>`` examples in the docstrings of the detector interface and the label mapping run and pass.

(``tests/test_docstrings.py`` runs those of ``selection/``; this list is kept apart to avoid merge conflicts.)
"""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["model.dataset", "model.detector", "model.yolo", "model.tiling", "backend.labelconfig"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name}: no docstring example found"
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} docstring examples failed"
