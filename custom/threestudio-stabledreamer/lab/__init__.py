"""A known-answer lab: text-to-3D quality and multi-face errors measured on a CPU.

Score distillation is run against an exact denoiser (``denoiser``: the posterior mean
over renders of a known procedural object, ``objects``) instead of a diffusion network,
so a finished run can be compared with the ground truth (``scores``). The threestudio
pieces are ``stabledreamer-lab-guidance`` and ``stabledreamer-lab-prompt-processor``;
``python -m threestudio_stabledreamer.lab`` runs the experiment suites (``cli``) and, with
``--figures``, makes the README's pictures (``figures``, ``pictures``); ``known_answer`` is
the CPU main job of ``python -m threestudio_stabledreamer.run``.

Modules here are plain PyTorch and never import threestudio.
"""
