"""The environments' docstring examples (gymnasium-style `## Example` sections) run as written."""

import doctest

import pytest
from dpo_plugin_envs import completion, preference_pairs


@pytest.mark.parametrize("module", [completion, preference_pairs], ids=lambda module: module.__name__)
def test_every_docstring_example_runs_as_written(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
