"""Evaluation: the rule-based shapes verifier, PSNR, and FD-shapes.

Note: the package attribute ``fd_shapes`` is the function; import the module's other names with
``from arstudio.evaluation.fd_shapes import ...``.
"""

from arstudio.evaluation.fd_shapes import (
    ClassifierConfig,
    ShapesClassifier,
    evaluate_classifier,
    extract_features,
    fd_shapes,
    frechet_distance,
    load_shipped_classifier,
    train_classifier,
)
from arstudio.evaluation.verifier import (
    DetectedObject,
    class_accuracy,
    detect_objects,
    verify_class,
    verify_objects,
)
from arstudio.images import psnr

__all__ = [
    "ClassifierConfig",
    "DetectedObject",
    "ShapesClassifier",
    "class_accuracy",
    "detect_objects",
    "evaluate_classifier",
    "extract_features",
    "fd_shapes",
    "frechet_distance",
    "load_shipped_classifier",
    "psnr",
    "train_classifier",
    "verify_class",
    "verify_objects",
]
