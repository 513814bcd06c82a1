"""Running the real ComfyUI host for tests and the benchmark: in-process imports and a server subprocess.

Used only with COMFYUI_PATH set and the host's own venv python (see tests/host/conftest.py).
"""
from __future__ import annotations

import importlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
# Any folder name must work: the host imports the pack as a package named after its folder.
PACK_FOLDER_NAME = "my controlnet-pack (test copy)"
IN_PROCESS_PACK = "controlnet_pack_in_process"
WEIGHTS_CACHE = Path(os.environ.get("CONTROLNET_PACK_WEIGHTS_CACHE",
                                    Path(tempfile.gettempdir()) / "controlnet-pack-host-weights"))


def comfyui_path() -> Path | None:
    value = os.environ.get("COMFYUI_PATH")
    return Path(value) if value else None


def import_comfy(path: Path) -> None:
    """Import the host's modules in this process, forced onto the CPU (no CUDA probing)."""
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    saved = sys.argv
    sys.argv = [saved[0], "--cpu"]  # the host parses sys.argv on import; pytest's own flags would fail it
    try:
        import comfy.options

        comfy.options.enable_args_parsing()
        import comfy.model_management  # noqa: F401
        import folder_paths  # noqa: F401
    finally:
        sys.argv = saved


def host_for_bench(model_folders: bool = True) -> dict[str, Path]:
    """A bench script's host, in this process: the host's modules (from COMFYUI_PATH; without it the
    script exits saying how to run it), the random-weight test files (weights.ensure_weights) and,
    with `model_folders`, the host's checkpoints and controlnet folders pointed at them. Returns the
    files by key."""
    path = comfyui_path()
    if path is None:
        sys.exit("set COMFYUI_PATH to a ComfyUI tree and run with the host's venv python")
    import_comfy(path)
    import weights  # beside this file

    files = weights.ensure_weights(WEIGHTS_CACHE)
    if model_folders:
        import folder_paths

        folder_paths.add_model_folder_path("checkpoints", str(files["checkpoint"].parent))
        folder_paths.add_model_folder_path("controlnet", str(files["pose"].parent))
    return files


