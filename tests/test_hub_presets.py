"""Hub presets (llamagen-*): listed, a clear error offline or without a local copy, a local override, and the
download path with ``hf_hub_download`` replaced by a local copy (no request ever leaves the machine).

The real LlamaGen files are large, so the loading tests use a tiny preset of the same kind whose "official"
files are written here with LlamaGen's key layout (the helpers of test_convert_llamagen.py).
"""

import shutil
from pathlib import Path

import pytest
import torch

import arstudio
from arstudio import presets
from arstudio.convert import convert_llamagen_to_pretrained, hub
from arstudio.convert.hub import HubOfflineError, HubWeightsNotFoundError
from arstudio.pipelines.loading import load_pipeline, load_tokenizer
from arstudio.presets import HubWeights, Preset, get_preset
from tests.test_convert_llamagen import GPT_CFG, VQ_CFG, official_gpt_state, official_vq_state

TINY = "test-tiny-hub"
TINY_HUB = HubWeights(
    repo_id="example/tiny-llamagen", tokenizer_file="vq_tiny.pt", generator_file="c2i_tiny.pt"
)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No weights dir, an empty arstudio cache and Hugging Face cache, offline, and the tiny hub preset."""
    monkeypatch.delenv(hub.WEIGHTS_DIR_ENV, raising=False)
    monkeypatch.setenv(hub.CACHE_DIR_ENV, str(tmp_path / "arstudio-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    tiny = Preset(
        name=TINY,
        description="tiny hub-style preset for tests",
        task="class-to-image",
        tokenizer=VQ_CFG,
        generator=GPT_CFG,
        hub=TINY_HUB,
        defaults={"guidance_scale": 2.0, "temperature": 1.0, "top_k": 0, "top_p": 1.0},
    )
    monkeypatch.setitem(presets._REGISTRY, TINY, tiny)


@pytest.fixture
def official_dir(tmp_path) -> Path:
    """A folder with the tiny preset's two official-layout checkpoints, as LlamaGen's training saves them."""
    folder = tmp_path / "official"
    folder.mkdir()
    torch.save({"model": official_vq_state(1)}, folder / TINY_HUB.tokenizer_file)
    torch.save({"model": official_gpt_state(2), "steps": 10}, folder / TINY_HUB.generator_file)
    return folder


@pytest.fixture
def fake_hub(monkeypatch, official_dir, tmp_path):
    """``hf_hub_download`` served from ``official_dir`` into a fake HF cache; records every call."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    calls = []
    cache = tmp_path / "fake-hf-cache"

    def fake_download(repo_id, filename, *, revision=None, local_files_only=False, **kwargs):
        calls.append((repo_id, filename, revision, local_files_only))
        cached = cache / repo_id / filename
        if not cached.exists():
            if local_files_only:
                raise LocalEntryNotFoundError(f"{filename} is not in the cache")
            assert repo_id == TINY_HUB.repo_id, "only the tiny preset may be downloaded"
            cached.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(official_dir / filename, cached)
        return str(cached)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    return calls


def sample(pipe, seed=0):
    return pipe(class_labels=[0, 3], generator=torch.Generator().manual_seed(seed), output_type="np")


# name -> (generator file, layers, dim, grid, guidance): LlamaGen's README tables and GETTING_STARTED.md FID commands
LLAMAGEN_C2I = {
    "llamagen-b-256": ("c2i_B_256.pt", 12, 768, 16, 2.0),
    "llamagen-b-384": ("c2i_B_384.pt", 12, 768, 24, 2.0),
    "llamagen-l-256": ("c2i_L_256.pt", 24, 1024, 16, 2.0),
    "llamagen-l-384": ("c2i_L_384.pt", 24, 1024, 24, 2.0),
    "llamagen-xl-384": ("c2i_XL_384.pt", 36, 1280, 24, 1.75),
    "llamagen-xxl-384": ("c2i_XXL_384.pt", 48, 1536, 24, 1.75),
    "llamagen-3b-384": ("c2i_3B_384.pt", 24, 3200, 24, 1.65),
}


