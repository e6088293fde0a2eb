from arstudio.pipelines.image import ImageOutput, ImagePipeline
from arstudio.pipelines.loading import load_pipeline

__all__ = ["ImageOutput", "ImagePipeline", "load_pipeline"]
