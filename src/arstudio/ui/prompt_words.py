"""Does a text preset understand any word of a prompt? A warning, never a refusal: the model draws
something for any text, but for "asdkjh qwe zzz 123" that something says nothing about the prompt.

The vocabulary is what the preset's model was trained on: the procedural shapes captions for shapes
presets ("a large red circle at the top left"), the word table of the tiny test encoder for test presets.
A preset with neither (a general text encoder on open captions) is not checked.
"""

from __future__ import annotations

import re

from arstudio.data.shapes import COLOURS, REGIONS, SHAPES, SIZES

FUNCTION_WORDS = {"a", "an", "and", "at", "the", "in", "on", "of", "<pad>", "<unk>"}
SHAPES_WORDS = {*SHAPES, *COLOURS, *SIZES, *" ".join(REGIONS).split()}


def content_words(pipe) -> set[str] | None:
    """Words that carry meaning for this preset's model (colours, shapes, sizes, places); None: unknown."""
    if pipe.preset.name.startswith("shapes-"):
        return SHAPES_WORDS
    vocabulary = getattr(pipe.text_encoder, "VOCAB", None)
    return set(vocabulary) - FUNCTION_WORDS if vocabulary else None


def unknown_prompt_warning(pipe, prompt: str) -> str | None:
    """A one-line warning when no word of ``prompt`` is one the model knows; None otherwise."""
    known = content_words(pipe)
    if known is None:
        return None
    if set(re.findall(r"[a-z]+", prompt.lower())) & known:
        return None
    examples = ", ".join(sorted(known)[:12])
    return (
        f"{pipe.preset.name} understood no word of {prompt!r}: it knows words like {examples}; "
        f"the images will not follow this prompt"
    )
