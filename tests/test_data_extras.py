"""sklearn digits as images, and folders of the user's own images."""

import numpy as np
import pytest
import torch
from PIL import Image

from arstudio.data.digits import digit_images
from arstudio.data.folder import ImageFolderDataset

torch.set_num_threads(1)


@pytest.mark.parametrize("resolution", [16, 32])
def test_digit_images(resolution):
    images, labels = digit_images(resolution, "train")
    heldout, heldout_labels = digit_images(resolution, "heldout")
    assert images.shape == (len(labels), resolution, resolution, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and set(labels.tolist()) == set(range(10))
    assert len(images) + len(heldout) == 1797  # every sklearn digit is in exactly one split
    assert 0.15 < len(heldout) / 1797 < 0.25
    assert images.max() > 200 and images.min() == 0
    assert (images[..., 0] == images[..., 2]).all()  # grey in RGB
    again, again_labels = digit_images(resolution, "train")
    assert np.array_equal(images, again) and np.array_equal(labels, again_labels)


def test_digit_splits_are_disjoint():
    train, _ = digit_images(16, "train")
    heldout, _ = digit_images(16, "heldout")
    train_rows = {image.tobytes() for image in train}
    assert not any(image.tobytes() in train_rows for image in heldout)


def test_digit_errors():
    with pytest.raises(ValueError, match="64"):
        digit_images(64)
    with pytest.raises(ValueError, match="test"):
        digit_images(16, "test")


def test_folder_dataset(tmp_path):
    # A wide image: centre third red, sides blue. The centre crop must keep only red.
    wide = np.zeros((20, 60, 3), np.uint8)
    wide[:, :, 2] = 255
    wide[:, 20:40] = (255, 0, 0)
    Image.fromarray(wide).save(tmp_path / "b_wide.png")
    sub = tmp_path / "sub"
    sub.mkdir()
    Image.fromarray(np.full((10, 10), 255, np.uint8)).save(sub / "a_grey.PNG")  # greyscale, upper case
    (tmp_path / "notes.txt").write_text("not an image")

    dataset = ImageFolderDataset(tmp_path, resolution=8)
    assert len(dataset) == 2
    items = [dataset[i] for i in range(len(dataset))]
    for item in items:
        assert item.shape == (3, 8, 8) and item.dtype == torch.float32
        assert item.min() >= -1 and item.max() <= 1
    assert [p.name for p in dataset.paths] == [
        "b_wide.png",
        "a_grey.PNG",
    ]  # sorted by path: "b..." < "sub/..."
    wide_item, grey = items
    assert torch.allclose(grey, torch.ones_like(grey))
    assert torch.allclose(wide_item[0], torch.ones(8, 8)) and torch.allclose(wide_item[2], -torch.ones(8, 8))


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        ImageFolderDataset(tmp_path / "missing", resolution=32)
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match=r"holds no images.*\.png"):
        ImageFolderDataset(tmp_path, resolution=32)
