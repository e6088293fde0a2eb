"""Control maps for training: computed once from the training images (ControlAR's offline controls), stored
beside the tokens, and drawn per batch with a random control type and control dropout."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from arstudio.data.control import make_control
from arstudio.data.shapes import make_class_item, make_text_item
from arstudio.io import atomic_write_bytes, load_safetensors
from arstudio.training.batches import ConditionedBatches

CONTROLS_FILE = "train_controls.safetensors"


def make_control_table(condition: str, seed: int, num_images: int, resolution: int, types) -> dict:
    """{type: uint8 (num_images, R, R) of 0/1} for the same images ``tokenize_shapes`` encodes (item i of
    the seeded class or caption set); masks come exactly from the objects."""
    maps = {kind: np.zeros((num_images, resolution, resolution), dtype=np.uint8) for kind in types}
    for index in tqdm(range(num_images), desc="control maps"):
        if condition == "class":
            image, _, obj = make_class_item(seed, index, resolution)
            objects = [obj]
        else:
            image, _, objects = make_text_item(seed, index, resolution)
        for kind in types:
            maps[kind][index] = make_control(image, kind, objects)
    return {kind: torch.from_numpy(table) for kind, table in maps.items()}


def load_or_make_controls(out_dir: Path, condition: str, seed: int, num_images: int, resolution: int, types):
    """The control table, cached in ``out_dir`` (a resumed run reuses it)."""
    from safetensors.torch import save

    path = Path(out_dir) / CONTROLS_FILE
    if path.is_file():
        table = load_safetensors(path)
        if set(table) == set(types) and all(t.shape[0] == num_images for t in table.values()):
            return table
    table = make_control_table(condition, seed, num_images, resolution, types)
    atomic_write_bytes(path, save({k: v.contiguous() for k, v in table.items()}))
    return table


@dataclass
class ControlBatch:
    maps: torch.Tensor  # (B, 1, R, R) float in [0, 1]
    kinds: list[str]  # control type per row
    keep: torch.Tensor  # (B,) bool: False = null control (dropout)


class ControlledBatches(ConditionedBatches):
    """``ConditionedBatches`` plus each row's control map: a random type per row, and the control alone
    dropped to the null control at ``dropout_prob`` (independently of the condition's dropout, so the model
    learns all four streams that separate class and control guidance combine)."""

    def __init__(self, tokens, conds, batch_size, seed, conditioning, controls: dict, dropout_prob: float):
        super().__init__(tokens, conds, batch_size, seed, conditioning)
        self.controls, self.types, self.dropout_prob = controls, tuple(controls), dropout_prob

    def next(self, device=None):
        index, cond = self.draw()
        type_ids = torch.randint(0, len(self.types), (self.batch_size,), generator=self.generator)
        keep = torch.rand(self.batch_size, generator=self.generator) >= self.dropout_prob
        stacked = torch.stack([self.controls[kind][index] for kind in self.types])  # (types, B, R, R)
        maps = stacked[type_ids, torch.arange(self.batch_size)].float()[:, None]  # (B, 1, R, R)
        control = ControlBatch(maps.to(device), [self.types[i] for i in type_ids.tolist()], keep.to(device))
        return self.tokens[index].to(device), cond.to(device), control
