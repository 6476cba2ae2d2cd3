"""An independent PyTorch ISNetDIS for the parity tests, written from `../shared/reference/isnet.md` §1.

It is spelled out block by block, as upstream's `IS-Net/models/isnet.py` is, and shares no code with
`lensjax.models.isnet`; module names are upstream's, so its `state_dict()` is an upstream state_dict.
Differences from upstream, both for testing: `width` scales every channel count (as lensjax's `width` does:
round half up, at least 1), and the forward returns the side **logits** (upstream returns their sigmoids).
Tensors are NCHW.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


def channels(n: int, width: float) -> int:
  return max(1, int(math.floor(n * width + 0.5)))


def upsample_like(src: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
  return F.interpolate(src, size=target.shape[2:], mode="bilinear", align_corners=False)


def pool() -> nn.MaxPool2d:
  return nn.MaxPool2d(2, stride=2, ceil_mode=True)


class REBNCONV(nn.Module):

  def __init__(self, in_ch: int, out_ch: int, dirate: int = 1):
    super().__init__()
    self.conv_s1 = nn.Conv2d(in_ch, out_ch, 3, padding=dirate, dilation=dirate)
    self.bn_s1 = nn.BatchNorm2d(out_ch)
    self.relu_s1 = nn.ReLU(inplace=True)

  def forward(self, x):
    return self.relu_s1(self.bn_s1(self.conv_s1(x)))


class RSU7(nn.Module):

  def __init__(self, in_ch, mid_ch, out_ch):
    super().__init__()
    self.rebnconvin = REBNCONV(in_ch, out_ch)
    self.rebnconv1 = REBNCONV(out_ch, mid_ch)
    self.pool1 = pool()
    self.rebnconv2 = REBNCONV(mid_ch, mid_ch)
    self.pool2 = pool()
    self.rebnconv3 = REBNCONV(mid_ch, mid_ch)
    self.pool3 = pool()
    self.rebnconv4 = REBNCONV(mid_ch, mid_ch)
    self.pool4 = pool()
    self.rebnconv5 = REBNCONV(mid_ch, mid_ch)
    self.pool5 = pool()
    self.rebnconv6 = REBNCONV(mid_ch, mid_ch)
    self.rebnconv7 = REBNCONV(mid_ch, mid_ch, dirate=2)
    self.rebnconv6d = REBNCONV(2 * mid_ch, mid_ch)
    self.rebnconv5d = REBNCONV(2 * mid_ch, mid_ch)
    self.rebnconv4d = REBNCONV(2 * mid_ch, mid_ch)
    self.rebnconv3d = REBNCONV(2 * mid_ch, mid_ch)
    self.rebnconv2d = REBNCONV(2 * mid_ch, mid_ch)
    self.rebnconv1d = REBNCONV(2 * mid_ch, out_ch)

  def forward(self, x):
    hxin = self.rebnconvin(x)
    hx1 = self.rebnconv1(hxin)
    hx2 = self.rebnconv2(self.pool1(hx1))
    hx3 = self.rebnconv3(self.pool2(hx2))
    hx4 = self.rebnconv4(self.pool3(hx3))
    hx5 = self.rebnconv5(self.pool4(hx4))
    hx6 = self.rebnconv6(self.pool5(hx5))
    hx7 = self.rebnconv7(hx6)
    hx6d = self.rebnconv6d(torch.cat((hx7, hx6), 1))
    hx5d = self.rebnconv5d(torch.cat((upsample_like(hx6d, hx5), hx5), 1))
    hx4d = self.rebnconv4d(torch.cat((upsample_like(hx5d, hx4), hx4), 1))
    hx3d = self.rebnconv3d(torch.cat((upsample_like(hx4d, hx3), hx3), 1))
    hx2d = self.rebnconv2d(torch.cat((upsample_like(hx3d, hx2), hx2), 1))
    hx1d = self.rebnconv1d(torch.cat((upsample_like(hx2d, hx1), hx1), 1))
    return hx1d + hxin


class RSU6(nn.Module):

  def __init__(self, in_ch, mid_ch, out_ch):
    super().__init__()
    self.rebnconvin = REBNCONV(in_ch, out_ch)
    self.rebnconv1 = REBNCONV(out_ch, mid_ch)
    self.pool1 = pool()
    self.rebnconv2 = REBNCONV(mid_ch, mid_ch)
    self.pool2 = pool()
    self.rebnconv3 = REBNCONV(mid_ch, mid_ch)
    self.pool3 = pool()
    self.rebnconv4 = REBNCONV(mid_ch, mid_ch)
    self.pool4 = pool()
    self.rebnconv5 = REBNCONV(mid_ch, mid_ch)
    self.rebnconv6 = REBNCONV(mid_ch, mid_ch, dirate=2)
    self.rebnconv5d = REBNCONV(2 * mid_ch, mid_ch)
    self.rebnconv4d = REBNCONV(2 * mid_ch, mid_ch)
    self.rebnconv3d = REBNCONV(2 * mid_ch, mid_ch)
    self.rebnconv2d = REBNCONV(2 * mid_ch, mid_ch)
    self.rebnconv1d = REBNCONV(2 * mid_ch, out_ch)

  def forward(self, x):
    hxin = self.rebnconvin(x)
    hx1 = self.rebnconv1(hxin)
    hx2 = self.rebnconv2(self.pool1(hx1))
    hx3 = self.rebnconv3(self.pool2(hx2))
    hx4 = self.rebnconv4(self.pool3(hx3))
    hx5 = self.rebnconv5(self.pool4(hx4))
    hx6 = self.rebnconv6(hx5)
    hx5d = self.rebnconv5d(torch.cat((hx6, hx5), 1))
    hx4d = self.rebnconv4d(torch.cat((upsample_like(hx5d, hx4), hx4), 1))
    hx3d = self.rebnconv3d(torch.cat((upsample_like(hx4d, hx3), hx3), 1))
    hx2d = self.rebnconv2d(torch.cat((upsample_like(hx3d, hx2), hx2), 1))
    hx1d = self.rebnconv1d(torch.cat((upsample_like(hx2d, hx1), hx1), 1))
    return hx1d + hxin


class RSU5(nn.Module):

  def __init__(self, in_ch, mid_ch, out_ch):
    super().__init__()
    self.rebnconvin = REBNCONV(in_ch, out_ch)
    self.rebnconv1 = REBNCONV(out_ch, mid_ch)
    self.pool1 = pool()
    self.rebnconv2 = REBNCONV(mid_ch, mid_ch)
    self.pool2 = pool()
    self.rebnconv3 = REBNCONV(mid_ch, mid_ch)
    self.pool3 = pool()
    self.rebnconv4 = REBNCONV(mid_ch, mid_ch)
    self.rebnconv5 = REBNCONV(mid_ch, mid_ch, dirate=2)
    self.rebnconv4d = REBNCONV(2 * mid_ch, mid_ch)
    self.rebnconv3d = REBNCONV(2 * mid_ch, mid_ch)
    self.rebnconv2d = REBNCONV(2 * mid_ch, mid_ch)
    self.rebnconv1d = REBNCONV(2 * mid_ch, out_ch)

  def forward(self, x):
    hxin = self.rebnconvin(x)
    hx1 = self.rebnconv1(hxin)
    hx2 = self.rebnconv2(self.pool1(hx1))
    hx3 = self.rebnconv3(self.pool2(hx2))
    hx4 = self.rebnconv4(self.pool3(hx3))
    hx5 = self.rebnconv5(hx4)
    hx4d = self.rebnconv4d(torch.cat((hx5, hx4), 1))
    hx3d = self.rebnconv3d(torch.cat((upsample_like(hx4d, hx3), hx3), 1))
    hx2d = self.rebnconv2d(torch.cat((upsample_like(hx3d, hx2), hx2), 1))
    hx1d = self.rebnconv1d(torch.cat((upsample_like(hx2d, hx1), hx1), 1))
    return hx1d + hxin


class RSU4(nn.Module):

  def __init__(self, in_ch, mid_ch, out_ch):
    super().__init__()
    self.rebnconvin = REBNCONV(in_ch, out_ch)
    self.rebnconv1 = REBNCONV(out_ch, mid_ch)
    self.pool1 = pool()
    self.rebnconv2 = REBNCONV(mid_ch, mid_ch)
    self.pool2 = pool()
    self.rebnconv3 = REBNCONV(mid_ch, mid_ch)
    self.rebnconv4 = REBNCONV(mid_ch, mid_ch, dirate=2)
    self.rebnconv3d = REBNCONV(2 * mid_ch, mid_ch)
    self.rebnconv2d = REBNCONV(2 * mid_ch, mid_ch)
    self.rebnconv1d = REBNCONV(2 * mid_ch, out_ch)

  def forward(self, x):
    hxin = self.rebnconvin(x)
    hx1 = self.rebnconv1(hxin)
    hx2 = self.rebnconv2(self.pool1(hx1))
    hx3 = self.rebnconv3(self.pool2(hx2))
    hx4 = self.rebnconv4(hx3)
    hx3d = self.rebnconv3d(torch.cat((hx4, hx3), 1))
    hx2d = self.rebnconv2d(torch.cat((upsample_like(hx3d, hx2), hx2), 1))
    hx1d = self.rebnconv1d(torch.cat((upsample_like(hx2d, hx1), hx1), 1))
    return hx1d + hxin


class RSU4F(nn.Module):

  def __init__(self, in_ch, mid_ch, out_ch):
    super().__init__()
    self.rebnconvin = REBNCONV(in_ch, out_ch)
    self.rebnconv1 = REBNCONV(out_ch, mid_ch)
    self.rebnconv2 = REBNCONV(mid_ch, mid_ch, dirate=2)
    self.rebnconv3 = REBNCONV(mid_ch, mid_ch, dirate=4)
    self.rebnconv4 = REBNCONV(mid_ch, mid_ch, dirate=8)
    self.rebnconv3d = REBNCONV(2 * mid_ch, mid_ch, dirate=4)
    self.rebnconv2d = REBNCONV(2 * mid_ch, mid_ch, dirate=2)
    self.rebnconv1d = REBNCONV(2 * mid_ch, out_ch)

  def forward(self, x):
    hxin = self.rebnconvin(x)
    hx1 = self.rebnconv1(hxin)
    hx2 = self.rebnconv2(hx1)
    hx3 = self.rebnconv3(hx2)
    hx4 = self.rebnconv4(hx3)
    hx3d = self.rebnconv3d(torch.cat((hx4, hx3), 1))
    hx2d = self.rebnconv2d(torch.cat((hx3d, hx2), 1))
    hx1d = self.rebnconv1d(torch.cat((hx2d, hx1), 1))
    return hx1d + hxin


class ISNetDIS(nn.Module):
  """forward(x: (B, in_ch, H, W)) -> ([d1 .. d6] logits (B, out_ch, H, W), [hx1d, hx2d, hx3d, hx4d, hx5d, hx6])."""

  def __init__(self, in_ch: int = 3, out_ch: int = 1, width: float = 1.0):
    super().__init__()
    c = lambda n: channels(n, width)
    self.conv_in = nn.Conv2d(in_ch, c(64), 3, stride=2, padding=1)
    self.stage1 = RSU7(c(64), c(32), c(64))
    self.pool12 = pool()
    self.stage2 = RSU6(c(64), c(32), c(128))
    self.pool23 = pool()
    self.stage3 = RSU5(c(128), c(64), c(256))
    self.pool34 = pool()
    self.stage4 = RSU4(c(256), c(128), c(512))
    self.pool45 = pool()
    self.stage5 = RSU4F(c(512), c(256), c(512))
    self.pool56 = pool()
    self.stage6 = RSU4F(c(512), c(256), c(512))
    self.stage5d = RSU4F(2 * c(512), c(256), c(512))
    self.stage4d = RSU4(2 * c(512), c(128), c(256))
    self.stage3d = RSU5(2 * c(256), c(64), c(128))
    self.stage2d = RSU6(2 * c(128), c(32), c(64))
    self.stage1d = RSU7(2 * c(64), c(16), c(64))
    self.side1 = nn.Conv2d(c(64), out_ch, 3, padding=1)
    self.side2 = nn.Conv2d(c(64), out_ch, 3, padding=1)
    self.side3 = nn.Conv2d(c(128), out_ch, 3, padding=1)
    self.side4 = nn.Conv2d(c(256), out_ch, 3, padding=1)
    self.side5 = nn.Conv2d(c(512), out_ch, 3, padding=1)
    self.side6 = nn.Conv2d(c(512), out_ch, 3, padding=1)

  def forward(self, x):
    hxin = self.conv_in(x)
    hx1 = self.stage1(hxin)
    hx2 = self.stage2(self.pool12(hx1))
    hx3 = self.stage3(self.pool23(hx2))
    hx4 = self.stage4(self.pool34(hx3))
    hx5 = self.stage5(self.pool45(hx4))
    hx6 = self.stage6(self.pool56(hx5))
    hx5d = self.stage5d(torch.cat((upsample_like(hx6, hx5), hx5), 1))
    hx4d = self.stage4d(torch.cat((upsample_like(hx5d, hx4), hx4), 1))
    hx3d = self.stage3d(torch.cat((upsample_like(hx4d, hx3), hx3), 1))
    hx2d = self.stage2d(torch.cat((upsample_like(hx3d, hx2), hx2), 1))
    hx1d = self.stage1d(torch.cat((upsample_like(hx2d, hx1), hx1), 1))
    features = [hx1d, hx2d, hx3d, hx4d, hx5d, hx6]
    heads = [self.side1, self.side2, self.side3, self.side4, self.side5, self.side6]
    logits = [upsample_like(head(feature), x) for head, feature in zip(heads, features)]
    return logits, features


def randomize_batch_norm_(model: nn.Module, seed: int) -> nn.Module:
  """Gives every BatchNorm non-trivial affine parameters and running statistics, so eval mode tests them."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, nn.BatchNorm2d):
        n = module.num_features
        module.weight.copy_(0.5 + torch.rand(n, generator=generator))
        module.bias.copy_(0.2 * torch.randn(n, generator=generator))
        module.running_mean.copy_(0.2 * torch.randn(n, generator=generator))
        module.running_var.copy_(0.5 + torch.rand(n, generator=generator))
        module.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=generator)))
  return model
