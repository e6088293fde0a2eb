"""Weights of hub presets: official checkpoints on the Hugging Face Hub, found locally or fetched on request.

Nothing here touches the network unless asked (``download=True``). Where the weights of a hub preset such as
``llamagen-b-256`` come from, first match wins:

1. ``weights=PATH`` (``load_pipeline(name, weights=PATH)``): only that folder is used. It holds either our
   converted layout (``tokenizer/`` + ``generator/``, each ``config.json`` + ``model.safetensors``) or the
   official files named in the preset (e.g. ``vq_ds16_c2i.pt`` + ``c2i_B_256.pt``), which are loaded
   directly with ``torch.load(weights_only=True)``, no conversion on disk.
2. ``$ARSTUDIO_WEIGHTS_DIR/<preset name>/``, then ``$ARSTUDIO_WEIGHTS_DIR/`` itself (so one folder of
   official files can serve both LlamaGen presets, which share the VQ file), either layout.
3. The converted cache ``$ARSTUDIO_CACHE/hub/<preset name>/`` (default ``~/.cache/arstudio``, or
   ``$XDG_CACHE_HOME/arstudio``), written by an earlier download.
4. The Hugging Face cache (files fetched before with ``hf_hub_download`` / ``hf download``), read with
   ``local_files_only=True``.
5. Only with ``download=True``: ``huggingface_hub.hf_hub_download`` fetches the official files into the
   Hugging Face cache and they are converted once into (3); later loads use (3).

Without a copy and without ``download=True``, ``HubWeightsNotFoundError`` (a ``FileNotFoundError``) names
the files, the Hub repository, where to put them and how to download them. Offline (``HF_HUB_OFFLINE=1``,
or the Hub cannot be reached) a download fails with ``HubOfflineError`` saying so.

Command line: ``python -m arstudio.convert.hub llamagen-b-256`` downloads and converts (= ``download=True``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from arstudio.convert.llamagen import convert_llamagen_to_pretrained, load_llamagen_gpt, load_llamagen_vq
from arstudio.convert.llamagen_t2i import load_llamagen_t2i
from arstudio.convert.mar import MAR_DRAFT, convert_mar_to_pretrained, load_mar, load_mar_vae, mar_config
from arstudio.presets import HubFile, HubWeights, Preset

logger = logging.getLogger(__name__)

WEIGHTS_DIR_ENV = "ARSTUDIO_WEIGHTS_DIR"
CACHE_DIR_ENV = "ARSTUDIO_CACHE"
PARTS = ("tokenizer", "generator")


@dataclass(frozen=True)
class Converter:
    """How a hub's official files become our modules: loaded directly, or written as our layout."""

    load_tokenizer: object  # (path, VQConfig) -> VQTokenizer
    load_generator: object  # (path, GeneratorConfig) -> ImageGenerator
    to_pretrained: object  # (tokenizer_file, generator_file, out_dir, gpt_model=, vq_model=) -> Path


def keep_official_files(tokenizer_file, generator_file, out_dir, gpt_model=None, vq_model=None) -> Path:
    """A "conversion" that keeps the official files (hard links, else copies) under their own names: for models
    whose generator class ``from_pretrained`` folders cannot name yet (LlamaGen t2i's masked generator), so the
    cache is found as the official layout and loaded by the converter, as a ``weights=`` folder would be."""
    for source in (tokenizer_file, generator_file):
        keep_official_file(source, out_dir)
    return Path(out_dir)


def keep_official_file(source, out_dir) -> Path:
    """``source`` in ``out_dir`` under its own name: a hard link (no copy), else a copy (another file system)."""
    source, target = Path(source), Path(out_dir) / Path(source).name
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source.resolve(), target)
    except OSError:
        shutil.copy2(source, target)
    return target


CONVERTERS: dict[str, Converter] = {
    "llamagen": Converter(load_llamagen_vq, load_llamagen_gpt, convert_llamagen_to_pretrained),
    "llamagen-t2i": Converter(load_llamagen_vq, load_llamagen_t2i, keep_official_files),
    "mar": Converter(load_mar_vae, load_mar, convert_mar_to_pretrained),
}


class HubWeightsNotFoundError(FileNotFoundError):
    """A hub preset's weights are not on this machine (and were not, or could not be, downloaded)."""


class HubOfflineError(HubWeightsNotFoundError):
    """A download was asked for while offline (HF_HUB_OFFLINE) or while the Hub could not be reached."""


@dataclass(frozen=True)
class WeightsSource:
    """Where a preset's two models are read from."""

    layout: str  # "pretrained": tokenizer/ and generator/ folders; "official": the hub's checkpoint files
    tokenizer: Path
    generator: Path
    origin: str  # for messages: "weights=...", "$ARSTUDIO_WEIGHTS_DIR/...", "converted cache", ...
    extras: dict[str, Path] = field(default_factory=dict)  # optional components found (HubWeights.extras)

    def path(self, part: str) -> Path:
        return {"tokenizer": self.tokenizer, "generator": self.generator}[part]


def _hub(preset: Preset) -> HubWeights:
    if preset.hub is None:
        raise ValueError(f"preset {preset.name!r} has no hub weights")
    if preset.hub.converter not in CONVERTERS:
        raise ValueError(f"preset {preset.name!r}: unknown converter {preset.hub.converter!r}")
    return preset.hub


def converter_for(preset: Preset) -> Converter:
    return CONVERTERS[_hub(preset).converter]


def cache_root() -> Path:
    """``$ARSTUDIO_CACHE``, else ``$XDG_CACHE_HOME/arstudio``, else ``~/.cache/arstudio``."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "arstudio"


def converted_dir(preset: Preset) -> Path:
    """Where a download of ``preset`` is converted to (our layout), and found on later loads."""
    return cache_root() / "hub" / preset.name


def find_in_folder(folder: str | Path, preset: Preset) -> WeightsSource | None:
    """The weights of ``preset`` in ``folder``: our converted layout or the official files; None if neither."""
    folder = Path(folder).expanduser()
    extras = _extras_in(folder, preset)
    if (folder / "tokenizer").is_dir() and (folder / "generator").is_dir():
        return WeightsSource("pretrained", folder / "tokenizer", folder / "generator", str(folder), extras)
    files = {part: folder / name for part, name in _hub(preset).files.items()}
    if all(path.is_file() for path in files.values()):
        return WeightsSource("official", files["tokenizer"], files["generator"], str(folder), extras)
    return None


def _extras_in(folder: Path, preset: Preset) -> dict[str, Path]:
    """The optional components in ``folder``: each under its path in its repository or its base name."""
    found = {}
    for extra in _hub(preset).extras:
        if extra.folder:  # a copy of the repository (several files): only in its own subfolder
            places = [folder / extra.folder / name for name in extra.names]
        else:
            places = [folder / extra.filename, folder / Path(extra.filename).name]
        path = next((place for place in places if place.is_file()), None)
        if path is not None:
            found[extra.component] = path
    return found


def _with_cached_extras(source: WeightsSource, preset: Preset) -> WeightsSource:
    """``source`` plus the optional components it lacks that the Hugging Face cache holds (never the network)."""
    missing = [extra for extra in _hub(preset).extras if extra.component not in source.extras]
    if not missing:
        return source
    try:
        errors = _hf_errors()
    except ImportError:
        return source
    extras = dict(source.extras)
    for extra in missing:
        for name in extra.names:
            try:
                extras[extra.component] = _hf_download(extra, name, local_files_only=True)
                break
            except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled, FileNotFoundError):
                continue
    return replace(source, extras=extras)


def _env_folders(preset: Preset) -> list[Path]:
    root = os.environ.get(WEIGHTS_DIR_ENV)
    if not root:
        return []
    root = Path(root).expanduser()
    return [root / preset.name, root]


def _offline_env() -> str | None:
    """The variable that puts the Hugging Face Hub offline, if one is set (read at call time)."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
            return name
    return None


def _hf_errors():
    """huggingface_hub's error classes (``errors`` module since 0.23; ``utils`` before)."""
    try:
        from huggingface_hub import errors
    except ImportError:  # pragma: no cover - old huggingface_hub
        from huggingface_hub import utils as errors
    return errors


def _hf_download(hub: HubWeights | HubFile, filename: str, local_files_only: bool) -> Path:
    import huggingface_hub  # lazy: an optional network dependency (diffusers/transformers bring it)

    return Path(
        huggingface_hub.hf_hub_download(
            hub.repo_id, filename, revision=hub.revision, local_files_only=local_files_only
        )
    )


