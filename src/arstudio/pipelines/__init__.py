from arstudio.pipelines.image import ImageOutput, ImagePipeline
from arstudio.pipelines.loading import load_pipeline
from arstudio.pipelines.video import VideoOutput, VideoPipeline

__all__ = ["ImageOutput", "ImagePipeline", "VideoOutput", "VideoPipeline", "load_pipeline"]
