// Shows the warnings a BAGEL-MoT node returns in {"ui": {"bagel_mot_warnings": [...]}} (settings the
// vLLM-Omni server may not apply as asked) on the node, and once as a toast where the frontend has toasts.
// Uses only app.registerExtension, nodeType.prototype.onExecuted and ComfyWidgets.STRING, like
// bagel_mot_text_preview.js; the toast (app.extensionManager.toast) is skipped on frontends without it.
import { app } from "../../scripts/app.js";

const WARNINGS_KEY = "bagel_mot_warnings";
const WIDGET_NAME = "bagel_mot_warnings";

function warningWidget(node) {
  const existing = node.widgets?.find((w) => w.name === WIDGET_NAME);
  if (existing) return existing;
  const comfyWidgets = window.comfyAPI?.widgets?.ComfyWidgets;
  if (!comfyWidgets?.STRING) return null;
  const widget = comfyWidgets.STRING(node, WIDGET_NAME, ["STRING", { multiline: true }], app).widget;
  widget.serialize = false; // display only: never saved into widgets_values
  widget.options = { ...(widget.options ?? {}), serialize: false };
  if (widget.element) widget.element.readOnly = true;
  const wanted = node.computeSize();
  node.setSize([Math.max(node.size[0], wanted[0]), Math.max(node.size[1], wanted[1])]);
  return widget;
}

function showWarnings(node, warnings) {
  const text = warnings.map((warning) => `⚠ ${warning}`).join("\n");
  const widget = warningWidget(node);
  if (widget) widget.value = text;
  console.warn(`[BagelMoT] ${node.title}: ${text}`);
  app.extensionManager?.toast?.add?.({
    severity: "warn", summary: `${node.title}: remote server`, detail: warnings.join("\n"), life: 10000,
  });
  node.setDirtyCanvas?.(true, true);
}

app.registerExtension({
  name: "BagelMoT.RemoteWarnings",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData.name?.startsWith("BagelMoT")) return;
    const previousOnExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      previousOnExecuted?.apply(this, arguments);
      const warnings = message?.[WARNINGS_KEY];
      if (Array.isArray(warnings) && warnings.length) {
        showWarnings(this, warnings);
      } else {
        const stale = this.widgets?.find((w) => w.name === WIDGET_NAME);
        if (stale) stale.value = ""; // this run applied every setting
      }
    };
  },
});
