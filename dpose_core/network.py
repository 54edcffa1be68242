"""The D-PoSE network in PyTorch, state-dict compatible with the released checkpoint.

Module names, registration order and shapes follow the reference `HMR` exactly (docs/network.md,
`data/state_dict.tsv`), so the checkpoint's `model.*` entries, prefix stripped, load with
`strict=True`. The forward is reorganised for export and speed, not for the reference's API:

* `forward(images, bbox_info)` takes the CLIFF box features computed outside in numpy
  (`dpose_core.camera.bbox_info`), so every crop keeps its own focal length (the reference
  tiles focal lengths wrongly for mixed image sizes, docs/camera.md) and the graph stays small.
* The SMPL-X layer is not run here: its buffers are registered (strict loading needs them and
  the body model ships in the checkpoint) but skinning happens in numpy (`body_model.py`).
* The reference runs the attention twice on the same inputs (docs/network.md); we run it once and
  feed the result to all three regressor streams. The depth map never reaches the attention;
  depth influences pose and shape only through the 48-d global mean of the depth decoder's
  56x56 features. `backbone.final_layer` and `attention.conv1x1_shape_cam` are loaded, unused.
* Only ops that export cleanly to ONNX opset 17: AdaptiveAvgPool2d(56) on a 224 map is replaced
  by the identical 4x4/stride-4 average pool, nearest upsampling uses integer scale factors,
  bilinear upsampling uses align_corners=True with scale factor 2, the cross product is written
  out, and MultiLinear is a broadcast matmul instead of an einsum.

This module imports torch at import time; callers import it lazily (`dpose_core` itself never
needs torch).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .constants import NUM_PART_CLASSES
from .errors import CheckpointError
from .skeleton import NUM_BETAS
from .skeleton import NUM_PREDICTED_JOINTS as NUM_JOINTS  # global orientation + 21 body joints

POSE_6D = 6
HRNET_CHANNELS = (48, 96, 192, 384)
UPSAMPLED_CHANNELS = sum(HRNET_CHANNELS)  # 720
DEPTH_FEATURE_CHANNELS = 48
BBOX_INFO_DIM = 3
JOINT_FEATURE_DIM = UPSAMPLED_CHANNELS + BBOX_INFO_DIM + DEPTH_FEATURE_CHANNELS  # 771
HIDDEN_DIM = 32
BN_EPS = 1e-5
STATE_DICT_SIZE = 2309

#: Output order of `DPoseNet.forward` (also the ONNX output names).
OUTPUT_NAMES = ("rotmat", "betas", "cam_crop", "depth", "part_logits")
INPUT_NAMES = ("images", "bbox_info")

# SMPL-X layer buffers (smplx 0.1.28 SMPLXLayer, num_betas=11, neutral v1.1), registration order.
SMPLX_BUFFERS: tuple[tuple[str, tuple[int, ...], torch.dtype], ...] = (
    ("shapedirs", (10475, 3, 11), torch.float32),
    ("faces_tensor", (20908, 3), torch.int64),
    ("v_template", (10475, 3), torch.float32),
    ("J_regressor", (55, 10475), torch.float32),
    ("posedirs", (486, 31425), torch.float32),
    ("parents", (55,), torch.int64),
    ("lbs_weights", (10475, 55), torch.float32),
    ("left_hand_components", (6, 45), torch.float32),
    ("right_hand_components", (6, 45), torch.float32),
    ("left_hand_mean", (45,), torch.float32),
    ("right_hand_mean", (45,), torch.float32),
    ("pose_mean", (165,), torch.float32),
    ("lmk_faces_idx", (51,), torch.int64),
    ("lmk_bary_coords", (51, 3), torch.float32),
    ("expr_dirs", (10475, 3, 10), torch.float32),
)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=bias)


def _conv1x1(in_ch: int, out_ch: int, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 1, bias=bias)


def _upsample2_bilinear(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)


class _Bilinear2x(nn.Module):
    """Parameter-free x2 bilinear upsampling (align_corners=True); keeps Sequential indices."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _upsample2_bilinear(x)


