"""The README's code examples by name: the ```python block after a
``<!-- example: NAME ... -->`` marker, so the tests run exactly what the README prints."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def example(name: str) -> str:
    pattern = re.compile(r"<!-- example: " + re.escape(name) + r"[ >].*?-->\n```python\n(.*?)```", re.S)
    found = pattern.findall(README.read_text())
    assert len(found) == 1, f"README.md has {len(found)} examples named {name!r}"
    return found[0]
