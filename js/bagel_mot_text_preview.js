// Shows the text that BAGEL-MoT Understand / Think / Think into Conditioning return in {"ui": {"text": [...]}} on the node.
// ComfyUI's frontend renders ui.text only for its own PreviewAny node, so this adds a read-only
// text box the first time the node reports text. Works with frontends 1.27 through 1.58: it uses
// only app.registerExtension, nodeType.prototype.onExecuted and ComfyWidgets.STRING.
import { app } from "../../scripts/app.js";

const TEXT_NODE_TYPES = new Set(["BagelMoTUnderstand", "BagelMoTThink", "BagelMoTThinkConditioning"]);
export const PREVIEW_WIDGET_NAME = "bagel_mot_text";
const SEPARATOR = "\n\n────────\n\n";

function createPreviewWidget(node) {
  const comfyWidgets = window.comfyAPI?.widgets?.ComfyWidgets;
  if (!comfyWidgets?.STRING) {
    console.warn("[BagelMoT] this frontend has no ComfyWidgets.STRING; text is in the node's outputs only");
    return null;
  }
  const widget = comfyWidgets.STRING(node, PREVIEW_WIDGET_NAME, ["STRING", { multiline: true }], app).widget;
  // Display only: never saved into widgets_values and never sent to the server.
  widget.serialize = false;
  widget.options = { ...(widget.options ?? {}), serialize: false };
  if (widget.element) widget.element.readOnly = true;
  const wanted = node.computeSize();
  node.setSize([Math.max(node.size[0], wanted[0]), Math.max(node.size[1], wanted[1])]);
  return widget;
}

function showText(node, texts) {
  const parts = (Array.isArray(texts) ? texts : [texts]).filter((part) => part != null);
  const widget = node.widgets?.find((w) => w.name === PREVIEW_WIDGET_NAME) ?? createPreviewWidget(node);
  if (!widget) return;
  widget.value = parts.join(SEPARATOR);
  node.setDirtyCanvas?.(true, true);
}

app.registerExtension({
  name: "BagelMoT.TextPreview",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!TEXT_NODE_TYPES.has(nodeData.name)) return;
    const previousOnExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      previousOnExecuted?.apply(this, arguments);
      if (message?.text) showText(this, message.text);
    };
  },
});
