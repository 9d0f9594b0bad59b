"""Nodes that produce text: Understand (answers about images) and Think (a plan for generation).

Both return {"ui": {"text": [...]}} so the pack's small frontend extension
(js/bagel_mot_text_preview.js) shows the text on the node.
"""
from .image_convert import image_batch_to_pil
from .progress import NodeProgress
from .sampler_inputs import model_input, seed_input, text_input
from .validation import first_problem, raise_if_problem, text_problem


def _token_budget(default: int, tooltip: str):
    return ("INT", {"default": default, "min": 1, "max": 8192, "tooltip": tooltip})


def _sampling_inputs() -> dict:
    return {
        "do_sample": ("BOOLEAN", {"default": False, "label_on": "sample", "label_off": "greedy",
                                  "tooltip": "Greedy decoding is deterministic; sampling uses temperature and seed."}),
        "temperature": ("FLOAT", {"default": 0.3, "min": 0.01, "max": 2.0, "step": 0.01,
                                  "tooltip": "Only used when sampling."}),
        "seed": seed_input(),
    }


class BagelMoTUnderstand:
    DESCRIPTION = "Answers a question about each image of the batch (one answer per image)."
    CATEGORY = "BAGEL-MoT"
    RETURN_TYPES = ("STRING", "STRING")
    RETURN_NAMES = ("answer", "thinking")
    OUTPUT_IS_LIST = (True, True)
    OUTPUT_NODE = True
    FUNCTION = "understand"

    @classmethod
    def INPUT_TYPES(cls):
        required = {
            "bagel_model": model_input(),
            "image": ("IMAGE", {"tooltip": "Each image of the batch gets its own answer."}),
            "question": text_input("What to ask about the image.", "Describe this image in detail."),
            "max_new_tokens": _token_budget(512, "Longest answer, in tokens."),
        }
        required.update(_sampling_inputs())
        required["think"] = ("BOOLEAN", {"default": False, "label_on": "think first", "label_off": "answer directly",
                                         "tooltip": "Let the model reason before answering (output 'thinking')."})
        return {"required": required}

    @classmethod
    def VALIDATE_INPUTS(cls, question=None):
        return first_problem(text_problem("question", question))

    def understand(self, bagel_model, image, question, max_new_tokens, do_sample, temperature, seed, think):
        raise_if_problem(text_problem("question", question))
        pictures = image_batch_to_pil(image, "image")
        progress = NodeProgress(len(pictures))
        answers, thoughts = [], []
        for index, picture in enumerate(pictures):
            pipeline = bagel_model.ready_pipeline("understand", input_size=picture.size,
                                                  generated_tokens=max_new_tokens)
            result = pipeline.understand(
                [picture], question, think=think, max_new_tokens=max_new_tokens, do_sample=do_sample,
                temperature=temperature, seed=seed, callback=progress.callback(index),
            )
            answers.append(result.answer)
            thoughts.append(result.thinking or "")
        return {"ui": {"text": answers}, "result": (answers, thoughts)}


class BagelMoTThink:
    DESCRIPTION = (
        "Writes BAGEL's plan for a prompt (and optional image to edit). Connect it to the 'thinking' "
        "input of Text to Image / Image Edit, or paste and edit it there: the image is the same as "
        "with BAGEL's built-in think mode."
    )
    CATEGORY = "BAGEL-MoT"
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("plan",)
    OUTPUT_NODE = True
    FUNCTION = "think"

    @classmethod
    def INPUT_TYPES(cls):
        required = {
            "bagel_model": model_input(),
            "prompt": text_input("The prompt or edit instruction to plan for."),
            "max_think_tokens": _token_budget(1000, "Longest plan, in tokens."),
        }
        required.update(_sampling_inputs())
        return {
            "required": required,
            "optional": {
                "image": ("IMAGE", {"tooltip": "The single image to edit, when planning an edit."}),
                "reference_images": ("IMAGE", {"tooltip": "Same extra images as given to Image Edit."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, prompt=None):
        return first_problem(text_problem("prompt", prompt))

    def think(self, bagel_model, prompt, max_think_tokens, do_sample, temperature, seed,
              image=None, reference_images=None):
        raise_if_problem(text_problem("prompt", prompt))
        images = None
        if image is not None:
            if image.shape[0] != 1:
                raise ValueError(
                    f"Think plans an edit of one image, but 'image' is a batch of {image.shape[0]}. "
                    "Pick one with 'Image From Batch'."
                )
            references = [] if reference_images is None else image_batch_to_pil(reference_images, "reference_images")
            # The core edits (and so plans for) the last image; references come first, as in Edit.
            images = references + image_batch_to_pil(image, "image")
        elif reference_images is not None:
            raise ValueError("'reference_images' needs 'image' too: connect the image to edit.")
        input_size = images[-1].size if images else None
        pipeline = bagel_model.ready_pipeline("think", input_size=input_size, generated_tokens=max_think_tokens)
        result = pipeline.think(
            prompt, images=images, max_think_tokens=max_think_tokens, do_sample=do_sample,
            temperature=temperature, seed=seed, callback=NodeProgress(1).callback(0),
        )
        return {"ui": {"text": [result.thinking]}, "result": (result.thinking,)}


NODE_CLASS_MAPPINGS = {"BagelMoTUnderstand": BagelMoTUnderstand, "BagelMoTThink": BagelMoTThink}
NODE_DISPLAY_NAME_MAPPINGS = {"BagelMoTUnderstand": "BAGEL-MoT Understand Image",
                              "BagelMoTThink": "BAGEL-MoT Think"}
