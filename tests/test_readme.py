"""The library example of docs/library.md runs as written."""

from __future__ import annotations

import re
from pathlib import Path
import pytest

pytestmark = pytest.mark.slow  # trains, submits, compiles or executes: left out of `make test-fast`

LIBRARY = Path(__file__).resolve().parents[1] / "docs" / "library.md"


def test_library_python_blocks_run():
    text = LIBRARY.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "docs/library.md should carry a runnable library example"
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, str(LIBRARY), "exec"), namespace)
        assert namespace["terms"].loss.shape == (16,)
        assert namespace["images"].shape == (16, 1, 8, 8)
