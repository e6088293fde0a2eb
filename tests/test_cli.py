import subprocess
import sys

import pytest

from arstudio.cli import build_parser, main
from arstudio.export import read_png_metadata

SUBCOMMANDS = [[], ["generate"], ["presets"], ["train"], ["train", "tokenizer"], ["train", "generator"],
               ["train", "classifier"]]  # fmt: skip


@pytest.mark.parametrize("words", SUBCOMMANDS, ids=lambda w: " ".join(w) or "arstudio")
def test_every_subcommand_has_help(words, capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([*words, "--help"])
    assert info.value.code == 0
    assert "usage: arstudio" in capsys.readouterr().out


def test_help_is_quick_because_imports_are_lazy():
    # torch must not be imported to print help.
    code = "import sys; from arstudio.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
    )


def test_generate_writes_pngs_with_metadata_and_a_grid(tmp_path):
    assert main(["generate", "--preset", "test-tiny-c2i", "--class-labels", "0", "3", "--num-images-per-prompt",
                 "2", "--seed", "4", "--out", str(tmp_path)]) == 0  # fmt: skip
    pngs = sorted(p for p in tmp_path.glob("*.png") if p.name != "grid.png")
    assert len(pngs) == 4 and (tmp_path / "grid.png").is_file()
    meta = read_png_metadata(pngs[2])
    assert meta["class_label"] == 3 and meta["preset"] == "test-tiny-c2i"
    assert not list(tmp_path.glob("*.tmp"))


def test_cli_reports_bad_input_clearly(tmp_path, capsys):
    assert main(["generate", "--preset", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err
    assert (
        main(["generate", "--preset", "test-tiny-c2i", "--class-labels", "99", "--out", str(tmp_path)]) == 2
    )
    assert "class label 99 is out of range" in capsys.readouterr().err


def test_generate_from_a_text_preset(tmp_path):
    assert main(["generate", "--preset", "test-tiny-t2i", "--prompt", "a small red circle at the top",
                 "--negative-prompt", "a blue square", "--out", str(tmp_path)]) == 0  # fmt: skip
    meta = read_png_metadata(next(tmp_path.glob("0000_*.png")))
    assert meta["prompt"] == "a small red circle at the top" and meta["negative_prompt"] == "a blue square"


def test_generate_takes_a_control_image(tmp_path, capsys):
    import numpy as np
    import torch
    from PIL import Image

    import arstudio

    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 4:12] = 255
    Image.fromarray(mask, mode="L").save(tmp_path / "mask.png")
    out = tmp_path / "out"
    assert main(["generate", "--preset", "test-tiny-control", "--class-labels", "5", "--seed", "3", "--no-grid",
                 "--control-image", str(tmp_path / "mask.png"), "--control-type", "mask",
                 "--control-strength", "1.5", "--out", str(out)]) == 0  # fmt: skip
    written = np.asarray(Image.open(next(out.glob("0000_*.png"))))
    pipe = arstudio.load_pipeline("test-tiny-control")
    api = pipe(class_labels=[5], generator=torch.Generator().manual_seed(3), control_image=mask,
               control_type="mask", control_strength=1.5, output_type="np")  # fmt: skip
    assert np.array_equal(written, api.images[0])  # the same call as the API's
    plain = pipe(class_labels=[5], generator=torch.Generator().manual_seed(3), output_type="np")
    assert not np.array_equal(written, plain.images[0])  # the control was used, not dropped
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "rgb.png")
    assert main(["generate", "--preset", "test-tiny-control", "--control-image", str(tmp_path / "rgb.png"),
                 "--out", str(out)]) == 2  # fmt: skip
    assert "must have one channel" in capsys.readouterr().err
    assert main(["generate", "--preset", "test-tiny-c2i", "--control-type", "edges", "--out", str(out)]) == 2
    assert "control_type needs a control preset" in capsys.readouterr().err
