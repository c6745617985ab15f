"""Downstream starting point for paper Tables 1-2: FLatten backbones in detection and segmentation.

* torchvision's Mask R-CNN with an FPN on a ``features_only`` FLatten-Swin-T, one training step at
  512x640 (COCO-style, non-square) on the CPU;
* a Semantic-FPN head (Table 1's S-FPN) on a ``features_only`` FLatten-PVT-T, one training step at
  ADE20K's 512x512 crops.

The default suite runs both on one image with the registered layouts narrowed (``TINY_KWARGS``,
same stages, windows and global attention); the slow suite runs them at full width on two images. docs/dense_prediction.md
shows the same code.
"""
from collections import OrderedDict

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.detection import MaskRCNN
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

import models  # noqa: F401  (registers the models)
from tiny import TINY_KWARGS


class FPNBackbone(nn.Module):
    """A timm ``features_only`` model + torchvision's FPN: the backbone torchvision's detectors take.

    Args:
        body: ``timm.create_model(..., features_only=True, dynamic_img_size=True)``.
        out_channels: channels of every FPN level.
        extra_blocks: torchvision's extra FPN levels (``LastLevelMaxPool()`` for Mask R-CNN's 'pool').
    """

    def __init__(self, body: nn.Module, out_channels: int = 256, extra_blocks=None):
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(body.feature_info.channels(), out_channels, extra_blocks=extra_blocks)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(self.body(x))))


class SemanticFPNHead(nn.Module):
    """Panoptic FPN's semantic branch (Kirillov et al., 2019), the S-FPN of paper Table 1.

    Each FPN level (strides 4-32) is brought to stride 4 by conv3x3-GroupNorm-ReLU stages with 2x
    bilinear upsampling, the four maps are summed, a 1x1 conv gives the class scores, and those are
    upsampled to the input size.
    """

    def __init__(self, in_channels: int = 256, channels: int = 128, num_classes: int = 150, num_levels: int = 4):
        super().__init__()
        self.scale_heads = nn.ModuleList()
        for level in range(num_levels):
            layers = []
            for j in range(max(1, level)):
                layers += [nn.Conv2d(in_channels if j == 0 else channels, channels, 3, padding=1, bias=False),
                           nn.GroupNorm(min(32, channels), channels), nn.ReLU(inplace=True)]
                if level > 0:
                    layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.scale_heads.append(nn.Sequential(*layers))
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats, size):
        x = sum(head(f) for head, f in zip(self.scale_heads, feats))              # (B, channels, H/4, W/4)
        return F.interpolate(self.classifier(x), size=size, mode="bilinear", align_corners=False)


def coco_like_batch(n, h=512, w=640):
    images = [torch.rand(3, h, w) for _ in range(n)]
    targets = []
    for i in range(n):
        boxes = torch.tensor([[40.0 + 30 * i, 60.0, 300.0, 400.0], [320.0, 100.0, 600.0 - 20 * i, 480.0]])
        masks = torch.zeros(2, h, w, dtype=torch.uint8)
        for j, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
            masks[j, y0:y1, x0:x1] = 1
        targets.append(dict(boxes=boxes, labels=torch.tensor([1, 3]), masks=masks))
    return images, targets


def mask_rcnn_step(narrow: bool):
    torch.manual_seed(0)
    body = timm.create_model("flatten_swin_t", features_only=True, dynamic_img_size=True,
                             **(TINY_KWARGS["swin"] if narrow else {}))
    fpn_channels = 32 if narrow else 256
    model = MaskRCNN(FPNBackbone(body, fpn_channels, LastLevelMaxPool()), num_classes=5, min_size=512, max_size=640,
                     rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=100, rpn_batch_size_per_image=64,
                     box_batch_size_per_image=64, box_detections_per_img=10)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    images, targets = coco_like_batch(1 if narrow else 2)
    losses = model(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    loss.backward()
    # The global attention of stage 1 (its encoding resampled from 56x56 to the 128x160 grid) learns.
    pe = body.model.layers[0].blocks[0].attn.positional_encoding
    assert pe.grad is not None and pe.grad.abs().sum() > 0
    before = pe.detach().clone()
    opt.step()
    assert not torch.equal(before, pe.detach())
    model.eval()
    with torch.no_grad():
        detections = model([images[0]])
    assert set(detections[0]) == {"boxes", "labels", "scores", "masks"}


def semantic_fpn_step(narrow: bool):
    torch.manual_seed(0)
    body = timm.create_model("flatten_pvt_t", features_only=True, dynamic_img_size=True,
                             **(TINY_KWARGS["pvt"] if narrow else {}))
    channels = 32 if narrow else 256
    fpn = FeaturePyramidNetwork(body.feature_info.channels(), channels)
    head = SemanticFPNHead(channels, channels // 2 if narrow else 128, num_classes=150)
    params = list(body.parameters()) + list(fpn.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4)
    batch = 1 if narrow else 2
    x = torch.randn(batch, 3, 512, 512)
    labels = torch.randint(0, 150, (batch, 512, 512))
    labels[:, :8] = 255                                                  # ADE20K's ignore label
    feats = fpn(OrderedDict((str(i), f) for i, f in enumerate(body(x))))
    logits = head(list(feats.values()), x.shape[-2:])
    assert logits.shape == (batch, 150, 512, 512)
    loss = F.cross_entropy(logits, labels, ignore_index=255)
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in params)
    opt.step()


def test_mask_rcnn_on_flatten_swin_t_narrow():
    mask_rcnn_step(narrow=True)


def test_semantic_fpn_on_flatten_pvt_t_narrow():
    semantic_fpn_step(narrow=True)


@pytest.mark.slow
def test_mask_rcnn_on_flatten_swin_t():
    mask_rcnn_step(narrow=False)


@pytest.mark.slow
def test_semantic_fpn_on_flatten_pvt_t():
    semantic_fpn_step(narrow=False)