def test_llamagen_presets_are_listed_with_their_hub_files():
    assert arstudio.list_presets("llamagen-*", task="class-to-image") == sorted(LLAMAGEN_C2I)
    for name, (gpt_file, layers, dim, grid, guidance) in LLAMAGEN_C2I.items():
        preset = get_preset(name)
        assert preset.weights is None and preset.hub.repo_id == "FoundationVision/LlamaGen"
        assert preset.hub.files == {"tokenizer": "vq_ds16_c2i.pt", "generator": gpt_file}
        backbone = preset.generator.backbone
        assert (backbone.n_layer, backbone.dim, backbone.grid_size, preset.tokenizer.resolution) == (
            layers,
            dim,
            grid,
            grid * 16,
        )
        assert preset.tokenizer.grid_size == grid and backbone.zero_prefix_rope
        assert preset.generator.num_classes == 1000
        assert preset.defaults == {"guidance_scale": guidance, "temperature": 1.0, "top_k": 0, "top_p": 1.0}


@pytest.mark.parametrize("name", ["llamagen-b-256", "llamagen-3b-384"])
def test_real_hub_preset_without_a_local_copy_names_the_files_and_the_fix(name, monkeypatch):
    import huggingface_hub

    real = huggingface_hub.hf_hub_download

    def only_local(*args, **kwargs):  # the cache lookup may run; a network request must not
        assert kwargs.get("local_files_only"), "a download was attempted"
        return real(*args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", only_local)
    with pytest.raises(HubWeightsNotFoundError) as err:
        load_pipeline(name, device="cpu")
    message = str(err.value)
    hub_files = get_preset(name).hub.files.values()
    for needle in (
        *hub_files,
        "FoundationVision/LlamaGen",
        "download=True",
        "weights=",
        "ARSTUDIO_WEIGHTS_DIR",
        f"python -m arstudio.convert.hub {name}",
        "https://huggingface.co/FoundationVision/LlamaGen/resolve/main/",
    ):
        assert needle in message
    assert isinstance(err.value, FileNotFoundError)  # the CLI turns these into a one-line error

    with pytest.raises(HubOfflineError, match="HF_HUB_OFFLINE=1 is set"):
        load_pipeline(name, device="cpu", download=True)


def test_download_when_the_hub_is_unreachable_says_so(monkeypatch):
    import httpx
    import huggingface_hub

    def unreachable(repo_id, filename, *, local_files_only=False, **kwargs):
        if local_files_only:
            from huggingface_hub.errors import LocalEntryNotFoundError

            raise LocalEntryNotFoundError("not cached")
        raise httpx.ConnectError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    with pytest.raises(HubOfflineError, match="could not be reached") as err:
        load_tokenizer("llamagen-b-256", device="cpu", download=True)
    assert "vq_ds16_c2i.pt" in str(err.value) and "weights=" in str(err.value)


def test_local_override_with_official_files_or_converted_folder(official_dir, tmp_path):
    pipe = load_pipeline(TINY, device="cpu", weights=official_dir)
    out = sample(pipe)
    assert len(out.images) == 2 and out.images[0].shape == (8, 8, 3)
    assert out.metadata[0]["guidance_scale"] == 2.0  # the preset's default
    # The same weights converted to our layout give the same images.
    converted = convert_llamagen_to_pretrained(
        official_dir / TINY_HUB.tokenizer_file,
        official_dir / TINY_HUB.generator_file,
        tmp_path / "converted",
        gpt_model=GPT_CFG,
        vq_model=VQ_CFG,
    )
    again = sample(load_pipeline(TINY, device="cpu", weights=converted))
    assert torch.equal(out.tokens, again.tokens)
    assert (out.images[0] == again.images[0]).all()


def test_weights_dir_env_var(official_dir, tmp_path, monkeypatch):
    root = tmp_path / "weights-root"
    (root / TINY).mkdir(parents=True)
    for name in TINY_HUB.files.values():
        shutil.copy(official_dir / name, root / TINY / name)
    monkeypatch.setenv(hub.WEIGHTS_DIR_ENV, str(root))
    assert hub.resolve_weights(get_preset(TINY)).origin == str(root / TINY)
    reference = sample(load_pipeline(TINY, device="cpu", weights=official_dir))
    assert torch.equal(sample(load_pipeline(TINY, device="cpu")).tokens, reference.tokens)
    # The files directly in the root work too (one folder for presets that share files).
    monkeypatch.setenv(hub.WEIGHTS_DIR_ENV, str(official_dir))
    assert hub.resolve_weights(get_preset(TINY)).origin == str(official_dir)


def test_override_folder_without_the_files_is_a_clear_error(official_dir, tmp_path):
    (official_dir / TINY_HUB.generator_file).unlink()
    with pytest.raises(HubWeightsNotFoundError, match="c2i_tiny.pt") as err:
        load_pipeline(TINY, device="cpu", weights=official_dir)
    assert "vq_tiny.pt" in str(err.value)  # what the folder holds
    with pytest.raises(HubWeightsNotFoundError, match="does not exist"):
        load_pipeline(TINY, device="cpu", weights=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="tokenizer/ and generator/"):
        load_pipeline("test-tiny-c2i", device="cpu", weights=tmp_path / "nowhere")


def test_download_converts_once_and_reuses_the_converted_cache(fake_hub, official_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with pytest.raises(HubWeightsNotFoundError, match="download=True"):  # asked for nothing: no download
        load_pipeline(TINY, device="cpu")
    assert all(local for *_, local in fake_hub)

    pipe = load_pipeline(TINY, device="cpu", download=True)
    downloads = [(file, revision) for _, file, revision, local in fake_hub if not local]
    assert downloads == [("vq_tiny.pt", "main"), ("c2i_tiny.pt", "main")]
    converted = hub.converted_dir(get_preset(TINY))
    assert (converted / "generator" / "model.safetensors").is_file() and (converted / "source.json").is_file()
    assert not list(converted.parent.glob("*.tmp-*"))
    reference = sample(load_pipeline(TINY, device="cpu", weights=official_dir))
    assert torch.equal(sample(pipe).tokens, reference.tokens)

    # Next time, offline and without download=True: the converted cache, no Hub call at all.
    fake_hub.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.resolve_weights(get_preset(TINY)).origin == str(converted)
    assert torch.equal(sample(load_pipeline(TINY, device="cpu")).tokens, reference.tokens)
    assert fake_hub == []


def test_hf_cache_copy_is_used_without_download(fake_hub, official_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    hub.download_and_convert(get_preset(TINY))  # fills the fake HF cache
    shutil.rmtree(hub.converted_dir(get_preset(TINY)))
    fake_hub.clear()
    source = hub.resolve_weights(get_preset(TINY))
    assert (source.layout, source.origin) == ("official", "Hugging Face cache")
    assert all(local for *_, local in fake_hub)


def test_download_command_line(fake_hub, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert hub.main([TINY]) == 0
    assert TINY in capsys.readouterr().out
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.main(["llamagen-b-256"]) == 2
    assert "HF_HUB_OFFLINE=1 is set" in capsys.readouterr().err


def test_llamagen_t2i_presets():
    assert arstudio.list_presets("llamagen-*", task="text-to-image") == [
        "llamagen-t2i-xl-256",
        "llamagen-t2i-xl-512",
    ]
    for name, stage, grid in (
        ("llamagen-t2i-xl-256", "stage1_256", 16),
        ("llamagen-t2i-xl-512", "stage2_512", 32),
    ):
        preset = get_preset(name)
        assert preset.hub.repo_id == "peizesun/llamagen_t2i" and preset.hub.converter == "llamagen-t2i"
        assert preset.hub.files == {"tokenizer": "vq_ds16_t2i.pt", "generator": f"t2i_XL_{stage}.pt"}
        assert (preset.generator.backbone.grid_size, preset.text_len, preset.generator.text_dim) == (
            grid,
            120,
            2048,
        )
        assert preset.text_encoder == "flan-t5-xl" and preset.tokenizer.grid_size == grid
        assert preset.defaults == {"guidance_scale": 7.5, "temperature": 1.0, "top_k": 1000, "top_p": 1.0}


def test_t2i_download_keeps_the_official_files_and_loads_the_masked_generator(monkeypatch, tmp_path):
    """The t2i converter keeps the official files in the cache (its masked generator has no from_pretrained
    folder yet); the next load finds them there as the official layout."""
    from arstudio.convert.llamagen_t2i import LlamaGenT2IGenerator
    from tests.test_convert_llamagen_t2i import official_t2i_state, tiny_config

    folder = tmp_path / "hub-files"
    folder.mkdir()
    torch.save({"model": official_vq_state(1)}, folder / "vq_t2i.pt")
    torch.save({"model": official_t2i_state()}, folder / "t2i_tiny.pt")
    t2i_hub = HubWeights(
        repo_id="example/t2i",
        tokenizer_file="vq_t2i.pt",
        generator_file="t2i_tiny.pt",
        converter="llamagen-t2i",
    )
    preset = Preset(
        name="test-tiny-hub-t2i",
        description="",
        task="text-to-image",
        tokenizer=VQ_CFG,
        generator=tiny_config(),
        hub=t2i_hub,
    )
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(
        huggingface_hub, "hf_hub_download", lambda repo_id, filename, **kw: str(folder / filename)
    )
    source = hub.download_and_convert(preset)
    assert (source.layout, source.generator.name) == ("official", "t2i_tiny.pt")
    assert source.generator.parent == hub.converted_dir(preset)
    generator = hub.converter_for(preset).load_generator(source.generator, tiny_config())
    assert isinstance(generator, LlamaGenT2IGenerator)


def test_preset_facts_for_listings(official_dir, monkeypatch):
    facts = hub.preset_facts("llamagen-3b-384")  # counted on the meta device: no 12 GB, no download
    assert (facts.resolution, facts.grid, facts.weights, facts.local, facts.needs_weights) == (
        384,
        24,
        "hub",
        False,
        True,
    )
    assert round(facts.generator_params / 1e9, 1) == 3.1 and round(facts.tokenizer_params / 1e6) == 72
    assert not facts.download_exact and facts.download_bytes == 4 * (
        facts.generator_params + facts.tokenizer_params
    )
    assert (
        hub.preset_facts("llamagen-b-256").generator_params
        == hub.preset_facts("llamagen-b-384").generator_params
    )

    tiny = hub.preset_facts(TINY)
    assert tiny.needs_weights and tiny.where is None
    monkeypatch.setenv(hub.WEIGHTS_DIR_ENV, str(official_dir))
    tiny = hub.preset_facts(TINY)
    on_disk = sum((official_dir / name).stat().st_size for name in TINY_HUB.files.values())
    assert (tiny.local, tiny.needs_weights, tiny.where) == (True, False, str(official_dir))
    assert (tiny.download_bytes, tiny.download_exact) == (on_disk, True)

    shipped, random = hub.preset_facts("shapes-c2i"), hub.preset_facts("test-tiny-c2i")
    assert (shipped.weights, shipped.local, shipped.download_bytes, shipped.resolution, shipped.grid) == (
        "shipped",
        True,
        0,
        32,
        8,
    )
    assert (random.weights, random.needs_weights) == ("random", False)


@pytest.fixture
def t2i_hub(tmp_path, monkeypatch):
    """A tiny t2i hub preset with LlamaGen's converter and FLAN-T5 text side, and a folder of its official files
    plus a tiny T5 in flan-t5-xl/ (as ``hf download google/flan-t5-xl --local-dir`` lays it out)."""
    from tests.test_convert_llamagen_t2i import official_t2i_state, save_tiny_t5, tiny_config

    folder = tmp_path / "t2i-official"
    folder.mkdir()
    torch.save({"model": official_vq_state(1)}, folder / "vq_t2i.pt")
    torch.save(
        {"model": official_t2i_state(), "args": __import__("argparse").Namespace(gpt_model="GPT-XL")},
        folder / "t2i_tiny.pt",
    )
    save_tiny_t5(folder / "flan-t5-xl")
    t2i = HubWeights(
        repo_id="example/t2i",
        tokenizer_file="vq_t2i.pt",
        generator_file="t2i_tiny.pt",
        converter="llamagen-t2i",
    )
    preset = Preset(
        name="test-tiny-hub-t2i",
        description="",
        task="text-to-image",
        tokenizer=VQ_CFG,
        generator=tiny_config(),
        hub=t2i,
        text_encoder="flan-t5-xl",
        defaults={"guidance_scale": 7.5, "temperature": 1.0, "top_k": 1000, "top_p": 1.0},
    )
    monkeypatch.setitem(presets._REGISTRY, preset.name, preset)
    return folder


def test_t2i_preset_runs_end_to_end_from_a_folder_of_official_files(t2i_hub):
    from arstudio.convert.llamagen_t2i import FlanT5TextEncoder, LlamaGenT2IGenerator

    pipe = load_pipeline("test-tiny-hub-t2i", device="cpu", weights=t2i_hub)
    assert isinstance(pipe.generator, LlamaGenT2IGenerator) and isinstance(
        pipe.text_encoder, FlanT5TextEncoder
    )
    out = pipe(
        prompt=["a red cat", "the blue dog on the mat"],
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    )
    assert len(out.images) == 2 and out.images[0].shape == (8, 8, 3)
    assert out.metadata[0]["guidance_scale"] == 7.5
    again = load_pipeline("test-tiny-hub-t2i", device="cpu", weights=t2i_hub)(
        prompt=["a red cat", "the blue dog on the mat"],
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    )
    assert torch.equal(out.tokens, again.tokens)

    shutil.rmtree(t2i_hub / "flan-t5-xl")  # no local T5 and offline: says what to do, downloads nothing
    with pytest.raises(FileNotFoundError, match=r"google/flan-t5-xl.*download=True.*flan-t5-xl/"):
        load_pipeline("test-tiny-hub-t2i", device="cpu", weights=t2i_hub)


def test_real_t2i_preset_takes_its_text_encoder_from_the_weights_folder(tmp_path):
    """``llamagen-t2i-xl-256`` names "flan-t5-xl", found beside its official files; a T5 of another width is
    refused (a 2048-wide one-layer T5 stands in for FLAN-T5-XL)."""
    from arstudio.convert.hub import WeightsSource
    from arstudio.pipelines.loading import _load_text_encoder
    from tests.test_convert_llamagen_t2i import save_tiny_t5

    preset = get_preset("llamagen-t2i-xl-256")
    source = WeightsSource("official", tmp_path / "vq_ds16_t2i.pt", tmp_path / "t2i_XL_stage1_256.pt", "test")
    save_tiny_t5(tmp_path / "flan-t5-xl", dim=2048)
    encoder = _load_text_encoder(preset, source, "cpu", torch.float32, download=False)
    assert encoder(["a red cat"]).shape == (1, 120, 2048)
    shutil.rmtree(tmp_path / "flan-t5-xl")
    save_tiny_t5(tmp_path / "flan-t5-xl", dim=16)
    with pytest.raises(ValueError, match="gives 16-d states; its generator reads 2048-d text"):
        _load_text_encoder(preset, source, "cpu", torch.float32, download=False)


def test_hub_weights_load_straight_in_the_asked_dtype_and_bounded(official_dir, tmp_path, monkeypatch):
    """Official files and the converted cache are both read one tensor at a time into the pipeline's dtype (no
    float32 copy of a big model first): every tensor ``materialise`` casts goes straight to bfloat16."""
    from arstudio.convert import checkpoint

    casts = []
    real = checkpoint.materialise

    def spy(build, state, rename, source, dtype=None, device=None):
        casts.append((source, dtype))
        return real(build, state, rename, source, dtype, device)

    for module in (checkpoint, __import__("arstudio.convert.llamagen", fromlist=["x"])):
        monkeypatch.setattr(module, "materialise", spy)
    pipe = load_pipeline(TINY, device="cpu", dtype=torch.bfloat16, weights=official_dir)
    assert [dtype for _, dtype in casts] == [torch.bfloat16, torch.bfloat16]
    assert {p.dtype for p in pipe.generator.parameters()} == {torch.bfloat16}
    converted = convert_llamagen_to_pretrained(
        official_dir / TINY_HUB.tokenizer_file,
        official_dir / TINY_HUB.generator_file,
        tmp_path / "converted",
        gpt_model=GPT_CFG,
        vq_model=VQ_CFG,
    )
    casts.clear()
    again = load_pipeline(TINY, device="cpu", dtype=torch.bfloat16, weights=converted)
    assert [(Path(eval(source)).parent.name, dtype) for source, dtype in casts] == [
        ("tokenizer", torch.bfloat16),
        ("generator", torch.bfloat16),
    ]
    assert torch.equal(sample(pipe).tokens, sample(again).tokens)


def test_presets_command_shows_size_resolution_download_and_local_copy(official_dir, monkeypatch, capsys):
    from arstudio.cli import main

    assert main(["presets"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "3.1B  384 px  hub: needs weights (download 13 GB est.)" in lines["llamagen-3b-384"]
    assert "random init" in lines["test-tiny-c2i"] and "2.9M  32 px   shipped weights" in lines["shapes-c2i"]
    assert "hub: needs weights (download" in lines[TINY]
    monkeypatch.setenv(hub.WEIGHTS_DIR_ENV, str(official_dir))
    assert main(["presets"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith(TINY + " "))
    size = hub.human_size(sum((official_dir / n).stat().st_size for n in TINY_HUB.files.values()), "B")
    assert f"hub: local copy ({size})" in line


def test_studio_marks_presets_that_need_weights(official_dir, monkeypatch):
    from arstudio.ui.controls import NEEDS_WEIGHTS, preset_choices

    choices = dict((value, label) for label, value in preset_choices(["llamagen-b-256", "shapes-c2i", TINY]))
    assert choices == {
        "llamagen-b-256": "llamagen-b-256" + NEEDS_WEIGHTS,
        "shapes-c2i": "shapes-c2i",
        TINY: TINY + NEEDS_WEIGHTS,
    }
    monkeypatch.setenv(hub.WEIGHTS_DIR_ENV, str(official_dir))
    assert dict((v, lab) for lab, v in preset_choices([TINY]))[TINY] == TINY
