"""Loaders for official checkpoints of other projects into arstudio modules.

Pickle checkpoints are read with ``torch.load(weights_only=True)`` only: tensors and plain containers, never
arbitrary objects. Each converter maps the official key names onto ours, drops training-only buffers and
checks every key and shape before loading.
"""

from arstudio.convert.checkpoint import load_official_checkpoint
from arstudio.convert.llamagen import (
    LLAMAGEN_GPT_SIZES,
    LLAMAGEN_VQ_CH_MULT,
    convert_llamagen_gpt,
    convert_llamagen_to_pretrained,
    convert_llamagen_vq,
    llamagen_gpt_config,
    llamagen_vq_config,
    load_llamagen_gpt,
    load_llamagen_vq,
)
from arstudio.convert.llamagen_t2i import (
    FlanT5TextEncoder,
    LlamaGenT2IGenerator,
    llamagen_t2i_config,
    load_llamagen_t2i,
)

__all__ = [
    "FlanT5TextEncoder",
    "LlamaGenT2IGenerator",
    "llamagen_t2i_config",
    "load_llamagen_t2i",
    "LLAMAGEN_GPT_SIZES",
    "LLAMAGEN_VQ_CH_MULT",
    "convert_llamagen_gpt",
    "convert_llamagen_to_pretrained",
    "convert_llamagen_vq",
    "llamagen_gpt_config",
    "llamagen_vq_config",
    "load_llamagen_gpt",
    "load_llamagen_vq",
    "load_official_checkpoint",
]
