"""Node registry of the pack: every node id carries the `BagelMoT` prefix. Every registered node gets the input
guard (input_guard.py: NaN, +-inf and non-boolean values refused, naming the input)."""
from . import edit, loader, remote_model, sampling_inputs_nodes, sampling_nodes, text_nodes, text_to_image
from .input_guard import guard_nodes
from .model_folders import register_model_folder

register_model_folder()

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
for _module in (loader, remote_model, text_to_image, edit, text_nodes, sampling_inputs_nodes, sampling_nodes):
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)
guard_nodes(NODE_CLASS_MAPPINGS)
