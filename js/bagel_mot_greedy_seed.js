// New BAGEL-MoT Understand / Think nodes start with "control after generate" = fixed.
// The frontend's default is "randomize": it changes the seed after every queue, the seed is part of
// ComfyUI's cache key, so a greedy (deterministic) answer or plan would be computed again on every run, and
// every node downstream of it (e.g. Text to Image fed by Think) would run again too. Image nodes keep the
// frontend's default, like KSampler. Saved workflows keep the value they were saved with: loading applies
// widgets_values after nodeCreated. Works with frontends 1.27 through 1.58 (app.registerExtension only).
import { app } from "../../scripts/app.js";

const GREEDY_TEXT_NODE_TYPES = new Set(["BagelMoTUnderstand", "BagelMoTThink"]);

app.registerExtension({
  name: "BagelMoT.GreedyTextSeedFixed",
  nodeCreated(node) {
    if (!GREEDY_TEXT_NODE_TYPES.has(node.comfyClass ?? node.type)) return;
    const control = node.widgets?.find((widget) => widget.name === "control_after_generate");
    if (control) control.value = "fixed";
  },
});
