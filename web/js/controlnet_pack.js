// ControlNet Pack front-end helpers (kept small on purpose):
//  - MultiControlStack gets a "pose + depth" preset button and dims the widgets of entries that are off;
//  - the pack's nodes share one colour so they are easy to spot in a large graph.
// Nothing here changes what a workflow stores: the button is not serialised.
import { app } from "../../../scripts/app.js";  // served at /extensions/<pack>/js/

const PREFIX = "ControlNetPack_";
const STACK = PREFIX + "MultiControlStack";
const SLOTS = 3;
const NODE_COLOR = "#2a3b4d";
const NODE_BGCOLOR = "#35506b";
const ENTRY_FIELDS = ["strength", "start_percent", "end_percent", "control_mode"];

// Entry 1 = OpenPose at full strength; entry 2 = depth, lighter and released for the last 20 %.
const POSE_DEPTH_PRESET = {
  1: { enabled: true, strength: 1.0, start_percent: 0.0, end_percent: 1.0, control_mode: "balanced" },
  2: { enabled: true, strength: 0.6, start_percent: 0.0, end_percent: 0.8, control_mode: "balanced" },
  3: { enabled: false },
};

function widget(node, name) {
  return node.widgets?.find((w) => w.name === name);
}

function refreshEntryStyles(node) {
  for (let slot = 1; slot <= SLOTS; slot++) {
    const on = widget(node, `enabled_${slot}`)?.value !== false;
    for (const field of ENTRY_FIELDS) {
      const w = widget(node, `${field}_${slot}`);
      if (w) w.disabled = !on; // drawn greyed out; the value is kept and still saved
    }
  }
  node.setDirtyCanvas?.(true, true);
}

function applyPreset(node, preset) {
  for (const [slot, values] of Object.entries(preset)) {
    const enabled = widget(node, `enabled_${slot}`);
    if (enabled) enabled.value = values.enabled;
    for (const field of ENTRY_FIELDS) {
      const w = widget(node, `${field}_${slot}`);
      if (w && field in values) {
        w.value = values[field];
        w.callback?.(w.value);
      }
    }
  }
  refreshEntryStyles(node);
}

app.registerExtension({
  name: "controlnet_pack.nodes",
  beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData.name?.startsWith(PREFIX)) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      this.color = this.color ?? NODE_COLOR;
      this.bgcolor = this.bgcolor ?? NODE_BGCOLOR;
      if (nodeData.name === STACK) {
        const button = this.addWidget("button", "preset: pose + depth", null, () => applyPreset(this, POSE_DEPTH_PRESET));
        button.serialize = false;
        button.options = { ...(button.options ?? {}), serialize: false };
        for (let slot = 1; slot <= SLOTS; slot++) {
          const enabled = widget(this, `enabled_${slot}`);
          if (!enabled) continue;
          const original = enabled.callback;
          enabled.callback = (...args) => {
            const r = original?.apply(enabled, args);
            refreshEntryStyles(this);
            return r;
          };
        }
        refreshEntryStyles(this);
      }
      return result;
    };
    if (nodeData.name === STACK) {
      const onConfigure = nodeType.prototype.onConfigure;
      nodeType.prototype.onConfigure = function () {
        const result = onConfigure?.apply(this, arguments);
        refreshEntryStyles(this); // a loaded workflow shows its switched-off entries dimmed
        return result;
      };
    }
  },
});
