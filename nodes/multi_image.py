"""How the text nodes show several images to BAGEL: one question per image, or all images in one question.

BAGEL reads any interleaving of images and text blocks (spec §6.8), so "all together" gives the model every
image in order, then the question; "numbered" puts a short text block ("Image 2:") before each image so the
question can refer to the images by number.
"""
from .image_convert import image_batch_to_pil

EACH_IMAGE = "each image"
TOGETHER = "all together"
NUMBERED = "all together, numbered"
SINGLE_IMAGE = "single image"

UNDERSTAND_MODES = (EACH_IMAGE, TOGETHER, NUMBERED)  # default first: today's one answer per image
THINK_MODES = (SINGLE_IMAGE, TOGETHER, NUMBERED)  # default first: today's plan for one image


def understand_mode_input():
    return (list(UNDERSTAND_MODES), {
        "default": EACH_IMAGE,
        "tooltip": "each image: one answer per image of the batch (references shown before each). all together: "
                   "one answer about all images (references first, then the batch). numbered: the same, with "
                   "'Image 1:', 'Image 2:' ... before the images so the question can name them."})


def think_mode_input():
    return (list(THINK_MODES), {
        "default": SINGLE_IMAGE,
        "tooltip": "single image: plan an edit of one image (a batch of 1). all together: every image of the batch "
                   "after the references, the plan edits the last one. numbered: the same, with 'Image 1:' ... "
                   "before the images."})


def optional_pictures(images, input_name: str) -> list:
    return [] if images is None else image_batch_to_pil(images, input_name)


def labelled(pictures: list) -> list:
    """``["Image 1:", picture 1, "Image 2:", picture 2, ...]``."""
    items = []
    for number, picture in enumerate(pictures, start=1):
        items += [f"Image {number}:", picture]
    return items


def questions(mode: str, pictures: list, references: list, question: str) -> list[list]:
    """The interleaved inputs of each core call: one per picture (each image) or one for all (together)."""
    if mode not in UNDERSTAND_MODES:
        raise ValueError(f"image_mode '{mode}' is not one of {', '.join(UNDERSTAND_MODES)}.")
    if mode == EACH_IMAGE and pictures:
        return [[*references, picture, question] for picture in pictures]
    shown = [*references, *pictures]
    return [[*(labelled(shown) if mode == NUMBERED else shown), question]]


def plan_inputs(mode: str, pictures: list, references: list, prompt: str) -> list:
    """The interleaved inputs of Think: the references, then the image(s) to edit, then the prompt."""
    if mode not in THINK_MODES:
        raise ValueError(f"image_mode '{mode}' is not one of {', '.join(THINK_MODES)}.")
    if mode == SINGLE_IMAGE and len(pictures) > 1:
        raise ValueError(
            f"Think plans an edit of one image, but 'image' is a batch of {len(pictures)}. Pick one with "
            f"'Image From Batch', or set image_mode to '{TOGETHER}' to plan with every image of the batch.")
    if references and not pictures:
        raise ValueError("'reference_images' needs 'image' too: connect the image to edit.")
    shown = [*references, *pictures]
    return [*(labelled(shown) if mode == NUMBERED else shown), prompt]
