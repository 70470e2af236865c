"""The guidances' per-step path on the tiny models: no value read on the host (checked on
any device by recording the operators that return a host value, and on CUDA by PyTorch's
sync debug mode), attention through PyTorch's fused SDPA, and ``weights_dtype``."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import threestudio

IF_NAME = "stabledreamer-deep-floyd-guidance"
SD_NAME = "stabledreamer-stable-diffusion-guidance"

pytestmark = pytest.mark.device

# Operators whose result is a host value: each one waits for the device.
HOST_READS = {
    torch.ops.aten._local_scalar_dense.default,  # .item(), bool(), int(), float()
    torch.ops.aten.nonzero.default,  # boolean-mask indexing: the output size is data-dependent
    torch.ops.aten.equal.default,
    torch.ops.aten.is_nonzero.default,
}


class RecordHostReads(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.reads = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in HOST_READS:
            self.reads.append(str(func))
        return func(*args, **(kwargs or {}))


class RandomPromptUtils:
    """[cond; uncond] embeddings of the right width, made before the step."""

    use_perp_neg = False

    def __init__(self, embeddings):
        self.embeddings = embeddings

    def get_text_embeddings(self, elevation, azimuth, camera_distances, view_dependent_prompting=True):
        return self.embeddings


def _guidance(name, path, **cfg):
    return threestudio.find(name)({"pretrained_model_name_or_path": str(path), **cfg})


@pytest.fixture(scope="module")
def guidances(tiny_models, device):
    return {
        IF_NAME: (_guidance(IF_NAME, tiny_models["deepfloyd-if"], render_resolution=32), 32),
        SD_NAME: (_guidance(SD_NAME, tiny_models["stable-diffusion"], render_resolution=64), 32),
    }


def _step_inputs(width, device, batch_size=2):
    cameras = [torch.tensor([10.0, 70.0], device=device), torch.tensor([90.0, 0.0], device=device),
               torch.tensor([3.0, 3.0], device=device)]
    rgb = torch.rand(batch_size, 16, 16, 3, device=device, requires_grad=True)
    prompt_utils = RandomPromptUtils(torch.randn(2 * batch_size, 77, width, device=device))
    return rgb, prompt_utils, cameras


@pytest.mark.parametrize("name", [IF_NAME, SD_NAME])
def test_a_guidance_step_reads_no_value_on_the_host(name, guidances, device):
    guidance, width = guidances[name]
    rgb, prompt_utils, cameras = _step_inputs(width, device)
    with RecordHostReads() as recorder:
        out = guidance(rgb, prompt_utils, *cameras)
        out["loss_sds"].backward()
    assert recorder.reads == []
    # the non-finite count comes back as a device tensor, to be logged
    assert torch.is_tensor(out["num_nonfinite"]) and out["num_nonfinite"].device == device
    assert int(out["num_nonfinite"]) == 0 and int(guidance.num_nonfinite_total) == 0


def test_the_recorder_sees_host_reads(device):
    x = torch.ones(3, device=device)
    with RecordHostReads() as recorder:
        float(x.sum())
        (x > 0).nonzero()
    assert recorder.reads == ["aten._local_scalar_dense.default", "aten.nonzero.default"]


@pytest.mark.parametrize("name", [IF_NAME, SD_NAME])
def test_a_guidance_step_does_not_synchronise_cuda(name, guidances, device):
    if device.type != "cuda":
        pytest.skip("CUDA's sync debug mode needs a CUDA device (run with --device cuda); "
                    "test_a_guidance_step_reads_no_value_on_the_host checks the same on the CPU")
    guidance, width = guidances[name]
    rgb, prompt_utils, cameras = _step_inputs(width, device)
    guidance(rgb, prompt_utils, *cameras)  # warm-up: lazy initialisation may synchronise
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = guidance(rgb, prompt_utils, *cameras)
        out["loss_sds"].backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_attention_runs_through_sdpa_processors(guidances):
    from diffusers.models.attention_processor import AttnAddedKVProcessor2_0, AttnProcessor2_0

    if_guidance, sd_guidance = guidances[IF_NAME][0], guidances[SD_NAME][0]
    for model in (if_guidance.unet, sd_guidance.unet, sd_guidance.vae):
        processors = model.attn_processors
        assert processors
        assert all(type(p) in (AttnProcessor2_0, AttnAddedKVProcessor2_0) for p in processors.values())
    # IF's cross-attention adds the text keys and values to its self-attention
    assert any(type(p) is AttnAddedKVProcessor2_0 for p in if_guidance.unet.attn_processors.values())
    assert all(type(p) is AttnProcessor2_0 for p in sd_guidance.unet.attn_processors.values())


def test_weights_dtype_sets_the_models_and_the_vae_encode_dtype(tiny_models, device):
    guidance = _guidance(SD_NAME, tiny_models["stable-diffusion"], render_resolution=64, weights_dtype="bfloat16")
    assert guidance.weights_dtype == torch.bfloat16
    assert guidance.unet.dtype == torch.bfloat16 and guidance.vae.dtype == torch.bfloat16
    seen = []
    hook = guidance.vae.encoder.conv_in.register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
    try:
        rgb, prompt_utils, cameras = _step_inputs(32, device)
        out = guidance(rgb, prompt_utils, *cameras)
        out["loss_sds"].backward()
    finally:
        hook.remove()
    assert seen == [torch.bfloat16]
    assert rgb.grad is not None and rgb.grad.dtype == torch.float32 and torch.isfinite(rgb.grad).all()


def test_bad_weights_dtype_is_rejected_clearly(tiny_models):
    with pytest.raises(ValueError, match=r"weights_dtype must be one of \('auto', 'float32', 'float16', "
                                         r"'bfloat16'\), got 'half'"):
        _guidance(IF_NAME, tiny_models["deepfloyd-if"], weights_dtype="half")
