"""The examples in the public entry points' docstrings run and give what they show."""

from __future__ import annotations

import doctest
import importlib

import pytest

# Modules whose docstring examples are part of the documentation; add a module here when you add examples.
MODULES = [
    "backend.bootstrap",
    "backend.bulk",
    "backend.calibration",
    "backend.export",
    "backend.report",
    "backend.score",
    "backend.storage",
    "bench.acceptance",
    "bench.wallclock",
    "formats.boxes",
    "formats.coco",
    "formats.images",
    "formats.labelstudio",
    "metrics.f1",
    "selection.batch",
    "selection.boxes",
    "selection.calibration",
    "selection.consensus",
    "selection.correction",
    "selection.lsm",
    "selection.rules",
    "selection.strategies",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.attempted > 0, f"{name}: no docstring examples found"
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} examples failed (output above)"