def import_pack_in_process():
    """The pack imported like the host does (a package named after an arbitrary folder)."""
    if IN_PROCESS_PACK not in sys.modules:
        spec = importlib.util.spec_from_file_location(IN_PROCESS_PACK, REPO_ROOT / "__init__.py",
                                                      submodule_search_locations=[str(REPO_ROOT)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[IN_PROCESS_PACK] = module
        spec.loader.exec_module(module)
    return sys.modules[IN_PROCESS_PACK]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class HostServer:
    """A ComfyUI server subprocess on 127.0.0.1 with a private base directory."""

    def __init__(self, comfy: Path, base: Path, python: str = sys.executable, extra_args: tuple[str, ...] = ()):
        self.comfy, self.base, self.port = comfy, base, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base / "server.log"
        self.client_id = uuid.uuid4().hex
        command = [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
                   "--base-directory", str(base), "--disable-auto-launch", "--database-url", "sqlite:///:memory:",
                   *extra_args]
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(command, cwd=comfy, stdout=self._log, stderr=subprocess.STDOUT,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 240.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"host exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            try:
                self.get("/system_stats")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        raise TimeoutError(f"host did not answer within {timeout} s:\n{self.log()[-4000:]}")

    def get(self, route: str):
        with urllib.request.urlopen(self.url + route, timeout=30) as response:
            return json.loads(response.read())

    def post(self, route: str, payload: dict) -> tuple[int, dict]:
        request = urllib.request.Request(self.url + route, data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                body = response.read()
                return response.status, json.loads(body) if body else {}  # /free answers with no body
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")

    def run_prompt(self, prompt: dict, timeout: float = 600.0) -> dict:
        """Queue an API-format prompt and wait. Returns {'ok', 'error', 'outputs', 'status', 'seconds'}."""
        started = time.time()
        status, answer = self.post("/prompt", {"prompt": prompt, "client_id": self.client_id})
        if status != 200:
            return {"ok": False, "error": json.dumps(answer), "outputs": {}, "status": None, "seconds": 0.0}
        prompt_id = answer["prompt_id"]
        deadline = time.time() + timeout
        while time.time() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                entry = history[prompt_id]
                state = entry["status"]
                if state.get("status_str") == "success":
                    return {"ok": True, "error": "", "outputs": entry.get("outputs", {}), "status": state,
                            "seconds": time.time() - started}
                messages = [m for m in state.get("messages", []) if m[0] == "execution_error"]
                error = "; ".join(f"{m[1].get('node_type')}: {m[1].get('exception_message')}" for m in messages)
                return {"ok": False, "error": error or json.dumps(state), "outputs": entry.get("outputs", {}),
                        "status": state, "seconds": time.time() - started}
            time.sleep(0.25)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout} s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


# Files as the example workflows name them (the usual download names), linked to the random weights.
MODEL_FILES = {"checkpoint": ("checkpoints", "v1-5-pruned-emaonly.safetensors"),
               "pose": ("controlnet", "control_v11p_sd15_openpose.safetensors"),
               "depth": ("controlnet", "control_v11f1p_sd15_depth.safetensors"),
               "sdxl": ("controlnet", "controlnet_sdxl_small_random.safetensors"),
               "t2i_full": ("controlnet", "t2iadapter_depth_sd15v2.safetensors"),
               "t2i_light": ("controlnet", "t2iadapter_color_sd14v1.safetensors"),
               "t2i_light_diffusers": ("controlnet", "t2iadapter_color_sd14v1_diffusers.safetensors"),
               "controlnext": ("controlnet", "controlnext_sd15_controlnet.safetensors"),
               "controlnext_unet": ("controlnet", "controlnext_sd15_unet_weight_increasements.safetensors"),
               "control_lora": ("controlnet", "control-lora-rank8-sd15-random.safetensors"),
               "lllite": ("controlnet", "controllllite_sd15_random.safetensors"),
               "lora": ("loras", "lora_sd15_random.safetensors")}


def prepare_base(base: Path, weights: dict[str, Path], images: dict[str, "object"] | None = None) -> Path:
    """A host base directory: our pack in custom_nodes/ under an odd folder name, the weights in models/."""
    (base / "custom_nodes").mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / PACK_FOLDER_NAME
    if not link.exists():
        link.symlink_to(REPO_ROOT, target_is_directory=True)
    for key, (folder, name) in MODEL_FILES.items():
        target = base / "models" / folder
        target.mkdir(parents=True, exist_ok=True)
        if not (target / name).exists():
            (target / name).symlink_to(weights[key])
    (base / "input").mkdir(exist_ok=True)
    (base / "output").mkdir(exist_ok=True)
    for name, image in (images or {}).items():
        image.save(base / "input" / name)
    return base


WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
# Nodes that exist only in the graph editor (notes, reroutes); the editor never sends them to /prompt.
FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """Convert a workflow in the graph editor's format (nodes + links, widgets by position) to the
    /prompt API format, using /object_info for the input order. Handles the seed widget's extra
    'control_after_generate' value, as the editor stores it."""
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) in (2, 4) or node["type"] in FRONTEND_ONLY:  # muted, bypassed, or a note
            continue
        info = object_info[node["type"]]
        inputs: dict = {}
        connected = {}
        for socket_ in node.get("inputs", []):
            if socket_.get("link") is not None:
                link = links[socket_["link"]]
                connected[socket_["name"]] = [str(link[1]), link[2]]
        values = list(node.get("widgets_values", []))
        for section in ("required", "optional"):
            for name, spec in info["input"].get(section, {}).items():
                kind = spec[0]
                options = spec[1] if len(spec) > 1 else {}
                is_widget = isinstance(kind, list) or kind in WIDGET_TYPES
                if is_widget and values:
                    value = values.pop(0)
                    if options.get("control_after_generate"):
                        values.pop(0)
                    if name not in connected:
                        inputs[name] = value
                if name in connected:
                    inputs[name] = connected[name]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt
