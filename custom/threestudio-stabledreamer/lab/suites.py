"""The lab's experiments: variants of ``configs/stabledreamer.yaml``'s stage 1 against the analytic prior.

Every run is the user's config with the lab swapped in (``lab_overrides``): the lab
prompt processor and guidance replace IF's, stage 2 is off, training renders are 64x64
in batches of 4 as in stage 1, evaluation is small and the mesh export is skipped (the
PLY is what the lab scores). The run is the config's stage 1 compressed in time
(``compressed_stage1_overrides``): the annealing, the learning-rate schedules and the
density-control steps all keep their place as a fraction of stage 1. A variant adds
overrides; the prompt names the ground-truth object (the guidance's ``object`` follows it).

The oracle (the exact render as x0_hat) is multi-view reconstruction, so it follows
3DGS's reconstruction schedule: density control only in the first half of the run
(3DGS: 15k of 30k steps), then refinement. Compressed stage 1 instead ends while the
config still densifies (it densifies into stage 2), which leaves the last split's
children little time to settle.

Two-stage runs (``two_stage_overrides``) keep the config's stage 2 with the lab's latent
prior (``stabledreamer-lab-latent-guidance`` over the lab's fitted VAE) in place of Stable
Diffusion, compressed by the same factor as stage 1, so stage 2's annealing and the density
control that continues into it keep their place too; stage 2 renders at the lab's 64
pixels (16 x 16 latents).

Priors:
- ``view-conditioned`` (the guidance's defaults): references from every azimuth, the
  view prompt obeyed, no preference for fronts;
- ``front-biased, leaky`` (``BIASED``): front views weigh ``front_bias`` = 4 times more in
  the prior and half of the prior ignores the view prompt (``view_leak`` = 0.5), the two
  biases of real image priors behind multi-face objects.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from omegaconf import OmegaConf

ORACLE = ("system.guidance.oracle=true", "system.geometry.densify_until=${idiv:${trainer.max_steps},2}")
BIASED = ("system.guidance.front_bias=4.0", "system.guidance.view_leak=0.5")
NO_ANNEAL = ("system.guidance.anneal=none", "system.guidance.anneal_jitter_percent=0.0")


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    overrides: Tuple[str, ...] = ()
    two_stage: bool = False
    """Varies stage 2: runs only with ``--two-stage``."""


STAGE2 = "system.guidance_stage2"


VARIANTS: Dict[str, Variant] = {
    v.name: v
    for v in [
        Variant("oracle", "oracle denoiser (exact render): multi-view reconstruction, density control in the "
                "first half of the run (3DGS)", ORACLE),
        Variant("stage1", "config as is (sqrt annealing, CFG 20), view-conditioned prior"),
        Variant("stage1-cfg7.5", "as stage1 with guidance_scale 7.5", ("system.guidance.guidance_scale=7.5",)),
        Variant("stage1-cfg50", "as stage1 with guidance_scale 50", ("system.guidance.guidance_scale=50.0",)),
        Variant("stage1-biased", "as stage1 with the front-biased, leaky prior", BIASED),
        Variant("biased-none", "front-biased, leaky prior; uniform t in [0.4, 0.98] T (no annealing)", BIASED + NO_ANNEAL),
        Variant("biased-sqrt", "front-biased, leaky prior; sqrt annealing (the config's)", BIASED),
        Variant("biased-linear", "front-biased, leaky prior; linear annealing",
                BIASED + ("system.guidance.anneal=linear",)),
        Variant("biased-cosine", "front-biased, leaky prior; cosine annealing",
                BIASED + ("system.guidance.anneal=cosine",)),
        Variant("two-stage", "both stages as the config says (stage 2: t from 0.6 to 0.2 T, CFG 100, no HiFA "
                "image loss, switch halfway, density control until halfway through stage 2)", two_stage=True),
        Variant("two-stage-cfg20", "as two-stage with stage 2's guidance_scale 20",
                (f"{STAGE2}.guidance_scale=20.0",), True),
        Variant("two-stage-t0.98", "as two-stage with stage 2's noise from 0.98 T (the full range)",
                (f"{STAGE2}.max_step_percent=0.98",), True),
        Variant("two-stage-t0.3", "as two-stage with stage 2's noise from 0.3 T down to 0.02 T",
                (f"{STAGE2}.max_step_percent=0.3", f"{STAGE2}.min_step_percent=0.02"), True),
        Variant("two-stage-res128", "as two-stage with stage 2 rendering 128 pixels (32 x 32 latents)",
                ("data.width=[64,128]", "data.height=[64,128]", "data.batch_size=[4,4]",
                 "data.resolution_milestones=['${system.stage2_start_step}']", f"{STAGE2}.render_resolution=128"), True),
        Variant("two-stage-hifa", "as two-stage with HiFA's image loss (lambda_sds_img 0.01, as configs/gaussian-hifa)",
                (f"{STAGE2}.use_img_loss=true", "system.loss.lambda_sds_img=0.01"), True),
        Variant("two-stage-switch0.25", "as two-stage with the switch after a quarter of the run",
                ("system.stage2_start_step=${idiv:${trainer.max_steps},4}",), True),
        Variant("two-stage-oracle2", "as two-stage with stage 2's prior reduced to the exact render (its oracle): "
                "what the latent loss costs without a prior's uncertainty", (f"{STAGE2}.oracle=true",), True),
        Variant("two-stage-densify1", "as two-stage with density control ending at the switch",
                ("system.geometry.densify_until=${system.stage2_start_step}",), True),
    ]
}

SUITES: Dict[str, Tuple[str, ...]] = {
    "oracle": ("oracle",),
    "config": ("stage1",),
    "goals": ("oracle", "stage1"),
    "multiface": ("biased-none", "biased-sqrt"),
    "schedules": ("biased-none", "biased-sqrt", "biased-linear", "biased-cosine"),
    "scales": ("stage1-cfg7.5", "stage1", "stage1-cfg50"),
    "bias": ("stage1", "stage1-biased"),
    "two-stage": ("two-stage",),
    "stage2": ("two-stage", "two-stage-oracle2", "two-stage-densify1", "two-stage-cfg20", "two-stage-t0.98", "two-stage-t0.3",
               "two-stage-res128", "two-stage-hifa", "two-stage-switch0.25"),
}


def lab_overrides(max_steps: int, eval_every: int, test_views: int = 4, test_resolution: int = 64,
                  mesh: bool = False) -> List[str]:
    """Launcher overrides that turn ``configs/stabledreamer.yaml`` into a lab run (stage 1 only).

    ``test_views`` and ``test_resolution`` size the test turntable (and the validation
    views); ``mesh`` keeps the config's mesh export, which the scores do not need."""
    overrides = [
        "system.prompt_processor_type=stabledreamer-lab-prompt-processor",
        "system.guidance_type=stabledreamer-lab-guidance",
        "system.guidance.object=${system.prompt_processor.prompt}",
        "system.stage2_start_step=null",
        'system.guidance_stage2_type=""',
        'system.prompt_processor_stage2_type=""',
        "system.guidance.anneal_steps=${trainer.max_steps}",
        # stage 2's schedule interpolates stage2_start_step: give it values that resolve
        "system.guidance_stage2.anneal_start_step=0",
        "system.guidance_stage2.anneal_steps=0",
        "data.width=64",
        "data.height=64",
        "data.batch_size=4",
        "data.resolution_milestones=[]",
        f"data.eval_width={test_resolution}",
        f"data.eval_height={test_resolution}",
        f"data.n_test_views={test_views}",
        f"system.vis_interval={max(max_steps // 4, 1)}",
        f"trainer.max_steps={max_steps}",
        f"trainer.val_check_interval={max_steps}",
        f"checkpoint.every_n_train_steps={eval_every}",
    ]
    return overrides if mesh else overrides + ["system.exporter.mesh_formats=[]"]


