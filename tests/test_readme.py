"""The README's Python snippets run as written, so they cannot rot. Snippets that name a Hub repo
("user/...") need the network and are only compiled."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_has_python_snippets():
    assert len(SNIPPETS) >= 3


@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_readme_snippet_runs(index, tmp_path, monkeypatch):
    code = SNIPPETS[index]
    compiled = compile(code, f"README.md snippet {index}", "exec")
    if "user/" in code:
        pytest.skip("needs the Hub; compiled only")
    monkeypatch.chdir(tmp_path)
    exec(compiled, {"__name__": "__readme__"})
