"""ComfyUI entry point of the BAGEL-7B-MoT node pack.

ComfyUI imports this folder as a package (custom_nodes/<folder>/__init__.py) and reads
NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS and WEB_DIRECTORY from it.
"""
import os
import sys

# The pure-PyTorch core `bagel_model/` sits next to this file and is also used on its own
# (`python -m bagel_model`), so it is imported by its top-level name. ComfyUI does not put
# custom-node folders on sys.path; append (never prepend) so nothing of ComfyUI's is shadowed.
_PACK_DIR = os.path.dirname(os.path.abspath(__file__))
if _PACK_DIR not in sys.path:
    sys.path.append(_PACK_DIR)

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

# Shows the Understand/Think text on the node itself (see js/bagel_mot_text_preview.js).
WEB_DIRECTORY = "./js"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
