"""The pack's root __init__ imports cleanly without ComfyUI, under any folder name."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

IMPORT_AS_HOST_DOES = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("{name}", "{root}/__init__.py", submodule_search_locations=["{root}"])
module = importlib.util.module_from_spec(spec)
sys.modules["{name}"] = module
spec.loader.exec_module(module)
print(len(module.NODE_CLASS_MAPPINGS), len(module.NODE_DISPLAY_NAME_MAPPINGS), module.WEB_DIRECTORY)
print(module.HOST_UNAVAILABLE_REASON)
"""


def test_imports_without_comfyui_and_says_why(tmp_path):
    # A fresh interpreter, the pack loaded as a package named like an arbitrary clone folder.
    code = IMPORT_AS_HOST_DOES.format(name="some_clone_folder_name", root=REPO_ROOT)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    counts, reason = result.stdout.splitlines()[:2]
    assert counts == "0 0 ./web"
    assert "ComfyUI is not importable" in reason and "comfy" in reason


def test_a_real_import_error_in_the_pack_is_not_hidden(tmp_path):
    # Copy the root __init__ beside a broken nodes package: the error must surface, not read as "no host".
    (tmp_path / "pack" / "nodes").mkdir(parents=True)
    (tmp_path / "pack" / "__init__.py").write_text((REPO_ROOT / "__init__.py").read_text())
    (tmp_path / "pack" / "nodes" / "__init__.py").write_text("import a_module_that_does_not_exist\n")
    code = IMPORT_AS_HOST_DOES.format(name="pack", root=tmp_path / "pack")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode != 0 and "a_module_that_does_not_exist" in result.stderr


def test_imports_as_a_lone_module_when_the_folder_name_is_not_an_identifier(tmp_path):
    # pytest imports the root __init__.py this way when the clone folder is e.g. "controlnet-pack".
    code = ("import importlib.util\n"
            f"spec = importlib.util.spec_from_file_location('__init__', {str(REPO_ROOT / '__init__.py')!r})\n"
            "module = importlib.util.module_from_spec(spec)\n"
            "spec.loader.exec_module(module)\n"
            "print(len(module.NODE_CLASS_MAPPINGS), module.HOST_UNAVAILABLE_REASON)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("0 imported as a plain module")
