"""The code examples of README.md and docs/*.md run as written.

Every ```python block of a page runs, in order, in one fresh interpreter (so a later block may
use an earlier one's names), in a temporary working directory. A page whose examples take long
says so with ``<!-- docs-test: slow -->``; one whose blocks are not meant to run alone
(fragments of a larger script) says ``<!-- docs-test: skip -->`` and why.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _params():
    for page in PAGES:
        text = page.read_text()
        blocks = BLOCK.findall(text)
        if not blocks or "<!-- docs-test: skip" in text:
            continue
        marks = [pytest.mark.slow] if "<!-- docs-test: slow -->" in text else []
        yield pytest.param(page, blocks, id=page.name, marks=marks)


@pytest.mark.parametrize("page, blocks", list(_params()))
def test_examples_run(page, blocks, tmp_path):
    script = "\n\n".join(blocks)
    env = {**os.environ, "MPLBACKEND": "Agg"}
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"{page.name}:\n{run.stderr[-3000:]}"


def test_every_page_with_examples_is_collected():
    assert any(page.name == "README.md" for page, *_ in
               (p.values for p in _params()))
