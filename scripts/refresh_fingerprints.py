"""Rewrite the pairing fingerprints in the shipped drafter/dd1/dd2 configs from the shipped generator and tokenizer.

Only for a change of how the *same* weights are stored or hashed (a float16/int8 re-store by
``scripts/ship_weights.py --restore``, a new fingerprint formula): first check that the pairing held before the
change (``load_pipeline(preset)`` loaded the models). A retrained generator or tokenizer needs new decoding models,
not new fingerprints.

    python scripts/refresh_fingerprints.py            # show old -> new
    python scripts/refresh_fingerprints.py --write
"""

from __future__ import annotations

import argparse
import json

from arstudio.generators.distilled import codebook_fingerprint
from arstudio.generators.drafter import target_fingerprint
from arstudio.io import CONFIG_NAME
from arstudio.pipelines.loading import load_pipeline, load_tokenizer
from arstudio.presets import WEIGHTS_ROOT

PAIRED = ("shapes-c2i", "shapes-t2i")  # presets whose folders hold a drafter/ or dd*/ beside the generator


def new_fingerprints(preset: str) -> dict[str, str]:
    generator = load_pipeline(preset, device="cpu", decoding_models=False).generator
    return {
        "target_fingerprint": target_fingerprint(generator),
        "teacher_fingerprint": target_fingerprint(generator),
        "tokenizer_fingerprint": codebook_fingerprint(load_tokenizer(preset, device="cpu")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite the configs (default: only show)")
    args = parser.parse_args()
    for preset in PAIRED:
        fresh = new_fingerprints(preset)
        for part in ("drafter", "dd1", "dd2"):
            path = WEIGHTS_ROOT / preset / part / CONFIG_NAME
            if not path.is_file():
                continue
            config = json.loads(path.read_text())
            for key in sorted(set(config) & set(fresh)):
                print(f"{preset}/{part} {key}: {config[key]} -> {fresh[key]}")
                config[key] = fresh[key]
            if args.write:
                path.write_text(json.dumps(config, indent=2))


if __name__ == "__main__":
    main()
