"""Hugging Face Spaces entry (see the YAML header of README.md): serves the arstudio studio.

Locally, `python app.py` is the same as `arstudio ui`. On a Space, Gradio reads GRADIO_SERVER_NAME /
GRADIO_SERVER_PORT from the environment the Space sets; the pipelines use CUDA when the Space has a GPU.
ARSTUDIO_PRESET picks the preset selected at start (default shapes-c2i); ARSTUDIO_SHOW_TEST_PRESETS=1 also
offers the random-init test-* presets, which are hidden by default.
"""

import os

from arstudio.ui import MAX_UPLOAD, create_app

demo = create_app(preset=os.environ.get("ARSTUDIO_PRESET") or None)

if __name__ == "__main__":
    demo.launch(server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), max_file_size=MAX_UPLOAD,
                show_error=True, ssr_mode=False)  # fmt: skip
