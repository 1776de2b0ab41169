"""Every set of weights bfr knows: where each comes from, under which license, and what it is.

One flat table instead of URLs scattered through the methods, so `python -m bfr methods`,
the error messages and the model cards all read the same facts.
"""

from __future__ import annotations

from dataclasses import dataclass

from bfr.errors import InputError


@dataclass(frozen=True)
class WeightSpec:
    """One weights file and its sources; a field is None where the fact is unknown."""

    name: str
    filename: str
    url: str | None = None
    hub_repo: str | None = None
    hub_filename: str | None = None
    hub_revision: str | None = None
    sha256: str | None = None
    license: str = "unknown"
    description: str = ""
    bundled: bool = False  # shipped inside the package, in bfr/weights/compact/
    made_by: str = ""  # the bfr command that makes the file, for weights no one publishes

    @property
    def remote(self) -> str | None:
        """Where the file can be fetched from, in words (hub first), or None."""
        if self.hub_repo:
            rev = f"@{self.hub_revision}" if self.hub_revision else ""
            return f"https://huggingface.co/{self.hub_repo}{rev} ({self.hub_filename or self.filename})"
        return self.url


_DIFFACE_RELEASE = "https://github.com/zsyOAOA/DifFace/releases/download/V1.0/"
_FACEXLIB_RELEASE = "https://github.com/xinntao/facexlib/releases/download/"
_TORCHVISION = "https://download.pytorch.org/models/"
_TORCHVISION_LICENSE = "BSD-3-Clause (torchvision); trained on ImageNet, research data"
_DIFFACE_LICENSE = "NTU S-Lab License 1.0 (non-commercial)"

