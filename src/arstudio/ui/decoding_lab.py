"""The Decoding lab: the Image tab's request run once per decoding strategy the preset supports, side by
side: images, wall-clock, target forwards, tokens per forward and accepted length.

Strategies come from ``pipe.decoding_strategies``, so speculative and LANTERN appear here as soon as a
preset ships a drafter for them; each runs with its own knobs from the Image tab's advanced controls.
"""

from __future__ import annotations

import gradio as gr
import numpy as np
import pandas as pd

from arstudio.ui.common import MODEL_QUEUE, PipelineCache, readable_errors
from arstudio.ui.controls import Controls, build_request

COLUMNS = [
    "strategy",
    "seconds",
    "forwards",
    "tokens_per_forward",
    "accepted_length",
    "speedup_vs_ar",
    "verifier_accuracy",
    "note",
]


def verifier_accuracy(output) -> float | None:
    """Quality where a judge exists: the share of images the rule-based shapes verifier reads as their
    class (shapes class presets at a canvas it supports); None elsewhere."""
    from arstudio.evaluation.verifier import class_accuracy

    labels = [m.get("class_label") for m in output.metadata]
    if not output.images or None in labels or not all(m.get("class_name") for m in output.metadata):
        return None
    try:
        return round(class_accuracy([np.asarray(i) for i in output.images], labels), 3)
    except ValueError:  # a canvas or class the verifier does not know
        return None


def _round(value, digits: int = 2):
    return None if value is None else round(float(value), digits)


def compare_strategies(cache: PipelineCache, controls: Controls, values: dict, progress=None):
    """Run the request with every strategy (one shared seed); return (gallery items, table rows)."""
    first = build_request(cache, controls, values)
    values = {**values, controls.randomize: False, controls.seed: first.seed}  # every strategy, same seeds
    items, rows = [], []
    strategies = list(first.pipe.decoding_strategies)
    for number, strategy in enumerate(strategies):
        if progress is not None:
            progress((number, len(strategies)), desc=f"running {strategy}")
        request = build_request(cache, controls, values, decoding=strategy)
        # One-shot distilled decoding samples the teacher as it was distilled: the pipeline refuses other
        # sampling settings. Here it runs without them, and the note says which of the user's were not used.
        conflicts = request.pipe.sampling_conflicts(strategy, request.kwargs)
        kwargs = {k: v for k, v in request.kwargs.items() if k not in conflicts}
        note = "; ".join(
            f"{k}={asked} not applied: distilled at {fixed}" for k, (asked, fixed) in conflicts.items()
        )
        output = request.pipe(**kwargs)
        stats, seconds = output.stats, output.timings["total_s"]
        items += [
            (image, f"{strategy} · seed {seed}")
            for image, seed in zip(output.images, output.seeds, strict=True)
        ]
        accepted = stats.get("accepted_length", stats.get("mean_accepted_length"))
        rows.append(
            [
                strategy,
                round(seconds, 3),
                stats.get("forwards"),
                _round(stats.get("tokens_per_forward")),
                _round(accepted),
                None,
                verifier_accuracy(output),
                note,
            ]
        )
    ar_seconds = next((r[1] for r in rows if r[0] == "ar"), None)
    for row in rows:
        row[5] = round(ar_seconds / row[1], 2) if ar_seconds and row[1] else None
    return items, pd.DataFrame(rows, columns=COLUMNS)


def chart_updates(frame: pd.DataFrame) -> tuple[dict, dict]:
    """The speed and quality charts of a comparison: bars from zero, strategies in the table's order (AR
    first, as ``pipe.decoding_strategies`` lists them), not sorted alphabetically."""
    order = list(frame["strategy"])
    top = float(frame["seconds"].max()) * 1.15 or 1.0
    judged = bool(frame["verifier_accuracy"].notna().all())
    return (
        gr.update(value=frame, y_lim=[0, top], sort=order),
        gr.update(value=frame, visible=judged, y_lim=[0, 1], sort=order),
    )


def build_decoding_lab(cache: PipelineCache, controls: Controls) -> None:
    gr.Markdown(
        "Runs the **Image** tab's request (preset, condition, seed, sampling, knobs) with plain AR and "
        "every accelerated strategy this preset supports, on the same seeds. One-shot distilled "
        "decoding (dd1, dd2) keeps the sampling it was distilled with; its row's note says when "
        "that differs from yours."
    )
    run = gr.Button("Compare strategies", variant="primary", elem_id="compare")
    gallery = gr.Gallery(
        label="Images per strategy", columns=4, height="auto", format="png", elem_id="decoding-gallery"
    )
    table = gr.Dataframe(headers=COLUMNS, label="Speed and quality", interactive=False)
    with gr.Row():
        chart = gr.BarPlot(x="strategy", y="seconds", title="Wall-clock per strategy (lower is faster)")
        quality = gr.BarPlot(
            x="strategy",
            y="verifier_accuracy",
            visible=False,
            title="Verifier accuracy: images showing their class (higher is better)",
        )

    @readable_errors
    def on_run(values: dict, progress=gr.Progress()):  # noqa: B008 - Gradio's injection idiom
        items, frame = compare_strategies(cache, controls, values, progress)
        return (items, frame, *chart_updates(frame))

    run.click(
        on_run,
        controls.inputs(),
        [gallery, table, chart, quality],
        api_name="compare",
        concurrency_id=MODEL_QUEUE,
    )
