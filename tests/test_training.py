import torch

from arstudio.generators.backbone import BackboneConfig
from arstudio.generators.image import GeneratorConfig, ImageGenerator
from arstudio.io import load_safetensors
from arstudio.tokenizers.vq import VQConfig, VQTokenizer
from arstudio.training.common import TRAIN_STATE
from arstudio.training.generator import train_generator
from arstudio.training.tokenizer import train_tokenizer

VQ = VQConfig(resolution=32, ch=8, ch_mult=(1, 2, 2), z_channels=8, codebook_size=16, codebook_embed_dim=4,
              norm_groups=4, decoder_res_blocks=1)  # fmt: skip
GEN = GeneratorConfig(
    vocab_size=16, num_classes=24, backbone=BackboneConfig(dim=32, n_layer=1, n_head=4, grid_size=8)
)


def test_tokenizer_training_saves_and_resumes(tmp_path):
    train_tokenizer(tmp_path, VQ, steps=2, batch_size=4, save_every=2, photo_fraction=0.0)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / TRAIN_STATE).is_file()
    first = VQTokenizer.from_pretrained(tmp_path).state_dict()
    train_tokenizer(tmp_path, VQ, steps=3, batch_size=4, save_every=10, photo_fraction=0.0)  # one more step
    state = torch.load(tmp_path / TRAIN_STATE, weights_only=True)
    assert state["step"] == 3
    second = VQTokenizer.from_pretrained(tmp_path).state_dict()
    assert any(not torch.equal(first[k], second[k]) for k in first)


def test_generator_training_lowers_the_loss_and_resumes(tmp_path):
    vq_dir, gen_dir = tmp_path / "vq", tmp_path / "gen"
    train_tokenizer(vq_dir, VQ, steps=1, batch_size=2, photo_fraction=0.0)
    model = train_generator(
        gen_dir, vq_dir, GEN, steps=30, batch_size=16, lr=3e-3, num_images=64, save_every=15
    )
    tokens = load_safetensors(gen_dir / "train_tokens.safetensors")
    logits = model(tokens["tokens"][:32].long(), tokens["cond"][:32])
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 16), tokens["tokens"][:32].long().reshape(-1))
    assert loss < torch.log(torch.tensor(16.0))  # better than uniform over the 16 codes
    again = ImageGenerator.from_pretrained(gen_dir)
    assert torch.equal(again.head.output.weight, model.head.output.weight)
    assert torch.load(gen_dir / TRAIN_STATE, weights_only=True)["step"] == 30
