"""Nodes that produce text: Understand (answers about images) and Think (a plan for generation).

Both return {"ui": {"text": [...]}} so the pack's small frontend extension
(js/bagel_mot_text_preview.js) shows the text on the node.
"""
from PIL import Image

from .batch_runner import run_jobs, with_warnings
from .multi_image import (EACH_IMAGE, SINGLE_IMAGE, optional_pictures, plan_inputs, questions, think_mode_input,
                          understand_mode_input)
from .progress import NodeProgress
from .sampler_inputs import model_input, seed_input, text_input
from .validation import first_problem, raise_if_problem, text_problem


def largest_picture(inputs: list):
    """(width, height) of the largest image among a call's inputs (its working memory), None without one."""
    sizes = [item.size for item in inputs if isinstance(item, Image.Image)]
    return max(sizes, key=lambda size: size[0] * size[1]) if sizes else None


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


def think_input_types() -> dict:
    """The plan-writing widgets of BAGEL-MoT Think, in its order (also on Think into Conditioning)."""
    return {"max_think_tokens": _token_budget(1000, "Longest plan, in tokens."), **_sampling_inputs()}


class BagelMoTUnderstand:
    DESCRIPTION = (
        "Answers a question about each image of the batch (one answer per image), about all images "
        "together (image_mode), or without any image (text-only question)."
    )
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
            "question": text_input("What to ask about the image.", "Describe this image in detail."),
            "max_new_tokens": _token_budget(512, "Longest answer, in tokens."),
        }
        required.update(_sampling_inputs())
        required["think"] = ("BOOLEAN", {"default": False, "label_on": "think first", "label_off": "answer directly",
                                         "tooltip": "Let the model reason before answering (output 'thinking')."})
        optional = {
            "image": ("IMAGE", {"tooltip": "Image(s) to ask about; leave unconnected for a text-only question."}),
            "reference_images": ("IMAGE", {"tooltip": "Extra images shown before the image(s)."}),
            "image_mode": understand_mode_input(),
        }
        return {"required": required, "optional": optional}

    @classmethod
    def VALIDATE_INPUTS(cls, question=None):
        return first_problem(text_problem("question", question))

    # `image` keeps its old place among the parameters (it became optional: text-only questions).
    def understand(self, bagel_model, image=None, question="", max_new_tokens=512, do_sample=False,
                   temperature=0.3, seed=0, think=False, reference_images=None, image_mode=EACH_IMAGE):
        raise_if_problem(text_problem("question", question))
        calls = questions(image_mode, optional_pictures(image, "image"),
                          optional_pictures(reference_images, "reference_images"), question)
        every_input = [item for inputs in calls for item in inputs]
        pipeline = bagel_model.ready_pipeline("understand", input_size=largest_picture(every_input),
                                              generated_tokens=max_new_tokens)
        # One core call per question; a remote backend sends them as concurrent requests.
        jobs = [dict(images=None, prompt=question, think=think, max_new_tokens=max_new_tokens, do_sample=do_sample,
                     temperature=temperature, seed=seed, inputs=inputs) for inputs in calls]
        results = run_jobs(pipeline, "understand", jobs)
        answers = [result.answer for result in results]
        thoughts = [result.thinking or "" for result in results]
        return with_warnings({"ui": {"text": answers}, "result": (answers, thoughts)}, results)


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
                "image": ("IMAGE", {"tooltip": "The image to edit, when planning an edit (several: see image_mode)."}),
                "reference_images": ("IMAGE", {"tooltip": "Same extra images as given to Image Edit."}),
                "image_mode": think_mode_input(),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, prompt=None):
        return first_problem(text_problem("prompt", prompt))

    def think(self, bagel_model, prompt, max_think_tokens, do_sample, temperature, seed,
              image=None, reference_images=None, image_mode=SINGLE_IMAGE):
        raise_if_problem(text_problem("prompt", prompt))
        # The core edits (and so plans for) the last image; references come first, as in Edit.
        inputs = plan_inputs(image_mode, optional_pictures(image, "image"),
                             optional_pictures(reference_images, "reference_images"), prompt)
        pipeline = bagel_model.ready_pipeline("think", input_size=largest_picture(inputs),
                                              generated_tokens=max_think_tokens)
        result = pipeline.think(
            prompt, max_think_tokens=max_think_tokens, do_sample=do_sample, temperature=temperature,
            seed=seed, callback=NodeProgress(1).callback(0), inputs=inputs,
        )
        return with_warnings({"ui": {"text": [result.thinking]}, "result": (result.thinking,)}, [result])


NODE_CLASS_MAPPINGS = {"BagelMoTUnderstand": BagelMoTUnderstand, "BagelMoTThink": BagelMoTThink}
NODE_DISPLAY_NAME_MAPPINGS = {"BagelMoTUnderstand": "BAGEL-MoT Understand Image",
                              "BagelMoTThink": "BAGEL-MoT Think"}