def _hf_download_any(where, names: tuple[str, ...], local_files_only: bool, errors) -> Path:
    """The first of ``names`` the repository has (a file published under one of several names)."""
    for name in names[:-1]:
        try:
            return _hf_download(where, name, local_files_only)
        except errors.EntryNotFoundError:
            continue
    return _hf_download(where, names[-1], local_files_only)


def _from_hf_cache(preset: Preset) -> WeightsSource | None:
    """The official files if the Hugging Face cache already holds them; never touches the network."""
    try:
        errors = _hf_errors()
    except ImportError:
        return None
    paths = {}
    for part, filename in _hub(preset).files.items():
        try:
            paths[part] = _hf_download(preset.hub, filename, local_files_only=True)
        except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled, FileNotFoundError):
            return None
    return WeightsSource("official", paths["tokenizer"], paths["generator"], "Hugging Face cache")


def _instructions(preset: Preset) -> str:
    hub = _hub(preset)
    files = " and ".join(hub.files.values())
    urls = "\n".join(f"      {hub.url(name)}" for name in hub.files.values())
    return (
        f"To fix it, either:\n"
        f"  * download {files} from https://huggingface.co/{hub.repo_id}:\n{urls}\n"
        f"    put them in a folder and pass it: load_pipeline({preset.name!r}, weights='that/folder'); or put "
        f"them in $ARSTUDIO_WEIGHTS_DIR/{preset.name}/ (or $ARSTUDIO_WEIGHTS_DIR/) and set "
        f"{WEIGHTS_DIR_ENV};\n"
        f"  * or, online, let arstudio download and convert them once (into {converted_dir(preset)}): "
        f"load_pipeline({preset.name!r}, download=True), or on the command line "
        f"`python -m arstudio.convert.hub {preset.name}`."
        + (_text_encoder_note(preset) if preset.text_encoder == "flan-t5-xl" else "")
        + "".join(_extra_note(extra) for extra in hub.extras)
    )


def _extra_note(extra: HubFile) -> str:
    drafter = (
        "'continuous_speculative'" if extra.repo_id == "jadechoghari/mar" else "'speculative' / 'lantern'"
    )
    uses = {"drafter": drafter}.get(extra.component, repr(extra.component))
    where = (
        f"in a {extra.folder}/ folder beside the files above (`hf download {extra.repo_id} --local-dir "
        f"<folder>/{extra.folder}`)"
        if extra.folder
        else f"beside the files above (under that path or as {Path(extra.filename).name})"
    )
    return (
        f"\n  Optional, for decoding={uses}: {extra.filename} from https://huggingface.co/{extra.repo_id} "
        f"({extra.url}), {where}; download=True fetches it too."
    )


def _text_encoder_note(preset: Preset) -> str:
    from arstudio.convert.llamagen_t2i import T5_FOLDER, T5_NAME

    return (
        f"\n  The text encoder {T5_NAME} is separate: put a copy in a {T5_FOLDER}/ folder beside the files "
        f"(`hf download {T5_NAME} --local-dir <folder>/{T5_FOLDER}`), or have it in the Hugging Face cache; "
        "download=True fetches it too."
    )


def resolve_weights(
    preset: Preset, weights: str | Path | None = None, download: bool = False
) -> WeightsSource:
    """Find (or, with ``download=True``, fetch and convert) the weights of a hub preset; see the module doc.

    Raises:
        HubWeightsNotFoundError: no local copy, and ``download`` is False; or ``weights`` holds neither layout.
        HubOfflineError: ``download=True`` while offline or while the Hub cannot be reached.
    """
    hub = _hub(preset)
    if weights is not None:
        found = find_in_folder(weights, preset)
        if found is None:
            folder = Path(weights).expanduser()
            if folder.is_dir():
                what = f"holds {sorted(p.name for p in folder.iterdir())[:10] or 'nothing'}"
            else:
                what = "is not a folder" if folder.exists() else "does not exist"
            raise HubWeightsNotFoundError(
                f"weights={str(weights)!r} for preset {preset.name!r} {what}; it must hold either the official "
                f"files {' + '.join(hub.files.values())} (from https://huggingface.co/{hub.repo_id}) or the "
                f"converted tokenizer/ + generator/ folders.\n{_instructions(preset)}"
            )
        return found
    looked = []
    for folder in [*_env_folders(preset), converted_dir(preset)]:
        looked.append(str(folder))
        found = find_in_folder(folder, preset)
        if found is not None:
            return _with_cached_extras(found, preset)
    found = _from_hf_cache(preset)
    if found is not None:
        return _with_cached_extras(found, preset)
    looked.append("the Hugging Face cache")
    if not download:
        env_note = "" if os.environ.get(WEIGHTS_DIR_ENV) else f" (${WEIGHTS_DIR_ENV} is not set)"
        raise HubWeightsNotFoundError(
            f"preset {preset.name!r} needs the official checkpoints {' + '.join(hub.files.values())} from the "
            f"Hugging Face Hub repository {hub.repo_id}, and they are not on this machine; nothing is "
            f"downloaded unless you ask (download=True). Looked in: {', '.join(looked)}{env_note}.\n"
            f"{_instructions(preset)}"
        )
    return download_and_convert(preset)


