"""Benchmark outputs: per-run and per-method tables (CSV and Markdown) and side-by-side videos.

- ``runs.csv``: one row per finished run (method, prompt, wall time, peak memory, CLIP score,
  whether CLIP retrieves the run's prompt, view agreement and back-as-front share of the
  multi-face indicator, see ``multiface``).
- ``results.csv`` / ``results.md``: one row per method, means over its finished prompts:
  wall time (s), peak memory (MiB; "cuda" = torch.cuda.max_memory_allocated, "cpu-rss" =
  peak resident set size of the run's process), CLIP score, CLIP R-precision over the
  prompt set, view agreement and back-as-front share (mean over the runs with a back
  view). ``results.md`` adds the per-prompt CLIP scores and links the videos.
- ``results.html``: the same with plots and the videos (``html_report``).
- ``videos/<prompt slug>.mp4``: one per prompt, a labelled column per method.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from statistics import mean
from typing import Sequence

from .metrics import ClipEmbedder, RunClipMetrics, r_precision, score_run
from .multiface import ViewAgreement, turntable_azimuths, view_agreement, view_prompts
from .runs import RunRecord, load_rgb_views, prompt_slug
from .video_grid import Column, side_by_side_video

MIB = 1024 * 1024


@dataclass
class RunResult:
    record: RunRecord
    clip: RunClipMetrics
    views: ViewAgreement


@dataclass
class MethodSummary:
    method: str
    finished_runs: int
    total_prompts: int
    mean_wall_time_s: float
    mean_peak_memory_mib: float
    memory_kind: str
    mean_clip_score: float
    r_precision: float | None
    mean_view_agreement: float
    mean_back_as_front: float | None


def evaluate_runs(
    records: Sequence[RunRecord],
    prompts: Sequence[str],
    embedder: ClipEmbedder,
    panel_width: int | None = None,
) -> list[RunResult]:
    """CLIP metrics of every finished run against the whole prompt set, and its view
    agreement (test views at threestudio's test azimuths)."""
    prompt_embeds = embedder.embed_texts(prompts)
    view_embeds = {prompt: embedder.embed_texts(view_prompts(prompt)) for prompt in prompts}
    results = []
    for record in records:
        views = load_rgb_views([Path(p) for p in record.test_renders], panel_width)
        image_embeds = embedder.embed_images(views)
        azimuths = turntable_azimuths(len(views))
        results.append(
            RunResult(
                record,
                score_run(image_embeds, prompt_embeds, record.prompt_index),
                view_agreement(image_embeds, view_embeds[record.prompt], azimuths),
            )
        )
    return results


def _mean_or_none(values) -> float | None:
    values = [v for v in values if v is not None]
    return mean(values) if values else None


def summarize(results: Sequence[RunResult], methods: Sequence[str], num_prompts: int) -> list[MethodSummary]:
    """One summary per method (in ``methods`` order) that has at least one finished run."""
    summaries = []
    for method in methods:
        own = [r for r in results if r.record.method == method]
        if not own:
            continue
        kinds = sorted({r.record.memory_kind for r in own})
        summaries.append(
            MethodSummary(
                method=method,
                finished_runs=len(own),
                total_prompts=num_prompts,
                mean_wall_time_s=mean(r.record.wall_time_s for r in own),
                mean_peak_memory_mib=mean(r.record.peak_memory_bytes for r in own) / MIB,
                memory_kind="+".join(kinds),
                mean_clip_score=mean(r.clip.clip_score for r in own),
                r_precision=r_precision([r.clip.retrieves_prompt for r in own], num_prompts),
                mean_view_agreement=mean(r.views.agreement for r in own),
                mean_back_as_front=_mean_or_none(r.views.back_as_front for r in own),
            )
        )
    return summaries


def write_runs_csv(path: Path, results: Sequence[RunResult]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(
            [
                "method",
                "prompt",
                "wall_time_s",
                "peak_memory_mib",
                "memory_kind",
                "clip_score",
                "retrieves_prompt",
                "view_agreement",
                "back_as_front",
                "trial_dir",
            ]
        )
        for r in sorted(results, key=lambda r: (r.record.prompt_index, r.record.method)):
            writer.writerow(
                [
                    r.record.method,
                    r.record.prompt,
                    f"{r.record.wall_time_s:.2f}",
                    f"{r.record.peak_memory_bytes / MIB:.1f}",
                    r.record.memory_kind,
                    f"{r.clip.clip_score:.4f}",
                    int(r.clip.retrieves_prompt),
                    f"{r.views.agreement:.4f}",
                    format_optional(r.views.back_as_front),
                    r.record.trial_dir,
                ]
            )


def format_optional(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_r_precision(value: float | None) -> str:
    return format_optional(value, 3)


def write_results_csv(path: Path, summaries: Sequence[MethodSummary]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(
            [
                "method",
                "finished_runs",
                "prompts",
                "mean_wall_time_s",
                "mean_peak_memory_mib",
                "memory_kind",
                "mean_clip_score",
                "clip_r_precision",
                "mean_view_agreement",
                "mean_back_as_front",
            ]
        )
        for s in summaries:
            writer.writerow(
                [
                    s.method,
                    s.finished_runs,
                    s.total_prompts,
                    f"{s.mean_wall_time_s:.2f}",
                    f"{s.mean_peak_memory_mib:.1f}",
                    s.memory_kind,
                    f"{s.mean_clip_score:.4f}",
                    format_r_precision(s.r_precision),
                    f"{s.mean_view_agreement:.4f}",
                    format_optional(s.mean_back_as_front),
                ]
            )


def write_results_md(
    path: Path,
    summaries: Sequence[MethodSummary],
    results: Sequence[RunResult],
    prompts: Sequence[str],
    clip_model: str,
    videos: dict[str, Path],
) -> None:
    lines = [
        "# Benchmark results",
        "",
        f"Means over each method's finished prompts. Wall time: the whole launcher run (model "
        "loading, training and the test renders). Peak memory: `cuda` = "
        "torch.cuda.max_memory_allocated, `cpu-rss` = peak resident set size of the run's "
        f"process. CLIP model: `{clip_model}`; CLIP score = mean cosine similarity of the test "
        "views to the prompt; R-precision = fraction of runs whose prompt is CLIP's top-1 "
        f"among the {len(prompts)} prompts (by mean similarity over the run's views). "
        "View agreement = fraction of test views that CLIP classifies (prompt + front / side / "
        "back view) as the camera's azimuth bin; back as front = fraction of back views "
        "classified as front, which a multi-face (Janus) object raises.",
        "",
        "| method | finished | wall time (s) | peak memory (MiB) | memory | CLIP score | R-precision "
        "| view agreement | back as front |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in summaries:
        lines.append(
            f"| {s.method} | {s.finished_runs}/{s.total_prompts} | {s.mean_wall_time_s:.1f} | "
            f"{s.mean_peak_memory_mib:.0f} | {s.memory_kind} | {s.mean_clip_score:.4f} | "
            f"{format_r_precision(s.r_precision)} | {s.mean_view_agreement:.3f} | "
            f"{format_optional(s.mean_back_as_front, 3)} |"
        )
    methods = [s.method for s in summaries]
    lines += ["", "## CLIP score per prompt", "", "| prompt | " + " | ".join(methods) + " | video |"]
    lines.append("| --- " * (len(methods) + 2) + "|")
    by_key = {(r.record.method, r.record.prompt): r for r in results}
    for prompt in prompts:
        cells = [
            f"{by_key[(m, prompt)].clip.clip_score:.4f}" if (m, prompt) in by_key else "-"
            for m in methods
        ]
        video = videos.get(prompt)
        link = f"[mp4]({video.relative_to(path.parent).as_posix()})" if video else "-"
        lines.append(f"| {prompt} | " + " | ".join(cells) + f" | {link} |")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_videos(
    out: Path,
    records: Sequence[RunRecord],
    prompts: Sequence[str],
    methods: Sequence[str],
    panel_width: int | None = None,
    fps: int = 30,
) -> dict[str, Path]:
    """One side-by-side mp4 per prompt with any finished run; columns in ``methods`` order."""
    videos = {}
    for prompt in prompts:
        columns = [
            Column(label=r.method, frames=load_rgb_views([Path(p) for p in r.test_renders], panel_width))
            for method in methods
            for r in records
            if r.method == method and r.prompt == prompt
        ]
        if columns:
            path = out / "videos" / f"{prompt_slug(prompt)}.mp4"
            side_by_side_video(path, columns, fps=fps)
            videos[prompt] = path
    return videos