def variants_of(suites: Sequence[str]) -> List[Variant]:
    """The variants of the named suites, each once, in order."""
    names: List[str] = []
    for suite in suites:
        if suite not in SUITES:
            raise ValueError(f"--suite must be among {sorted(SUITES)}, got {suite!r}")
        names += [name for name in SUITES[suite] if name not in names]
    return [VARIANTS[name] for name in names]


GEOMETRY_STEP_KEYS = ("densify_from", "densify_interval", "densify_until", "opacity_reset_interval")
"""Step counts of the Gaussians' density control, which the compression scales."""


def compressed_stage1_overrides(config: Path, steps: int) -> Tuple[List[str], float]:
    """Overrides that fit the config's stage 1 into ``steps`` steps, and the factor used.

    Stage 1 lasts ``system.stage2_start_step`` steps (``trainer.max_steps`` when that is
    null); the factor is ``steps`` over that. Scaled by it: the density-control steps
    (``GEOMETRY_STEP_KEYS``, and ``sh_increase_interval`` when ``sh_degree`` > 0) and
    the steps of every learning-rate schedule of the geometry (``lr_*`` given as a
    threestudio schedule, ``scaled_schedule``). So the first split of a 1000-step lab run
    of a 4000-step stage 1 comes at step 125 with the learning rate a real run has at
    step 500, not at step 500 with the rate a real run has at step 4000. Intervals stay
    at least 1 step; a zero (off) stays zero. The values are read from the config file
    with its interpolations resolved; the step keys must be set there, since the
    geometry's defaults are not visible from here.
    """
    cfg = OmegaConf.load(config)

    def value(key: str):
        try:
            return OmegaConf.select(cfg, key, throw_on_missing=True)
        except Exception as error:
            raise ValueError(f"--config {config}: cannot read {key}: {error}") from error

    stage1 = value("system.stage2_start_step")
    if stage1 is None:
        stage1 = value("trainer.max_steps")
    if not isinstance(stage1, int) or stage1 < 1:
        raise ValueError(f"--config {config}: stage 1 length (system.stage2_start_step or trainer.max_steps) "
                         f"must be a positive integer, got {stage1!r}")
    factor = steps / stage1
    geometry = value("system.geometry")
    if geometry is None:
        raise ValueError(f"--config {config}: system.geometry is not set")
    step_keys = list(GEOMETRY_STEP_KEYS)
    if (value("system.geometry.sh_degree") or 0) > 0:
        step_keys.append("sh_increase_interval")
    overrides = []
    for key in step_keys:
        count = value(f"system.geometry.{key}")
        if not isinstance(count, int):
            raise ValueError(f"--config {config}: system.geometry.{key} must be set to an integer for the lab to "
                             f"scale it to --steps, got {count!r}")
        scaled = 0 if count == 0 else max(1, round(count * factor))
        overrides.append(f"system.geometry.{key}={scaled}")
    for key in sorted(k for k in geometry if str(k).startswith("lr_")):
        schedule = value(f"system.geometry.{key}")
        if OmegaConf.is_list(schedule):
            overrides.append(f"system.geometry.{key}=[{','.join(map(str, scaled_schedule(list(schedule), factor)))}]")
    return overrides, factor


