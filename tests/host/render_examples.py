"""Render the example workflows in the real graph editor: thumbnails, and node rectangles as drawn.

    COMFYUI_PATH=/path/to/ComfyUI /path/to/host-venv/bin/python tests/host/render_examples.py [--check-only]

Starts the host with the pack (models folders filled with empty stand-in files, so the editor
shows no missing-model dialog), opens it in headless Chromium (`chromium` on PATH, driven over the
DevTools protocol with aiohttp from the host's venv), loads each `example_workflows/*.json`, and:

- prints every node's rectangle as the editor lays it out (title bar included) and fails if two
  overlap at the default zoom: the same rule tests/test_example_workflows.py checks without a browser;
- writes `example_workflows/<name>.jpg`, the thumbnail the host's template browser shows.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import host_env  # noqa: E402

EXAMPLES = host_env.REPO_ROOT / "example_workflows"
VIEWPORT = (1600, 1000)
THUMBNAIL_WIDTH = 640
SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Workflow.ShowMissingModelsWarning": False,
            "Comfy.Validation.Workflows": True, "Comfy.Minimap.Visible": False, "Comfy.Graph.CanvasInfo": False,
            "Comfy.NodeBadge.NodeSourceBadgeMode": "None", "LiteGraph.Canvas.MinFontSizeForLOD": 0}
# The part of the window the graph is fitted into for the thumbnail: clear of the side bar, the
# tabs and the run button that the editor draws over the canvas.
SHOT = {"x": 70, "y": 100, "width": 1500, "height": 880}

LOAD_AND_MEASURE = """
(async () => {
  const workflow = %s;
  await window.app.loadGraphData(workflow, true, true, "example");
  await new Promise((resolve) => setTimeout(resolve, 800));
  const nodes = window.app.graph._nodes.map((node) => ({
    id: node.id, type: node.type, title: node.title,
    bounding: Array.from(node.getBounding ? node.getBounding() : [node.pos[0], node.pos[1] - 30, node.size[0], node.size[1] + 30]),
    pos: Array.from(node.pos), size: Array.from(node.size), minimum: Array.from(node.computeSize()),
  }));
  return JSON.stringify({nodes, missing: (window.app.graph._nodes.filter((n) => n.has_errors).map((n) => n.type))});
})()
"""

FIT_VIEW = """
(() => {
  const shot = %s;
  const canvas = window.app.canvas;
  let [x0, y0, x1, y1] = [Infinity, Infinity, -Infinity, -Infinity];
  for (const node of window.app.graph._nodes) {
    const b = node.getBounding();
    x0 = Math.min(x0, b[0]); y0 = Math.min(y0, b[1]); x1 = Math.max(x1, b[0] + b[2]); y1 = Math.max(y1, b[1] + b[3]);
  }
  const margin = 20;
  const scale = Math.min((shot.width - 2 * margin) / (x1 - x0), (shot.height - 2 * margin) / (y1 - y0));
  const width = (x1 - x0) * scale + 2 * margin, height = (y1 - y0) * scale + 2 * margin;
  // screen = (graph + offset) * scale: put the graph's top-left corner at the shot's top-left (+ margin)
  canvas.ds.scale = scale;
  canvas.ds.offset = [(shot.x + margin) / scale - x0, (shot.y + margin) / scale - y0];
  canvas.setDirty(true, true);
  canvas.draw(true, true);
  return JSON.stringify({x: shot.x, y: shot.y, width, height});
})()
"""


def overlaps(nodes: list[dict]) -> list[str]:
    found = []
    for index, a in enumerate(nodes):
        ax, ay, aw, ah = a["bounding"]
        for b in nodes[index + 1:]:
            bx, by, bw, bh = b["bounding"]
            if ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah:
                found.append(f"{a['type']} #{a['id']} {a['bounding']} overlaps {b['type']} #{b['id']} {b['bounding']}")
    return found


class DevTools:
    def __init__(self, websocket):
        self.websocket, self.next_id = websocket, 0

    async def call(self, method: str, **params):
        self.next_id += 1
        await self.websocket.send_json({"id": self.next_id, "method": method, "params": params})
        while True:
            message = await self.websocket.receive_json(timeout=120)
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    async def evaluate(self, expression: str):
        result = await self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(json.dumps(result["exceptionDetails"])[:2000])
        return result["result"].get("value")


async def render(url: str, check_only: bool) -> int:
    import aiohttp
    from PIL import Image

    port = host_env.free_port()
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    browser = subprocess.Popen(
        [shutil.which("chromium") or "chromium", "--headless=new", "--no-sandbox", "--disable-gpu",
         f"--remote-debugging-port={port}", f"--user-data-dir={profile}",
         f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    failures = 0
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(100):
                try:
                    async with session.get(f"http://127.0.0.1:{port}/json/list") as response:
                        pages = [p for p in await response.json() if p["type"] == "page"]
                        if pages:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.2)
            async with session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0) as websocket:
                tools = DevTools(websocket)
                await tools.call("Page.enable")
                await tools.call("Emulation.setDeviceMetricsOverride", width=VIEWPORT[0], height=VIEWPORT[1],
                                 deviceScaleFactor=1, mobile=False)
                await tools.call("Page.navigate", url=url)
                deadline = time.time() + 120
                while time.time() < deadline:
                    ready = await tools.evaluate("!!(window.app && window.app.graph && window.app.canvas)")
                    if ready:
                        break
                    await asyncio.sleep(0.5)
                await asyncio.sleep(2)
                for path in sorted(EXAMPLES.glob("*.json")):
                    measured = json.loads(await tools.evaluate(LOAD_AND_MEASURE % path.read_text()))
                    print(f"\n{path.name}")
                    for node in measured["nodes"]:
                        print(f"  #{node['id']:<3} {node['type']:<45} bounding {[round(v) for v in node['bounding']]}"
                              f"  (smallest size the editor allows {[round(v) for v in node['minimum']]})")
                    problems = overlaps(measured["nodes"])
                    for problem in problems:
                        print("  OVERLAP:", problem)
                    if measured["missing"]:
                        print("  nodes with errors:", measured["missing"])
                    failures += len(problems) + len(measured["missing"])
                    if check_only:
                        continue
                    clip = json.loads(await tools.evaluate(FIT_VIEW % json.dumps(SHOT)))
                    await asyncio.sleep(2)  # the editor redraws in full quality once the view settles
                    await tools.evaluate("window.app.canvas.draw(true, true)")
                    shot = await tools.call("Page.captureScreenshot", format="png",
                                            clip={**clip, "scale": 1})
                    image = Image.open(io.BytesIO(base64.b64decode(shot["data"]))).convert("RGB")
                    height = round(image.height * THUMBNAIL_WIDTH / image.width)
                    image = image.resize((THUMBNAIL_WIDTH, height), Image.LANCZOS)
                    target = path.with_suffix(".jpg")
                    image.save(target, quality=82, optimize=True)
                    print(f"  thumbnail {target.name}: {image.width}×{image.height}, {target.stat().st_size // 1024} KiB")
    finally:
        browser.terminate()
        browser.wait(timeout=30)
        shutil.rmtree(profile, ignore_errors=True)
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check-only", action="store_true", help="measure and check overlaps, write no thumbnails")
    args = parser.parse_args()
    comfy = host_env.comfyui_path()
    if comfy is None:
        print("set COMFYUI_PATH to a ComfyUI tree", file=sys.stderr)
        return 2
    base = Path(tempfile.mkdtemp(prefix="comfy-render-base-"))
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / host_env.PACK_FOLDER_NAME).symlink_to(host_env.REPO_ROOT, target_is_directory=True)
    for path in EXAMPLES.glob("*.json"):  # every model the examples name, as an empty stand-in
        workflow = json.loads(path.read_text())
        entries = list(workflow.get("models", []))
        entries += [m for node in workflow["nodes"] for m in node.get("properties", {}).get("models", [])]
        for entry in entries:
            (base / "models" / entry["directory"]).mkdir(parents=True, exist_ok=True)
            (base / "models" / entry["directory"] / entry["name"]).touch()
    (base / "user" / "default").mkdir(parents=True)
    (base / "user" / "default" / "comfy.settings.json").write_text(json.dumps(SETTINGS))
    server = host_env.HostServer(comfy, base)
    try:
        server.wait_ready()
        failures = asyncio.run(render(server.url, args.check_only))
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
    print(f"\n{failures} problem(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
