"""Node registry of the pack: every node id carries the `BagelMoT` prefix."""
from . import edit, loader, remote_model, sampling_inputs_nodes, sampling_nodes, text_nodes, text_to_image
from .model_folders import register_model_folder

register_model_folder()

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
for _module in (loader, remote_model, text_to_image, edit, text_nodes, sampling_inputs_nodes, sampling_nodes):
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)