def scaled_schedule(schedule: list, factor: float) -> list:
    """A threestudio ``C()`` schedule with its steps scaled by ``factor``, in the 4-or-more form.

    The forms ``C()`` reads: ``[start_value, end_value, end_step]`` (start step 0),
    ``[start_step, start_value, end_value, end_step]`` and the piecewise
    ``[start_step, start_value, value_1, step_1, value_2, step_2, ...]``: the steps are
    entry 0 and the odd entries from 3 on. A float step counts epochs and is kept.
    """
    if len(schedule) == 3:
        schedule = [0, *schedule]
    if len(schedule) != 4 and (len(schedule) < 6 or len(schedule) % 2):
        raise ValueError(f"a schedule has 3, 4 or an even number >= 6 of entries, got {schedule!r}")
    step_indices = {0, *range(3, len(schedule), 2)}
    return [round(v * factor) if i in step_indices and isinstance(v, int) else v for i, v in enumerate(schedule)]


def two_stage_overrides(config: Path, steps: int, factor: float, vae: Path) -> List[str]:
    """Overrides, after ``lab_overrides`` and ``compressed_stage1_overrides(config, steps)``
    (whose ``factor`` this takes), that keep the config's stage 2 with the lab's latent prior
    over the fitted VAE in ``vae``: stage 1 ends at ``steps``, stage 2 lasts the config's
    stage 2 times ``factor`` (at least one step), and both stages anneal as the config says."""
    cfg = OmegaConf.load(config)
    total, stage1 = OmegaConf.select(cfg, "trainer.max_steps"), OmegaConf.select(cfg, "system.stage2_start_step")
    if not isinstance(total, int) or not isinstance(stage1, int) or not 0 < stage1 < total:
        raise ValueError(f"--config {config}: a two-stage run needs 0 < system.stage2_start_step < "
                         f"trainer.max_steps, got {stage1!r} and {total!r}")
    stage2 = max(1, round((total - stage1) * factor))
    return [
        f"system.stage2_start_step={steps}",
        f"trainer.max_steps={steps + stage2}",
        "system.guidance.anneal_steps=${system.stage2_start_step}",
        "system.prompt_processor_stage2_type=stabledreamer-lab-prompt-processor",
        "system.guidance_stage2_type=stabledreamer-lab-latent-guidance",
        f"system.guidance_stage2.pretrained_model_name_or_path={vae}",
        "system.guidance_stage2.object=${system.prompt_processor.prompt}",
        "system.guidance_stage2.render_resolution=64",
        "system.guidance_stage2.anneal_start_step=${system.stage2_start_step}",
        "system.guidance_stage2.anneal_steps=${sub:${trainer.max_steps},${system.stage2_start_step}}",
    ]
