"""Full-size model builders: parameter counts on the ``meta`` device against the published
figures, and the save path (on scaled-down configurations) loading through the same
``from_pretrained`` calls as the real weights, guidances and prompt processors included."""
import pytest
import torch

import threestudio
from threestudio_stabledreamer import full_size_models as fsm

# Scaled-down versions of each configuration: same classes and block types, toy widths.
SMALL_CONFIGS = {
    "if_unet": {
        **fsm.IF_UNET_CONFIG,
        "layers_per_block": 1,
        "block_out_channels": (64, 64, 128, 128),
        "cross_attention_dim": 128,
        "encoder_hid_dim": 64,
        "addition_embed_type_num_heads": 2,
    },
    "t5_encoder": {**fsm.T5_ENCODER_CONFIG, "d_model": 64, "d_kv": 16, "d_ff": 128, "num_layers": 2, "num_heads": 4},
    "sd_unet": {
        **fsm.SD_UNET_CONFIG,
        "layers_per_block": 1,
        "block_out_channels": (32, 64, 64, 64),
        "attention_head_dim": (2, 4, 4, 4),
        "cross_attention_dim": 64,
    },
    "sd_vae": {**fsm.SD_VAE_CONFIG, "block_out_channels": (32, 32, 32, 32), "layers_per_block": 1},
    "clip_text_encoder": {
        **fsm.CLIP_TEXT_CONFIG,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
    },
}


@pytest.mark.parametrize("name", sorted(fsm.CONFIGS))
def test_parameter_count_matches_the_published_figure(name):
    model = fsm.build_on_meta(name)
    assert all(p.device.type == "meta" for p in model.parameters())
    count = fsm.count_parameters(model)
    assert count == pytest.approx(fsm.PUBLISHED_PARAMETERS[name], rel=0.02)


def test_meta_counts_are_the_exact_known_sizes():
    # The exact sizes of the published weight files' tensors (diffusers / transformers classes).
    exact = {name: fsm.count_parameters(fsm.build_on_meta(name)) for name in fsm.CONFIGS}
    assert exact == {
        "if_unet": 4_304_695_110,
        "t5_encoder": 4_762_310_656,
        "sd_unet": 865_910_724,
        "sd_vae": 83_653_863,
        "clip_text_encoder": 340_387_840,
    }


def test_unknown_model_and_float32_are_rejected():
    with pytest.raises(ValueError, match="model name must be one of .*'unet'"):
        fsm.build_on_meta("unet")
    with pytest.raises(ValueError, match="dtype must be torch.float16 or torch.bfloat16, got torch.float32"):
        fsm.build_in_half_precision("sd_vae", torch.float32, SMALL_CONFIGS["sd_vae"])


def test_half_precision_build_creates_no_float32_tensor():
    model = fsm.build_in_half_precision("sd_unet", torch.bfloat16, SMALL_CONFIGS["sd_unet"])
    floating = [t for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()]
    assert floating and all(t.dtype == torch.bfloat16 for t in floating)
    assert torch.get_default_dtype() == torch.float32  # restored
    assert all(torch.isfinite(p.float()).all() for p in model.parameters())


@pytest.fixture(scope="module")
def small_models(tmp_path_factory):
    return fsm.build_full_size_models(tmp_path_factory.mktemp("full") / "models", torch.float16, SMALL_CONFIGS)


