"""Comments and docs point at the pack's own documentation, never at reference notes users don't have."""
from __future__ import annotations

import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# Notes the developers had beside the repository; a user never has them.
FOREIGN = re.compile(r"\b(?:FORMATS|SYSTEMS|HOST)\.md\b|\breference/|\.\./shared\b")
SCANNED = ["annotators", "nodes", "web", "bench", "tests", "example_workflows", "README.md", "__init__.py"]
SUFFIXES = {".py", ".md", ".js", ".json", ".txt", ".toml"}


def test_no_comment_or_doc_points_at_files_users_do_not_have():
    offenders = []
    for entry in SCANNED:
        root = REPO_ROOT / entry
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.suffix in SUFFIXES)
        for path in files:
            if path == Path(__file__).resolve():
                continue
            for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
                if FOREIGN.search(line):
                    offenders.append(f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()}")
    assert not offenders, "point at the pack's own docs instead:\n" + "\n".join(offenders)
