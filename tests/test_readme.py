"""The README's library example runs as written."""

from __future__ import annotations

import re
from pathlib import Path
import pytest

pytestmark = pytest.mark.slow  # trains, submits, compiles or executes: left out of `make test-fast`


def test_readme_python_blocks_run():
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "the README should carry a runnable library example"
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, "README.md", "exec"), namespace)
        assert namespace["terms"].loss.shape == (16,)
        assert namespace["images"].shape == (16, 1, 8, 8)