CATALOG: dict[str, WeightSpec] = {
    spec.name: spec
    for spec in (
        WeightSpec(
            name="difface_unet_512",
            filename="iddpm_ffhq512_ema500000.pth",
            url=_DIFFACE_RELEASE + "iddpm_ffhq512_ema500000.pth",
            license=_DIFFACE_LICENSE,
            description="DifFace's unconditional FFHQ-512 diffusion prior (improved-DDPM UNet, EMA weights).",
        ),
        WeightSpec(
            name="difface_swinir_512",
            filename="swinir_restoration512_L1.pth",
            url=_DIFFACE_RELEASE + "swinir_restoration512_L1.pth",
            license=_DIFFACE_LICENSE,
            description="DifFace's restoration backbone: SwinIR trained with L1 on synthetic degradations, 512 px.",
        ),
        WeightSpec(
            name="dtbfr_swinir_gan",
            filename="swinir_gan_v1.pth",
            # From the authors' misc/download_weights.sh (SamsungLabs/DT-BFR).
            url="https://github.com/SamsungLabs/DT-BFR/releases/download/v1.0.0/swinir_gan_v1.pth",
            license="CC BY-NC-SA 4.0",
            description="Kuai et al.'s baseline restorer: SwinIR-GAN in DifFace's SwinIR layout, 512 px.",
        ),
        # facexlib's networks for the face pipeline and the metrics: the files its own code downloads. facexlib's
        # MIT covers its code; each network keeps its origin's terms.
        WeightSpec(
            name="retinaface_resnet50",
            filename="detection_Resnet50_Final.pth",
            url=_FACEXLIB_RELEASE + "v0.1.0/detection_Resnet50_Final.pth",
            sha256="6d1de9c2944f2ccddca5f5e010ea5ae64a39845a86311af6fdf30841b0a5a16d",
            license="MIT (biubug6/Pytorch_Retinaface, distributed by facexlib; trained on WIDER FACE, research data)",
            description="Face detector with 5 landmarks (RetinaFace-ResNet50, 110 MB), as DifFace, GFPGAN and "
                        "CodeFormer use; without it bfr detects with OpenCV's Haar cascades.",
        ),
        WeightSpec(
            name="parsenet",
            filename="parsing_parsenet.pth",
            url=_FACEXLIB_RELEASE + "v0.2.2/parsing_parsenet.pth",
            sha256="3d558d8d0e42c20224f13cf5a29c79eba2d59913419f945545d8cf7b72920de2",
            license="CC BY-NC-SA 4.0 (PSFR-GAN's ParseNet, distributed by facexlib; trained on CelebAMask-HQ, "
                    "non-commercial)",
            description="Face parsing (ParseNet, 85 MB) for the paste-back mask of 512-px faces; without it faces "
                        "are pasted through a soft ellipse.",
        ),
        WeightSpec(
            name="arcface_ir_se50",
            filename="recognition_arcface_ir_se50.pth",
            url=_FACEXLIB_RELEASE + "v0.1.0/recognition_arcface_ir_se50.pth",
            license="code MIT (TreB1eN/InsightFace_Pytorch, distributed by facexlib); weights trained on "
                    "InsightFace's MS1M, licensed for non-commercial research only: an evaluation tool",
            description="ArcFace IR-SE50 face embedding: `bfr eval`'s identity similarity (IDS).",
        ),
        # torchvision's ImageNet networks behind LPIPS and FID, under the names torchvision itself caches.
        WeightSpec(
            name="alexnet_imagenet",
            filename="alexnet-owt-7be5be79.pth",
            url=_TORCHVISION + "alexnet-owt-7be5be79.pth",
            license=_TORCHVISION_LICENSE,
            description="AlexNet trunk of LPIPS-AlexNet (233 MB): `bfr eval`'s LPIPS.",
        ),
        WeightSpec(
            name="vgg16_imagenet",
            filename="vgg16-397923af.pth",
            url=_TORCHVISION + "vgg16-397923af.pth",
            license=_TORCHVISION_LICENSE,
            description="VGG16 trunk of LPIPS-VGG (528 MB): the perceptual loss of Kuai et al.'s fine-tuning and of "
                        "FLIPNET's face embedding; training drops the term without it.",
        ),
        WeightSpec(
            name="inception_v3_imagenet",
            filename="inception_v3_google-0cc3c7bd.pth",
            url=_TORCHVISION + "inception_v3_google-0cc3c7bd.pth",
            license=_TORCHVISION_LICENSE,
            description="Inception-v3 (104 MB) pool features: `bfr eval`'s FID.",
        ),
        WeightSpec(
            name="prior64",
            filename="prior64.safetensors",
            bundled=True,
            license="see bfr/weights/compact/prior64.md",
            made_by="python -m bfr train prior",
            description="Compact tier: 64 px face diffusion prior trained by bfr.",
        ),
        WeightSpec(
            name="idm64",
            filename="idm64.safetensors",
            bundled=True,
            license="see bfr/weights/compact/idm64.md",
            made_by="python -m bfr train idm",
            description="Compact tier: 64 px IDM (conditional diffusion restorer, extrinsic rounds) trained by bfr.",
        ),
        WeightSpec(
            name="idm_unet_512",
            filename="idm_unet_512.safetensors",
            license="none published (no public weights; bring your own)",
            description="IDM at paper scale (IDM_UNET_512): untrained in bfr; Zhao et al. released no code or weights.",
        ),
        WeightSpec(
            name="swinir64_adapted",
            filename="swinir64_adapted.safetensors",
            bundled=True,
            license="see bfr/weights/compact/swinir64_adapted.md",
            made_by="python -m bfr adapt LQ_DIR -o RUN --bundle DIR",
            description="Compact tier: swinir64 adapted without ground truth to the 'camera-lowres' degradation "
            "(Kuai et al.'s unsupervised fine-tuning on prior64 pseudo-targets).",
        ),
        WeightSpec(
            name="swinir512_adapted",
            filename="swinir512_adapted.safetensors",
            license="none published (derived from DT-BFR's SwinIR-GAN, CC BY-NC-SA 4.0; make your own)",
            made_by="python -m bfr adapt LQ_DIR -o RUN --tier paper --clean-dir FFHQ_DIR --bundle DIR",
            description="Kuai et al. at 512 px: DT-BFR's SwinIR-GAN (dtbfr_swinir_gan) adapted without ground "
                        "truth to your degraded faces; no adapted weights are public, and the un-adapted "
                        "baseline is not the method.",
        ),
        WeightSpec(
            name="flipnet64",
            filename="flipnet64.safetensors",
            bundled=True,
            license="see bfr/weights/compact/flipnet64.md",
            made_by="python -m bfr train flipnet",
            description="Compact tier: FLIPNET adapters (LoRA, BoostHub, mode and face embedding) on prior64, "
                        "trained by bfr.",
        ),
        WeightSpec(
            name="flipnet_sd21",
            filename="flipnet_sd21.safetensors",
            license="none published (no public weights; bring your own)",
            description="FLIPNET adapters for Stable Diffusion 2.1-base: Miao et al. released no code or weights; "
                        "bfr trains them on a GPU.",
            made_by="python -m bfr train flipnet --tier paper --clean-dir FFHQ_DIR",
        ),
        WeightSpec(
            name="sd21_unet",
            filename="sd21_base_unet.safetensors",
            hub_repo="stabilityai/stable-diffusion-2-1-base",
            hub_filename="unet/diffusion_pytorch_model.safetensors",
            license="CreativeML Open RAIL++-M",
            description="Stable Diffusion 2.1-base UNet (512 px, ε-prediction): FLIPNET's frozen paper-tier prior.",
        ),
        WeightSpec(
            name="sd21_vae",
            filename="sd21_base_vae.safetensors",
            hub_repo="stabilityai/stable-diffusion-2-1-base",
            hub_filename="vae/diffusion_pytorch_model.safetensors",
            license="CreativeML Open RAIL++-M",
            description="Stable Diffusion 2.1-base VAE: FLIPNET's paper-tier latent space.",
        ),
        WeightSpec(
            name="swinir64",
            filename="swinir64.safetensors",
            bundled=True,
            license="see bfr/weights/compact/swinir64.md",
            made_by="python -m bfr train backbone",
            description="Compact tier: 64 px SwinIR restorer trained by bfr.",
        ),
    )
}


# facexlib's networks (above), which bfr fetches where downloads are on and falls back without.
FACEXLIB_NETWORKS = ("retinaface_resnet50", "parsenet", "arcface_ir_se50")
# torchvision's networks (above), found in torch's hub cache too; fetched and done without likewise.
TORCHVISION_NETWORKS = ("alexnet_imagenet", "vgg16_imagenet", "inception_v3_imagenet")


def get_spec(name: str) -> WeightSpec:
    """The catalog entry called `name`; an unknown name lists the known ones."""
    try:
        return CATALOG[name]
    except KeyError:
        known = ", ".join(sorted(CATALOG))
        raise InputError(f"unknown weights {name!r}; known: {known}") from None