def _offline_message(preset: Preset, reason: str) -> str:
    hub = _hub(preset)
    return (
        f"cannot download the weights of preset {preset.name!r} ({' + '.join(hub.files.values())} from "
        f"{hub.repo_id}): {reason}. Go online (and unset HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE) and retry, "
        f"or put the files in a local folder by hand.\n{_instructions(preset)}"
    )


def download_and_convert(preset: Preset) -> WeightsSource:
    """Fetch the preset's official files with ``hf_hub_download`` and convert them into ``converted_dir``."""
    hub = _hub(preset)
    offline = _offline_env()
    try:
        errors = _hf_errors()
    except ImportError as err:
        raise HubWeightsNotFoundError(
            f"download=True needs huggingface_hub (pip install huggingface_hub).\n{_instructions(preset)}"
        ) from err
    unreachable = (errors.OfflineModeIsEnabled, errors.LocalEntryNotFoundError, ConnectionError, TimeoutError)
    try:
        import httpx

        unreachable += (httpx.TransportError,)
    except ImportError:  # pragma: no cover - huggingface_hub < 1.0 uses requests (its errors are OSErrors)
        pass
    paths = {}
    wanted = [(part, hub, filename, ()) for part, filename in hub.files.items()]
    wanted += [(extra.component, extra, extra.filename, extra.alternatives) for extra in hub.extras]
    for part, where, filename, alternatives in wanted:
        try:
            # Offline, only the Hugging Face cache is read: no request leaves the machine.
            paths[part] = _hf_download_any(where, (filename, *alternatives), offline is not None, errors)
        except unreachable as err:
            reason = (
                f"{offline}=1 is set, so the Hub is offline and {filename} is not in the Hugging Face cache"
                if offline or isinstance(err, errors.OfflineModeIsEnabled)
                else f"the Hugging Face Hub could not be reached (no network?): {type(err).__name__}: {err}"
            )
            raise HubOfflineError(_offline_message(preset, reason)) from err
        except (
            errors.RepositoryNotFoundError,
            errors.RevisionNotFoundError,
            errors.EntryNotFoundError,
        ) as err:
            raise HubWeightsNotFoundError(
                f"the Hub has no {filename} in {where.repo_id}@{where.revision} ({type(err).__name__}); the preset "
                f"{preset.name!r} may be out of date.\n{_instructions(preset)}"
            ) from err
    out = converted_dir(preset)
    logger.info("converting %s + %s into %s", paths["tokenizer"], paths["generator"], out)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        converter_for(preset).to_pretrained(
            paths["tokenizer"], paths["generator"], tmp, gpt_model=preset.generator, vq_model=preset.tokenizer
        )
        for extra in hub.extras:  # optional components stay official files, found where a local copy would be
            keep_official_file(paths[extra.component], tmp / extra.folder)
        source = {
            "repo_id": hub.repo_id,
            "revision": hub.revision,
            "files": hub.files,
            "extras": {extra.component: extra.url for extra in hub.extras},
        }
        (tmp / "source.json").write_text(json.dumps(source, indent=2))
        if out.exists():  # a converted folder the loader rejected before (e.g. an older layout)
            shutil.rmtree(out)
        os.replace(tmp, out)  # readers only ever see a complete folder
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    found = find_in_folder(out, preset)  # our layout, or the official files kept as they are
    return replace(found, origin="converted cache (downloaded)")


