"""Network configs as plain dicts: the authors' DifFace 512 configs verbatim, and the compact tier's."""

# DifFace's diffusion prior, `iddpm_ffhq512_ema500000.pth` (configs/sample/iddpm_ffhq512_swinir.yaml).
DIFFACE_UNET_512 = dict(
    image_size=512,
    in_channels=3,
    model_channels=32,
    out_channels=6,
    attention_resolutions=(32, 16, 8),
    dropout=0.0,
    channel_mult=(1, 2, 4, 8, 8, 16, 16),
    num_res_blocks=(1, 2, 2, 2, 2, 3, 4),
    conv_resample=True,
    dims=2,
    use_fp16=False,
    num_head_channels=64,
    use_scale_shift_norm=True,
    resblock_updown=False,
    use_new_attention_order=False,
)

# DifFace's restoration backbone, `swinir_restoration512_L1.pth`; DT-BFR's `swinir_gan_v1.pth` shares it.
DIFFACE_SWINIR_512 = dict(
    img_size=64,
    patch_size=1,
    in_chans=3,
    embed_dim=180,
    depths=(6, 6, 6, 6, 6, 6, 6, 6),
    num_heads=(6, 6, 6, 6, 6, 6, 6, 6),
    window_size=8,
    mlp_ratio=2,
    sf=8,
    img_range=1.0,
    upsampler="nearest+conv",
    resi_connection="1conv",
    unshuffle=True,
    unshuffle_scale=8,
)

# IDM at paper scale: DifFace's UNet with the LQ image as 3 extra input channels. No public
# weights exist; the config is documented as untrained.
IDM_UNET_512 = {**DIFFACE_UNET_512, "in_channels": 6, "out_channels": 3}

# Compact face prior (64 px, LFW framing): DifFace's UNet family cut to four levels
# (widths 32, 64, 128, 256 at 64…8 px), attention at 16 and 8 px, learned variance.
# 16.1M parameters; about 1.5 s per batch-16 training step on 2 CPU cores in bf16.
COMPACT_PRIOR_64 = dict(
    image_size=64,
    in_channels=3,
    model_channels=32,
    out_channels=6,
    attention_resolutions=(16, 8),
    dropout=0.0,
    channel_mult=(1, 2, 4, 8),
    num_res_blocks=(1, 2, 2, 2),
    conv_resample=True,
    dims=2,
    use_fp16=False,
    num_head_channels=32,
    use_scale_shift_norm=True,
    resblock_updown=False,
    use_new_attention_order=False,
)

# The compact tier's restorer for 64×64 faces: DifFace's layout at toy scale (unshuffle ×2 to a
# 32×32 token grid, upsample ×2 back). 4 heads of width 16 rather than 6: on CPU bf16 the
# attention cost grows with the head count, and 64/4 keeps the matmuls aligned. num_feat=32
# (the authors fix 64) halves the full-resolution tail. Measured at batch 16, 64×64, bf16
# autocast, AdamW step, one thread of the 2-core dev box with a training run on the other:
# ~1.25 CPU-s/it (≈0.8 it/s on one core, ≈1.4 it/s estimated on both). 0.78 M parameters.
COMPACT_SWINIR_64 = dict(
    img_size=32,
    patch_size=1,
    in_chans=3,
    embed_dim=64,
    depths=(4, 4, 4, 4),
    num_heads=(4, 4, 4, 4),
    window_size=8,
    mlp_ratio=2,
    sf=2,
    img_range=1.0,
    upsampler="nearest+conv",
    resi_connection="1conv",
    unshuffle=True,
    unshuffle_scale=2,
    num_feat=32,
)

# The compact tier's IDM (64 px, LFW framing): COMPACT_PRIOR_64's UNet with the LQ face as 3
# extra input channels (SR3-style concatenation) and one prediction (ε or v, fixed variance; the bundled
# idm64 predicts v): 6 in, 3 out.
COMPACT_IDM_64 = {**COMPACT_PRIOR_64, "in_channels": 6, "out_channels": 3}

# FLIPNET's paper-tier prior: Stable Diffusion 2.1-base (512 px, ε-prediction), the UNet and the
# VAE as in `stabilityai/stable-diffusion-2-1-base` (unet/config.json, vae/config.json), for
# diffusers' UNet2DConditionModel and AutoencoderKL.
SD21_BASE_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    attention_head_dim=(5, 10, 20, 20),
    cross_attention_dim=1024,
    use_linear_projection=True,
)
SD_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    sample_size=768,
)
SD_VAE_SCALING = 0.18215
