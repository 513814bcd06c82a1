"""The front-end extension: valid JavaScript that imports the host's app from where the host serves it."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

WEB = Path(__file__).resolve().parent.parent / "web"


def test_web_directory_is_exported():
    # The root __init__ names ./web; the host serves its files under /extensions/<pack folder>/.
    text = (WEB.parent / "__init__.py").read_text()
    assert 'WEB_DIRECTORY = "./web"' in text


def test_app_import_climbs_to_the_server_root():
    # web/js/x.js is served at /extensions/<pack>/js/x.js, so /scripts/app.js is three levels up.
    for path in WEB.rglob("*.js"):
        depth = len(path.relative_to(WEB).parts) - 1  # folders below web/
        for target in re.findall(r'from "([^"]+/scripts/app\.js)"', path.read_text()):
            assert target == "../" * (depth + 2) + "scripts/app.js", f"{path.name}: {target}"


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed: JavaScript syntax not checked")
def test_javascript_parses(tmp_path):
    for path in WEB.rglob("*.js"):
        module = tmp_path / (path.stem + ".mjs")  # parse as an ES module, as the browser does
        module.write_text(path.read_text())
        result = subprocess.run(["node", "--check", str(module)], capture_output=True, text=True)
        assert result.returncode == 0, f"{path}: {result.stderr}"