def _load_dd1(preset: Preset, path: Path, generator, tokenizer, dtype, device):
    from arstudio.convert.distilled_decoding import llamagen_dd_config, load_llamagen_dd
    from arstudio.generators.distilled import codebook_fingerprint
    from arstudio.generators.drafter import target_fingerprint

    # The pairing is the preset's (DD's B model was distilled from c2i_B_256); fingerprinted so a saved pipeline
    # reloads with the usual check.
    config = llamagen_dd_config(preset.generator, token_dim=tokenizer.codebook_vectors().shape[1])
    config = replace(
        config,
        teacher_fingerprint=target_fingerprint(generator),
        tokenizer_fingerprint=codebook_fingerprint(tokenizer),
    )
    return load_llamagen_dd(path, config, dtype=dtype, device=device)


def _load_drafter(preset: Preset, path: Path, generator, tokenizer, dtype, device):
    """LANTERN's EAGLE drafter for LlamaGen; for MAR presets, MAR-B drafting for MAR-L / H (CSpD's pair)."""
    if preset.hub.converter == "mar":
        return load_mar(path, mar_config(MAR_DRAFT), dtype=dtype, device=device)
    from arstudio.convert.lantern import load_lantern_drafter

    return load_lantern_drafter(path, generator, dtype=dtype, device=device)


# component -> (preset, official file, loaded generator, tokenizer, dtype, device) -> module
EXTRA_LOADERS = {"dd1": _load_dd1, "drafter": _load_drafter}


def load_extra(preset: Preset, component: str, path: Path, generator, tokenizer, dtype=None, device=None):
    """An optional component of a hub preset (``HubWeights.extras``) from its official file, in bounded memory."""
    if component not in EXTRA_LOADERS:
        raise ValueError(f"preset {preset.name!r}: no loader for the {component!r} component")
    return EXTRA_LOADERS[component](preset, Path(path), generator, tokenizer, dtype, device)


# --------------------------------------------------------------------------------------------------------
# What a preset is, for listings (``arstudio presets``, the studio's "needs weights" mark)
# --------------------------------------------------------------------------------------------------------

FP32_BYTES = 4  # LlamaGen's released checkpoints are fp32 state dicts (DDP "model" / FSDP consolidated)


@dataclass(frozen=True)
class PresetFacts:
    """Size, resolution and availability of one preset; nothing is downloaded or loaded to learn them."""

    name: str
    task: str
    generator_params: int  # parameters of the generator (LlamaGen-3B: 3.1e9), counted on the meta device
    tokenizer_params: int
    resolution: int  # image side in pixels
    grid: int  # tokens per image side
    weights: str  # "hub" (official checkpoints), "shipped" (in the package), "untrained" or "random"
    local: bool  # the weights are on this machine (always True for shipped and random presets)
    where: str | None  # where they were found, for hub presets with a local copy
    download_bytes: int  # what download=True fetches (0 if nothing); see download_exact
    download_exact: bool  # True: sizes of the local files; False: estimated as fp32 parameters x 4 bytes

    @property
    def needs_weights(self) -> bool:
        """A hub preset without a local copy: it loads only with download=True or a weights= folder."""
        return self.weights == "hub" and not self.local


def _parameter_counts(preset: Preset) -> tuple[int, int]:
    # Imported here and by config type, not through pipelines/loading (a higher layer: an import cycle).
    from arstudio.generators.continuous import ContinuousGeneratorConfig, ContinuousImageGenerator
    from arstudio.generators.image import ImageGenerator
    from arstudio.generators.mar import MARConfig, MARGenerator
    from arstudio.generators.video import VideoGenerator, VideoGeneratorConfig
    from arstudio.tokenizers.bridge import BridgeConfig, BridgeTokenizer
    from arstudio.tokenizers.kl import KLConfig, KLTokenizer
    from arstudio.tokenizers.vq import VQTokenizer

    generator_classes = {
        VideoGeneratorConfig: VideoGenerator,
        ContinuousGeneratorConfig: ContinuousImageGenerator,
        MARConfig: MARGenerator,
    }
    tokenizer_classes = {KLConfig: KLTokenizer, BridgeConfig: BridgeTokenizer}
    from arstudio.convert.checkpoint import parameters_on_meta

    # Parameters on meta: a 3B model in no memory and no time. Buffers are computed for real (under
    # torch.device("meta") the bridge head's bin table, which reads a value, could not be built).
    with parameters_on_meta():
        generator = generator_classes.get(type(preset.generator), ImageGenerator)(preset.generator)
        tokenizer = tokenizer_classes.get(type(preset.tokenizer), VQTokenizer)(preset.tokenizer)
    return tuple(sum(p.numel() for p in model.parameters()) for model in (generator, tokenizer))


