"""The lab's experiments: variants of ``configs/stabledreamer.yaml``'s stage 1 against the analytic prior.

Every run is the user's config with the lab swapped in (``lab_overrides``): the lab
prompt processor and guidance replace IF's, stage 2 is off, the annealing spans the
run, training renders are 64x64 in batches of 4 as in stage 1, evaluation is small and
the mesh export is skipped (the PLY is what the lab scores). A variant adds overrides;
the prompt names the ground-truth object (the guidance's ``object`` follows it).

Priors:
- ``view-conditioned`` (the guidance's defaults): references from every azimuth, the
  view prompt obeyed, no preference for fronts;
- ``front-biased, leaky`` (``BIASED``): front views weigh ``front_bias`` = 4 times more in
  the prior and half of the prior ignores the view prompt (``view_leak`` = 0.5), the two
  biases of real image priors behind multi-face objects.
"""
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

BIASED = ("system.guidance.front_bias=4.0", "system.guidance.view_leak=0.5")
NO_ANNEAL = ("system.guidance.anneal=none", "system.guidance.anneal_jitter_percent=0.0")


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    overrides: Tuple[str, ...] = ()


VARIANTS: Dict[str, Variant] = {
    v.name: v
    for v in [
        Variant("oracle", "oracle denoiser (exact render): multi-view reconstruction", ("system.guidance.oracle=true",)),
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
    ]
}

SUITES: Dict[str, Tuple[str, ...]] = {
    "oracle": ("oracle",),
    "goals": ("oracle", "stage1"),
    "multiface": ("biased-none", "biased-sqrt"),
    "schedules": ("biased-none", "biased-sqrt", "biased-linear", "biased-cosine"),
    "scales": ("stage1-cfg7.5", "stage1", "stage1-cfg50"),
    "bias": ("stage1", "stage1-biased"),
}


def lab_overrides(max_steps: int, eval_every: int) -> List[str]:
    """Launcher overrides that turn ``configs/stabledreamer.yaml`` into a lab run (stage 1 only)."""
    return [
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
        "data.eval_width=64",
        "data.eval_height=64",
        "data.n_test_views=4",
        "system.exporter.mesh_formats=[]",
        f"system.vis_interval={max(max_steps // 4, 1)}",
        f"trainer.max_steps={max_steps}",
        f"trainer.val_check_interval={max_steps}",
        f"checkpoint.every_n_train_steps={eval_every}",
    ]


def variants_of(suites: Sequence[str]) -> List[Variant]:
    """The variants of the named suites, each once, in order."""
    names: List[str] = []
    for suite in suites:
        if suite not in SUITES:
            raise ValueError(f"--suite must be among {sorted(SUITES)}, got {suite!r}")
        names += [name for name in SUITES[suite] if name not in names]
    return [VARIANTS[name] for name in names]
