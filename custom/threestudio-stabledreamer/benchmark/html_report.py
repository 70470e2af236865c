"""``results.html``: the comparison as one self-contained page.

The page helpers (``png_data_uri``, ``link``, ``table_row``, ``video_element``,
``write_page``) also write the known-answer lab's page (``lab.report``).

The page holds the per-method and per-run tables, three plots drawn with matplotlib and
embedded as PNG data (CLIP score against wall time per method; CLIP similarity to the
prompt per test-view azimuth; view agreement per azimuth), and the side-by-side videos.
Videos, run folders and logs are linked relative to the page, so the output folder can be
moved or served as it is.
"""
from __future__ import annotations

import base64
import html
import io
import os
from collections import defaultdict
from pathlib import Path
from statistics import mean
from typing import Sequence

from .multiface import BACK_THRESHOLD_DEG, FRONT_THRESHOLD_DEG
from .report import MethodSummary, RunResult, format_optional, format_r_precision
from .runs import prompt_slug

STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #bbb; padding: 0.3em 0.6em; text-align: right; }
th { background: #eee; }
td.text { text-align: left; }
figure { display: inline-block; margin: 0 1em 1em 0; }
video { max-width: 100%; display: block; }
p.note { max-width: 60em; }
"""


def png_data_uri(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _per_azimuth(results: Sequence[RunResult], method: str, value) -> tuple[list[float], list[float]]:
    """Azimuths (degrees, sorted) and the mean of ``value(result, view index)`` over the
    method's runs at each azimuth."""
    values = defaultdict(list)
    for result in results:
        if result.record.method == method:
            for index, azimuth in enumerate(result.views.azimuth_deg):
                values[round(azimuth, 3)].append(value(result, index))
    azimuths = sorted(values)
    return azimuths, [mean(values[a]) for a in azimuths]


def _shade_view_bins(axes) -> None:
    """Grey bands over the back bin and light ones over the side bins (azimuth 0..360)."""
    front, back = FRONT_THRESHOLD_DEG, 180.0 - BACK_THRESHOLD_DEG
    axes.axvspan(front, back, color="0.93", zorder=0)
    axes.axvspan(back, 360.0 - back, color="0.82", zorder=0)
    axes.axvspan(360.0 - back, 360.0 - front, color="0.93", zorder=0)
    axes.set_xlim(0, 360)
    axes.set_xticks([0, 45, 90, 135, 180, 225, 270, 315, 360])


def plot_figures(results: Sequence[RunResult], methods: Sequence[str]) -> dict[str, str]:
    """{title: PNG data URI} of the three plots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    figures = {}

    figure, axes = plt.subplots(figsize=(6, 4))
    for method in methods:
        own = [r for r in results if r.record.method == method]
        if not own:
            continue
        times = [r.record.wall_time_s for r in own]
        scores = [r.clip.clip_score for r in own]
        axes.scatter(times, scores, color=colours[method], alpha=0.4, s=20)
        axes.scatter([mean(times)], [mean(scores)], color=colours[method], s=90, edgecolor="black", label=method)
    axes.set_xlabel("wall time per run (s)")
    axes.set_ylabel("CLIP score (cosine)")
    axes.set_title("CLIP score against wall time (small: runs, large: method mean)")
    axes.legend(fontsize="small")
    figures["CLIP score against wall time"] = png_data_uri(figure)
    plt.close(figure)

    panels = (
        ("CLIP similarity per azimuth", "mean cos(view, prompt)",
         lambda r, i: r.clip.view_similarities[i]),
        ("View agreement per azimuth", "fraction of runs whose view CLIP classifies as its bin",
         lambda r, i: float(r.views.predicted[i] == r.views.expected[i])),
    )
    for title, ylabel, value in panels:
        figure, axes = plt.subplots(figsize=(6, 4))
        _shade_view_bins(axes)
        for method in methods:
            azimuths, values = _per_azimuth(results, method, value)
            if azimuths:
                axes.plot(azimuths, values, marker="o", color=colours[method], label=method)
        axes.set_xlabel("camera azimuth (degrees; shaded: side, dark: back)")
        axes.set_ylabel(ylabel)
        axes.set_title(title)
        axes.legend(fontsize="small")
        figures[title] = png_data_uri(figure)
        plt.close(figure)
    return figures


def relative(target: str | Path, page_dir: Path) -> str:
    """``target`` relative to the page's folder, so the folder can be moved or served as it is."""
    return Path(os.path.relpath(Path(target), page_dir)).as_posix()


def link(target: str | Path, page_dir: Path, text: str) -> str:
    return f'<a href="{html.escape(relative(target, page_dir))}">{html.escape(text)}</a>'


def video_element(video: str | Path, page_dir: Path) -> str:
    return f'<video controls loop muted preload="metadata" src="{html.escape(relative(video, page_dir))}"></video>'


def image_figure(src: str, caption: str) -> str:
    """A captioned image; ``src`` is a data URI or a relative path."""
    return (f'<figure><img src="{html.escape(src)}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def write_page(path: Path, title: str, body: Sequence[str]) -> Path:
    """Write a page with the report's style around the ``body`` HTML fragments."""
    parts = [
        "<!DOCTYPE html>",
        f'<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>',
        f"<style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        *body,
        "</body></html>",
    ]
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return path


def table_row(cells: Sequence[str], text_columns: int = 1) -> str:
    tds = [
        f'<td class="text">{cell}</td>' if index < text_columns else f"<td>{cell}</td>"
        for index, cell in enumerate(cells)
    ]
    return "<tr>" + "".join(tds) + "</tr>"


def write_results_html(
    path: Path,
    summaries: Sequence[MethodSummary],
    results: Sequence[RunResult],
    prompts: Sequence[str],
    clip_model: str,
    videos: dict[str, Path],
) -> Path:
    page_dir = path.parent
    methods = [s.method for s in summaries]
    esc = html.escape
    parts = [
        '<p class="note">Means over each method\'s finished prompts. Wall time: the whole '
        "launcher run. Peak memory: <code>cuda</code> = torch.cuda.max_memory_allocated, "
        "<code>cpu-rss</code> = peak resident set size. CLIP model "
        f"<code>{esc(clip_model)}</code>; CLIP score = mean cosine similarity of the test views "
        "to the prompt; R-precision = fraction of runs whose prompt is CLIP's top-1 among the "
        f"{len(prompts)} prompts. View agreement = fraction of test views that CLIP classifies "
        "(prompt + ', front view' / ', side view' / ', back view') as the camera's azimuth bin; "
        "back as front = fraction of back views classified as front, which a multi-face "
        "(Janus) object raises. CLIP's view classes are unreliable for objects without a clear "
        "front: compare methods on the same prompts, not absolute values.</p>",
        "<h2>Methods</h2><table><tr><th>method</th><th>finished</th><th>wall time (s)</th>"
        "<th>peak memory (MiB)</th><th>memory</th><th>CLIP score</th><th>R-precision</th>"
        "<th>view agreement</th><th>back as front</th></tr>",
    ]
    for s in summaries:
        parts.append(
            table_row(
                [
                    esc(s.method), f"{s.finished_runs}/{s.total_prompts}", f"{s.mean_wall_time_s:.1f}",
                    f"{s.mean_peak_memory_mib:.0f}", esc(s.memory_kind), f"{s.mean_clip_score:.4f}",
                    format_r_precision(s.r_precision), f"{s.mean_view_agreement:.3f}",
                    format_optional(s.mean_back_as_front, 3),
                ]
            )
        )
    parts.append("</table><h2>Plots</h2>")
    for title, uri in plot_figures(results, methods).items():
        parts.append(image_figure(uri, title))

    parts.append(
        "<h2>Runs</h2><table><tr><th>method</th><th>prompt</th><th>wall time (s)</th>"
        "<th>CLIP score</th><th>view agreement</th><th>back as front</th><th>run</th><th>log</th></tr>"
    )
    for r in sorted(results, key=lambda r: (r.record.prompt_index, methods.index(r.record.method))):
        log = page_dir / "logs" / r.record.method / f"{prompt_slug(r.record.prompt)}.log"
        parts.append(
            table_row(
                [
                    esc(r.record.method), esc(r.record.prompt), f"{r.record.wall_time_s:.1f}",
                    f"{r.clip.clip_score:.4f}", f"{r.views.agreement:.3f}",
                    format_optional(r.views.back_as_front, 3),
                    link(r.record.trial_dir, page_dir, "folder"), link(log, page_dir, "log"),
                ],
                text_columns=2,
            )
        )
    parts.append("</table><h2>Side-by-side videos</h2>")
    for prompt in prompts:
        video = videos.get(prompt)
        if video is None:
            continue
        parts.append(f"<h3>{esc(prompt)}</h3>" + video_element(video, page_dir))
    return write_page(path, "Text-to-3D comparison", parts)