def _shipped_state(preset: Preset) -> str:
    if preset.weights is None:
        return "random"
    return "shipped" if (preset.weights_dir / "generator").is_dir() else "untrained"


def needs_weights(preset: Preset | str) -> bool:
    """A hub preset without a local copy of its files (``PresetFacts.needs_weights`` without counting
    parameters: cheap enough for the studio's preset list)."""
    if isinstance(preset, str):
        from arstudio.presets import get_preset

        preset = get_preset(preset)
    if preset.hub is None:
        return False
    try:
        resolve_weights(preset)
    except HubWeightsNotFoundError:
        return True
    return False


def human_size(count: float, unit: str = "") -> str:
    """3.1e9 -> '3.1B', 1.2e7 -> '12M' (parameters); with unit 'B': bytes, '12.4 GB'."""
    for scale, suffix in ((1e9, "G" if unit else "B"), (1e6, "M"), (1e3, "k")):
        if count >= scale:
            value = count / scale
            text = f"{value:.1f}" if value < 10 else f"{value:.0f}"
            return f"{text} {suffix}{unit}" if unit else f"{text}{suffix}"
    return f"{count:.0f} {unit}" if unit else f"{count:.0f}"


def preset_facts(preset: Preset | str) -> PresetFacts:
    """Params, resolution, download size and whether a local copy exists, for ``arstudio presets`` and the UI.

    Hub presets are looked for exactly where ``load_pipeline`` looks (``$ARSTUDIO_WEIGHTS_DIR``, the converted
    cache, the Hugging Face cache; never the network). The download size is the local files' size when they
    are here, else an estimate from the parameter counts at fp32 (the Hub's own sizes cannot be read offline).
    """
    if isinstance(preset, str):
        from arstudio.presets import get_preset

        preset = get_preset(preset)
    generator_params, tokenizer_params = _parameter_counts(preset)
    tokenizer = preset.tokenizer
    common = dict(
        name=preset.name,
        task=preset.task,
        generator_params=generator_params,
        tokenizer_params=tokenizer_params,
        resolution=tokenizer.resolution,
        grid=getattr(preset.generator, "grid_size", None) or preset.generator.backbone.grid_size,
    )
    if preset.hub is None:
        return PresetFacts(
            **common,
            weights=_shipped_state(preset),
            local=True,
            where=None,
            download_bytes=0,
            download_exact=True,
        )
    try:
        source = resolve_weights(preset)
    except HubWeightsNotFoundError:
        source = None
    if source is not None and source.layout == "official":
        size = sum(source.path(part).stat().st_size for part in PARTS)
        return PresetFacts(
            **common, weights="hub", local=True, where=source.origin, download_bytes=size, download_exact=True
        )
    copies = 2 if preset.hub.converter == "mar" else 1  # MAR's checkpoints hold "model" and "model_ema"
    estimate = (copies * generator_params + tokenizer_params) * FP32_BYTES
    return PresetFacts(
        **common,
        weights="hub",
        local=source is not None,
        where=None if source is None else source.origin,
        download_bytes=estimate,
        download_exact=False,
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m arstudio.convert.hub PRESET...``: download and convert hub presets' weights."""
    from arstudio.presets import get_preset, list_presets

    hub_presets = [name for name in list_presets() if get_preset(name).hub is not None]
    parser = argparse.ArgumentParser(
        prog="python -m arstudio.convert.hub",
        description="Download a hub preset's official checkpoints and convert them for arstudio "
        f"(into {cache_root() / 'hub'}; set {CACHE_DIR_ENV} to change it).",
    )
    parser.add_argument(
        "presets", nargs="+", choices=hub_presets, metavar="PRESET", help=", ".join(hub_presets)
    )
    args = parser.parse_args(argv)
    for name in args.presets:
        try:
            source = resolve_weights(get_preset(name), download=True)
        except HubWeightsNotFoundError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"{name}: {source.layout} weights in {source.tokenizer.parent} ({source.origin})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