class _Nearest(nn.Module):
    """Parameter-free nearest upsampling by an integer factor (HRNet fuse layers)."""

    def __init__(self, factor: int) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=float(self.factor), mode="nearest")


# --------------------------------------------------------------------------- HRNet-W48


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN + shortcut, ReLU (HRNet branches and UNET refinement)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_ch, out_ch)
        self.bn1 = _bn(out_ch)
        self.conv2 = _conv3x3(out_ch, out_ch)
        self.bn2 = _bn(out_ch)
        self.downsample = (
            nn.Sequential(_conv1x1(in_ch, out_ch), _bn(out_ch)) if in_ch != out_ch else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class Bottleneck(nn.Module):
    """ResNet bottleneck (expansion 4) used by HRNet's layer1."""

    def __init__(self, in_ch: int, planes: int) -> None:
        super().__init__()
        out_ch = planes * 4
        self.conv1 = _conv1x1(in_ch, planes)
        self.bn1 = _bn(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = _bn(planes)
        self.conv3 = _conv1x1(planes, out_ch)
        self.bn3 = _bn(out_ch)
        self.downsample = (
            nn.Sequential(_conv1x1(in_ch, out_ch), _bn(out_ch)) if in_ch != out_ch else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class HighResolutionModule(nn.Module):
    """Parallel branches of BasicBlocks, then every output fuses every branch (docs/network.md)."""

    def __init__(self, channels: tuple[int, ...], num_blocks: int = 4) -> None:
        super().__init__()
        n = len(channels)
        self.branches = nn.ModuleList(
            nn.Sequential(*(BasicBlock(c, c) for _ in range(num_blocks))) for c in channels
        )
        fuse_layers = []
        for i in range(n):
            row: list[nn.Module | None] = []
            for j in range(n):
                if j > i:
                    row.append(
                        nn.Sequential(
                            _conv1x1(channels[j], channels[i]),
                            _bn(channels[i]),
                            _Nearest(2 ** (j - i)),
                        )
                    )
                elif j == i:
                    row.append(None)
                else:
                    links = []
                    for k in range(i - j):
                        last = k == i - j - 1
                        out_ch = channels[i] if last else channels[j]
                        link = [_conv3x3(channels[j], out_ch, stride=2), _bn(out_ch)]
                        if not last:
                            link.append(nn.ReLU())
                        links.append(nn.Sequential(*link))
                    row.append(nn.Sequential(*links))
            fuse_layers.append(nn.ModuleList(row))
        self.fuse_layers = nn.ModuleList(fuse_layers)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs, strict=True)]
        fused = []
        for i, row in enumerate(self.fuse_layers):
            y = xs[0] if i == 0 else row[0](xs[0])
            for j in range(1, len(xs)):
                y = y + (xs[j] if i == j else row[j](xs[j]))
            fused.append(F.relu(y))
        return fused


def _transition(in_ch: int, out_ch: int, nested: bool) -> nn.Sequential:
    layers = nn.Sequential(
        _conv3x3(in_ch, out_ch, stride=2 if nested else 1), _bn(out_ch), nn.ReLU()
    )
    return nn.Sequential(layers) if nested else layers


def _upsample_head(channels: int, times: int) -> nn.Sequential:
    """`times` x [bilinear x2, conv3x3, BN, ReLU]; indices match the reference's Sequential."""
    layers: list[nn.Module] = []
    for _ in range(times):
        layers += [_Bilinear2x(), _conv3x3(channels, channels), _bn(channels), nn.ReLU()]
    return nn.Sequential(*layers)


class HRNetW48(nn.Module):
    """Pose HRNet-W48 whose last stage-4 module fuses all branches, plus a 720-ch 56x56 map."""

    def __init__(self) -> None:
        super().__init__()
        c0, c1, c2, c3 = HRNET_CHANNELS
        self.conv1 = nn.Conv2d(3, 64, 3, stride=2, padding=1, bias=False)
        self.bn1 = _bn(64)
        self.conv2 = nn.Conv2d(64, 64, 3, stride=2, padding=1, bias=False)
        self.bn2 = _bn(64)
        self.layer1 = nn.Sequential(*(Bottleneck(64 if i == 0 else 256, 64) for i in range(4)))
        self.transition1 = nn.ModuleList(
            [_transition(256, c0, nested=False), _transition(256, c1, nested=True)]
        )
        self.stage2 = nn.Sequential(HighResolutionModule((c0, c1)))
        self.transition2 = nn.ModuleList(
            [nn.Identity(), nn.Identity(), _transition(c1, c2, nested=True)]
        )
        self.stage3 = nn.Sequential(*(HighResolutionModule((c0, c1, c2)) for _ in range(4)))
        self.transition3 = nn.ModuleList(
            [nn.Identity(), nn.Identity(), nn.Identity(), _transition(c2, c3, nested=True)]
        )
        self.stage4 = nn.Sequential(*(HighResolutionModule((c0, c1, c2, c3)) for _ in range(3)))
        self.final_layer = nn.Conv2d(c0, 24, 1)  # unused by the reference forward
        self.upsample_stage_2 = _upsample_head(c1, 1)
        self.upsample_stage_3 = _upsample_head(c2, 2)
        self.upsample_stage_4 = _upsample_head(c3, 3)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Return ([x0 48@56, x1 96@28, x2 192@14, x3 384@7], upsampled 720@56)."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = self.layer1(x)
        xs = [t(x) for t in self.transition1]
        for module in self.stage2:
            xs = module(xs)
        xs = xs + [self.transition2[2](xs[-1])]
        for module in self.stage3:
            xs = module(xs)
        xs = xs + [self.transition3[3](xs[-1])]
        for module in self.stage4:
            xs = module(xs)
        upsampled = torch.cat(
            [
                xs[0],
                self.upsample_stage_2(xs[1]),
                self.upsample_stage_3(xs[2]),
                self.upsample_stage_4(xs[3]),
            ],
            dim=1,
        )
        return xs, upsampled


# --------------------------------------------------------------------------- UNET decoders


class Upscaler(nn.Module):
    """48@56 -> 48@224: two rounds of bilinear x2, ReLU, conv3x3 (bias), BN, ReLU."""

    def __init__(self, channels: int = DEPTH_FEATURE_CHANNELS) -> None:
        super().__init__()
        self.conv3_1 = _conv3x3(channels, channels, bias=True)
        self.bn2 = _bn(channels)
        self.conv3_2 = _conv3x3(channels, channels, bias=True)
        self.bn4 = _bn(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(_upsample2_bilinear(x))
        x = F.relu(self.bn2(self.conv3_1(x)))
        x = F.relu(_upsample2_bilinear(x))
        return F.relu(self.bn4(self.conv3_2(x)))


class UNetDecoder(nn.Module):
    """Depth (1 sigmoid channel) or part-segmentation (23 logits) decoder over HRNet branches."""

    def __init__(self, out_channels: int, sigmoid: bool) -> None:
        super().__init__()
        c0, c1, c2, c3 = HRNET_CHANNELS

        def up(in_ch: int, out_ch: int) -> nn.Sequential:
            return nn.Sequential(_conv1x1(in_ch, out_ch), _bn(out_ch), nn.ReLU(), _Bilinear2x())

        def refine(in_ch: int, out_ch: int) -> nn.Sequential:
            return nn.Sequential(
                BasicBlock(in_ch, out_ch), *(BasicBlock(out_ch, out_ch) for _ in range(3))
            )

        self.upsample_modules = nn.ModuleDict(
            {
                "upsample_3_to_2": up(c3, c2),
                "upsample_2_to_1": up(c2, c1),
                "upsample_1_to_0": up(c1, c0),
            }
        )
        self.fusion_and_refinement = nn.ModuleDict(
            {
                "fuse_and_refine_3": refine(2 * c2, c2),
                "fuse_and_refine_2": refine(2 * c1, c1),
                "fuse_and_refine_1": refine(2 * c0, c0),
            }
        )
        final: list[nn.Module] = [
            _conv3x3(c0, c0, bias=True),
            _bn(c0),
            nn.ReLU(),
            _conv1x1(c0, out_channels, bias=True),
        ]
        if sigmoid:
            final.append(nn.Sigmoid())
        self.final_layers = nn.Sequential(*final)
        self.upscaling = Upscaler(c0)

    def forward(self, xs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (224x224 map, 48@56 refinement features); skips are concatenated second."""
        up, ref = self.upsample_modules, self.fusion_and_refinement
        y = ref["fuse_and_refine_3"](torch.cat([up["upsample_3_to_2"](xs[3]), xs[2]], dim=1))
        y = ref["fuse_and_refine_2"](torch.cat([up["upsample_2_to_1"](y), xs[1]], dim=1))
        feats = ref["fuse_and_refine_1"](torch.cat([up["upsample_1_to_0"](y), xs[0]], dim=1))
        return self.final_layers(self.upscaling(feats)), feats


# --------------------------------------------------------------------------- attention + head


class KeypointAttention(nn.Module):
    """Per-part spatial softmax pooling of the 720-ch features (docs/network.md); ignores depth."""

    def __init__(self, channels: int = UPSAMPLED_CHANNELS) -> None:
        super().__init__()
        self.conv1x1_pose = nn.Conv1d(channels, channels, 1)
        self.conv1x1_shape_cam = nn.Conv1d(channels, channels, 1)  # unused (docs/network.md)

    def forward(self, features: torch.Tensor, part_maps: torch.Tensor) -> torch.Tensor:
        """features (B,720,56,56), part_maps (B,22,224,224) logits -> (B,720,22)."""
        # AdaptiveAvgPool2d(56) from 224 is exactly a 4x4 stride-4 block mean.
        pooled = F.avg_pool2d(part_maps, kernel_size=4, stride=4)
        weights = pooled.flatten(2).softmax(dim=-1)  # (B,22,3136)
        attended = torch.matmul(weights, features.flatten(2).transpose(1, 2))  # (B,22,720)
        return self.conv1x1_pose(attended.transpose(1, 2))


class MultiLinear(nn.Module):
    """One independent Linear per joint: y[b,k] = W[k] @ x[b,k] + bias[k]."""

    def __init__(self, n_head: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_head, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(n_head, out_features))
        bound = 1.0 / in_features**0.5
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B,K,1,in) @ (K,in,out) -> (B,K,1,out); a broadcast MatMul exports cleanly.
        return torch.matmul(x.unsqueeze(2), self.weight.transpose(1, 2)).squeeze(2) + self.bias


def rot6d_to_rotmat(x: torch.Tensor) -> torch.Tensor:
    """(..., 6) -> (..., 3, 3), D-PoSE layout (docs/network.md#6d-rotations).

    The 6 numbers are a row-major 3x2 matrix; its columns u=(a0,a2,a4), v=(a1,a3,a5) are
    Gram-Schmidt orthonormalised and b1, b2, b1 x b2 become the matrix *columns*. The norm is
    clamped at 1e-12 like F.normalize; the cross product is explicit for ONNX export.
    """
    m = x.reshape(*x.shape[:-1], 3, 2)
    u, v = m[..., 0], m[..., 1]
    b1 = u / torch.linalg.vector_norm(u, dim=-1, keepdim=True).clamp_min(1e-12)
    w = v - (b1 * v).sum(dim=-1, keepdim=True) * b1
    b2 = w / torch.linalg.vector_norm(w, dim=-1, keepdim=True).clamp_min(1e-12)
    b3 = torch.stack(
        [
            b1[..., 1] * b2[..., 2] - b1[..., 2] * b2[..., 1],
            b1[..., 2] * b2[..., 0] - b1[..., 0] * b2[..., 2],
            b1[..., 0] * b2[..., 1] - b1[..., 1] * b2[..., 0],
        ],
        dim=-1,
    )
    return torch.stack([b1, b2, b3], dim=-1)


class Regressor(nn.Module):
    """One-step regressor from the mean parameters (docs/network.md#regressor).

    Per joint k the feature is [attention (720), bbox_info (3), mean depth feature (48)] (771).
    Pose: per-joint MultiLinear on [init_pose_k (6), feature_k]. Shape/cam: the joint-major
    flattening (index k*771 + c) with init_shape (11) / init_cam (3) prepended.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("init_pose", torch.zeros(1, NUM_JOINTS * POSE_6D))
        self.register_buffer("init_shape", torch.zeros(1, NUM_BETAS))
        self.register_buffer("init_cam", torch.zeros(1, 3))
        flat = NUM_JOINTS * JOINT_FEATURE_DIM
        self.p = nn.Sequential(
            MultiLinear(NUM_JOINTS, POSE_6D + JOINT_FEATURE_DIM, HIDDEN_DIM), nn.ReLU()
        )
        self.s = nn.Sequential(nn.Linear(NUM_BETAS + flat, HIDDEN_DIM), nn.ReLU())
        self.c = nn.Sequential(nn.Linear(3 + flat, HIDDEN_DIM), nn.ReLU())
        self.decpose = MultiLinear(NUM_JOINTS, HIDDEN_DIM, POSE_6D)
        self.decshape = nn.Linear(HIDDEN_DIM, NUM_BETAS)
        self.deccam = nn.Linear(HIDDEN_DIM, 3)

    def joint_features(
        self, attention: torch.Tensor, bbox_info: torch.Tensor, depth_feats: torch.Tensor
    ) -> torch.Tensor:
        """(B,720,22), (B,3), (B,48,56,56) -> (B,22,771)."""
        n = attention.shape[-1]
        g = depth_feats.mean(dim=(2, 3))
        per_joint = torch.cat(
            [
                attention,
                bbox_info.unsqueeze(-1).expand(-1, -1, n),
                g.unsqueeze(-1).expand(-1, -1, n),
            ],
            dim=1,
        )
        return per_joint.transpose(1, 2)

    def forward(
        self, attention: torch.Tensor, bbox_info: torch.Tensor, depth_feats: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (pose_6d (B,22,6), betas (B,11), cam_crop (B,3))."""
        feats = self.joint_features(attention, bbox_info, depth_feats)
        batch = feats.shape[0]
        init_pose = self.init_pose.reshape(1, NUM_JOINTS, POSE_6D).expand(batch, -1, -1)
        init_shape = self.init_shape.expand(batch, -1)
        init_cam = self.init_cam.expand(batch, -1)
        flat = feats.flatten(1)
        pose = init_pose + self.decpose(self.p(torch.cat([init_pose, feats], dim=2)))
        betas = init_shape + self.decshape(self.s(torch.cat([init_shape, flat], dim=1)))
        cam = init_cam + self.deccam(self.c(torch.cat([init_cam, flat], dim=1)))
        return pose, betas, cam


# --------------------------------------------------------------------------- body-model buffers


class _VertexJointSelector(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("extra_joints_idxs", torch.zeros(21, dtype=torch.int64))


class _SMPLXBuffers(nn.Module):
    """Holds the checkpoint's SMPL-X buffers under the reference names; never run in torch."""

    def __init__(self) -> None:
        super().__init__()
        for name, shape, dtype in SMPLX_BUFFERS:
            self.register_buffer(name, torch.zeros(shape, dtype=dtype))
        self.vertex_joint_selector = _VertexJointSelector()


class _SMPLXCamHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.smplx = _SMPLXBuffers()


# --------------------------------------------------------------------------- the network


class DPoseNet(nn.Module):
    """D-PoSE image -> (SMPL-X rotations, betas, crop camera, depth map, part logits)."""

    def __init__(self) -> None:
        super().__init__()
        # Registration order = reference state-dict order.
        self.backbone = HRNetW48()
        self.head = Regressor()
        self.smpl = _SMPLXCamHead()
        self.depth_decoder = UNetDecoder(1, sigmoid=True)
        self.segmentation_decoder = UNetDecoder(NUM_PART_CLASSES, sigmoid=False)
        self.attention = KeypointAttention()

    def forward(
        self, images: torch.Tensor, bbox_info: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """images (B,3,224,224) ImageNet-normalised RGB, bbox_info (B,3) CLIFF features.

        Returns, in `OUTPUT_NAMES` order: rotmat (B,22,3,3) (index 0 = camera-frame global
        orientation), betas (B,11), cam_crop (B,3) = (s, tx, ty) for the 224 crop,
        depth (B,224,224) in (0,1), part_logits (B,23,224,224).
        """
        features, upsampled = self.backbone(images)
        part_logits, _ = self.segmentation_decoder(features)
        depth, depth_feats = self.depth_decoder(features)
        attention = self.attention(upsampled, part_logits[:, 1:])
        pose_6d, betas, cam_crop = self.head(attention, bbox_info, depth_feats)
        return rot6d_to_rotmat(pose_6d), betas, cam_crop, depth[:, 0], part_logits


def outputs_as_dict(outputs: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
    """Name the forward's tuple with `OUTPUT_NAMES`."""
    return dict(zip(OUTPUT_NAMES, outputs, strict=True))


@functools.cache
def expected_state_dict_spec() -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Name -> (shape, dtype) of every entry `build_network` expects, in state-dict order.

    Built on the meta device, so it costs no memory or initialisation time.
    """
    with torch.device("meta"):
        net = DPoseNet()
    return {name: (tuple(t.shape), t.dtype) for name, t in net.state_dict().items()}


def _check_arrays(arrays: Mapping[str, np.ndarray]) -> None:
    expected = expected_state_dict_spec()
    missing = [k for k in expected if k not in arrays]
    extra = [k for k in arrays if k not in expected]
    wrong = []
    for k, (shape, dtype) in expected.items():
        if k not in arrays:
            continue
        a = np.asarray(arrays[k])
        want_int = not dtype.is_floating_point
        if tuple(a.shape) != shape:
            wrong.append(f"{k}: shape {tuple(a.shape)}, expected {shape}")
        elif (a.dtype.kind in "iu") != want_int or a.dtype.kind not in "iuf":
            wrong.append(f"{k}: dtype {a.dtype}, expected {str(dtype).removeprefix('torch.')}")
    if missing or extra or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[:3]})")
        if extra:
            parts.append(f"{len(extra)} unexpected (e.g. {extra[:3]})")
        if wrong:
            parts.append(f"{len(wrong)} mismatched (e.g. {wrong[:3]})")
        raise CheckpointError(
            "The weights do not match the D-PoSE network: "
            + "; ".join(parts)
            + ". Use the released D-PoSE checkpoint (paper_arxiv.ckpt) with the 'model.' "
            "prefix stripped."
        )


def build_network(
    arrays: Mapping[str, np.ndarray] | None = None, device: str | torch.device = "cpu"
) -> DPoseNet:
    """A `DPoseNet` in eval mode on `device`, loaded strictly from `arrays` if given.

    `arrays` is the `model.`-stripped state dict (e.g. `checkpoint.load_checkpoint_arrays`).
    Every key, shape and dtype kind (integer vs float) must match, else `CheckpointError`
    names the offending keys. Without `arrays` the weights are PyTorch's random init.
    Loading builds the module on the meta device and assigns the arrays (cast to the expected
    dtype; writable arrays of the right dtype are shared, not copied), so no time is spent on
    a random initialisation that would be overwritten.
    """
    if arrays is None:
        return DPoseNet().to(device).eval()
    _check_arrays(arrays)
    expected = expected_state_dict_spec()
    tensors = {}
    for name, (_, dtype) in expected.items():
        a = np.asarray(arrays[name])
        np_dtype = np.int64 if dtype == torch.int64 else np.float32
        if a.dtype != np_dtype or not a.flags.writeable or not a.flags.c_contiguous:
            a = np.array(a, dtype=np_dtype, order="C", copy=True)
        tensors[name] = torch.from_numpy(a)
    with torch.device("meta"):
        net = DPoseNet()
    net.load_state_dict(tensors, strict=True, assign=True)
    return net.to(device).eval()