def test_saved_models_load_through_from_pretrained(small_models):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, T5EncoderModel

    if_dir, sd_dir = small_models["deepfloyd-if"], small_models["stable-diffusion"]
    loaded = {
        "if_unet": UNet2DConditionModel.from_pretrained(if_dir, subfolder="unet", variant="fp16",
                                                        torch_dtype=torch.bfloat16),
        "t5_encoder": T5EncoderModel.from_pretrained(if_dir, subfolder="text_encoder", variant="8bit",
                                                     torch_dtype=torch.float16),
        "sd_unet": UNet2DConditionModel.from_pretrained(sd_dir, subfolder="unet", torch_dtype=torch.bfloat16),
        "sd_vae": AutoencoderKL.from_pretrained(sd_dir, subfolder="vae", torch_dtype=torch.bfloat16),
        "clip_text_encoder": CLIPTextModel.from_pretrained(sd_dir, subfolder="text_encoder",
                                                           torch_dtype=torch.float16),
    }
    for name, model in loaded.items():
        reference = fsm.build_in_half_precision(name, torch.float16, SMALL_CONFIGS[name])
        assert fsm.count_parameters(model) == fsm.count_parameters(reference), name
        # same seed, same construction order: the saved weights are the built ones
        first = next(iter(reference.state_dict()))
        loaded_value = model.state_dict()[first]
        assert torch.equal(loaded_value, reference.state_dict()[first].to(loaded_value.dtype)), name
    # the half-precision build's exact weights load back (float16 file read as float16)
    vae = fsm.build_in_half_precision("sd_vae", torch.float16, SMALL_CONFIGS["sd_vae"])
    reloaded = AutoencoderKL.from_pretrained(sd_dir, subfolder="vae", torch_dtype=torch.float16)
    for key, value in vae.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key


def test_text_encoders_are_sharded_and_diffusers_models_saved_whole(tmp_path, monkeypatch):
    """threestudio's pinned diffusers (0.19.3) reads no sharded diffusers checkpoint: the
    UNets and the VAE must be one file whatever their size; the text encoders are sharded."""
    monkeypatch.setattr(fsm, "SHARD_SIZE", "50KB")
    models = fsm.build_full_size_models(tmp_path / "models", torch.float16, SMALL_CONFIGS)
    if_dir, sd_dir = models["deepfloyd-if"], models["stable-diffusion"]
    for folder in (if_dir / "text_encoder", sd_dir / "text_encoder"):
        assert len(list(folder.glob("model-*.safetensors"))) > 1, folder
    for folder, name in ((if_dir / "unet", "diffusion_pytorch_model.fp16.safetensors"),
                         (sd_dir / "unet", "diffusion_pytorch_model.safetensors"),
                         (sd_dir / "vae", "diffusion_pytorch_model.safetensors")):
        assert sorted(p.name for p in folder.glob("*.safetensors")) == [name], folder
        assert not list(folder.glob("*.index.json")), folder


def test_rebuild_is_skipped_when_complete(small_models):
    marker = small_models["deepfloyd-if"].parent / fsm.MARKER_NAME
    before = marker.stat().st_mtime_ns
    again = fsm.build_full_size_models(small_models["deepfloyd-if"].parent, torch.float16, SMALL_CONFIGS)
    assert again == small_models and marker.stat().st_mtime_ns == before


def test_guidances_and_prompt_processors_load_the_saved_models(small_models, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if_guidance = threestudio.find("stabledreamer-deep-floyd-guidance")(
        {"pretrained_model_name_or_path": str(small_models["deepfloyd-if"]), "weights_dtype": "bfloat16"}
    )
    sd_guidance = threestudio.find("stabledreamer-stable-diffusion-guidance")(
        {"pretrained_model_name_or_path": str(small_models["stable-diffusion"]), "weights_dtype": "bfloat16",
         "render_resolution": 64}
    )
    assert if_guidance.unet.dtype == torch.bfloat16 and sd_guidance.vae.dtype == torch.bfloat16
    for key, name, width in (
        ("deepfloyd-if", "deep-floyd-prompt-processor", 64),
        ("stable-diffusion", "stable-diffusion-prompt-processor", 64),
    ):
        processor = threestudio.find(name)(
            {"prompt": "a hamburger", "pretrained_model_name_or_path": str(small_models[key]), "spawn": False}
        )
        embeddings = processor().get_text_embeddings(
            torch.zeros(1), torch.zeros(1), torch.full((1,), 2.0), view_dependent_prompting=False
        )
        assert embeddings.shape == (2, 77, width), name
