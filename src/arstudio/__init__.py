"""arstudio: visual tokenizers + a shared autoregressive backbone + pluggable decoding.

    import arstudio, torch
    pipe = arstudio.load_pipeline("shapes-c2i")
    out = pipe(prompt=["red circle"], num_images_per_prompt=4, generator=torch.Generator().manual_seed(0))

The public names load lazily so ``import arstudio`` (and the CLI's ``--help``) do not pay for torch.
"""

__version__ = "0.1.0"
__all__ = [
    "ImageOutput",
    "ImagePipeline",
    "RenderSummary",
    "get_preset",
    "VideoOutput",
    "VideoPipeline",
    "list_presets",
    "load_pipeline",
    "needs_weights",
    "preset_facts",
    "reconstruct",
    "render_batch",
]

_LAZY = {
    "load_pipeline": "arstudio.pipelines.loading",
    "ImagePipeline": "arstudio.pipelines.image",
    "ImageOutput": "arstudio.pipelines.image",
    "list_presets": "arstudio.presets",
    "get_preset": "arstudio.presets",
    "preset_facts": "arstudio.convert.hub",
    "needs_weights": "arstudio.convert.hub",
    "render_batch": "arstudio.render",
    "reconstruct": "arstudio.reconstruction",
    "RenderSummary": "arstudio.render",
    "VideoPipeline": "arstudio.pipelines.video",
    "VideoOutput": "arstudio.pipelines.video",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'arstudio' has no attribute {name!r}")
