"""Independent PyTorch networks for the weight-import parity tests and the side-by-side benchmark
(`benchmarks/vs_torch.py`), written from the architecture descriptions, sharing no code with `lensjax.models`.

- `ISNetDIS`: IS-Net spelled out block by block as upstream's `IS-Net/models/isnet.py` is; module names are
  upstream's, so its `state_dict()` is an upstream state_dict. Differences from upstream: `width` scales every
  channel count (as lensjax's `width` does: round half up, at least 1), `depth` keeps the first levels (as
  lensjax's `depth`), and the forward returns the side **logits** (upstream returns their sigmoids).
- `MSRFNet`: MSRF-Net as the original Keras `model.py::msrf()` executes it (its 7 live DSDF blocks, the dead y1
  conv left out), NCHW with TensorFlow's 'same' padding and transposed-conv alignment; returns logits.

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


# (encoder stages, decoder stages) per IS-Net level 1..6: (block, in, mid, out) at width 1; the decoder's input is
# the upsampled deeper map concatenated with the skip. Upstream spells these out in `ISNetDIS.__init__`.
ENCODER = ((RSU7, 64, 32, 64), (RSU6, 64, 32, 128), (RSU5, 128, 64, 256), (RSU4, 256, 128, 512),
           (RSU4F, 512, 256, 512), (RSU4F, 512, 256, 512))
DECODER = ((RSU7, 128, 16, 64), (RSU6, 256, 32, 64), (RSU5, 512, 64, 128), (RSU4, 1024, 128, 256),
           (RSU4F, 1024, 256, 512))
SIDE_CHANNELS = (64, 64, 128, 256, 512, 512)


class ISNetDIS(nn.Module):
  """forward(x: (B, in_ch, H, W)) -> ([d1 .. dD] logits (B, out_ch, H, W), [hx1d, ..., hx{D-1}d, hxD]).

  `depth` D < 6 keeps levels 1..D; the bottom stage D then emits the channels hx{D}d has in the full network, as
  lensjax's `depth` option does (its stage 4 at depth 4 is RSU4(256, 128, 256)).
  """

  def __init__(self, in_ch: int = 3, out_ch: int = 1, width: float = 1.0, depth: int = 6):
    super().__init__()
    c = lambda n: channels(n, width)
    self.depth = depth
    self.conv_in = nn.Conv2d(in_ch, c(64), 3, stride=2, padding=1)
    for level, (block, cin, mid, out) in enumerate(ENCODER[:depth], start=1):
      if level == depth < 6:
        out = DECODER[level - 1][3]
      setattr(self, f"stage{level}", block(c(cin), c(mid), c(out)))
    for level in range(depth - 1, 0, -1):
      block, cin, mid, out = DECODER[level - 1]
      setattr(self, f"stage{level}d", block(2 * c(cin // 2), c(mid), c(out)))
    for level in range(1, depth + 1):
      setattr(self, f"side{level}", nn.Conv2d(c(SIDE_CHANNELS[level - 1]), out_ch, 3, padding=1))

  def forward(self, x):
    hx = self.conv_in(x)
    skips = []
    for level in range(1, self.depth + 1):
      hx = getattr(self, f"stage{level}")(F.max_pool2d(hx, 2, 2, ceil_mode=True) if level > 1 else hx)
      skips.append(hx)
    features = [hx]
    for level in range(self.depth - 1, 0, -1):
      skip = skips[level - 1]
      hx = getattr(self, f"stage{level}d")(torch.cat((upsample_like(hx, skip), skip), 1))
      features.insert(0, hx)
    logits = [upsample_like(getattr(self, f"side{level}")(feature), x)
              for level, feature in enumerate(features, start=1)]
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


# ---------------------------------------------------------------------------------------------------------------
# MSRF-Net (original wiring): Keras conventions, NCHW.

MSRF_CHANNELS = (32, 64, 128, 256)
# (scale pair) of the 7 live DSDF blocks in call order: pair p fuses scales p and p + 1.
MSRF_LIVE_DSDF = (0, 2, 0, 2, 1, 0, 2)


def conv_same(in_ch: int, out_ch: int, k: int = 3) -> nn.Conv2d:
  """Keras Conv2D(k, padding='same', stride 1) for odd k."""
  return nn.Conv2d(in_ch, out_ch, k, padding=k // 2)


class ConvDown(nn.Module):
  """Keras Conv2D(3, strides=2, padding='same') on even sizes: TensorFlow pads 0 before and 1 after."""

  def __init__(self, in_ch: int, out_ch: int):
    super().__init__()
    self.conv = nn.Conv2d(in_ch, out_ch, 3, stride=2)

  def forward(self, x):
    return self.conv(F.pad(x, (0, 1, 0, 1)))


class ConvUp(nn.Module):
  """Keras Conv2DTranspose(k, strides=2, padding=...) : (h, w) -> (2h, 2w), output y[2i + a - p] += x[i] w[a]
  with TensorFlow's p = max(k - 2, 0) // 2 ('same') or 0 ('valid')."""

  def __init__(self, in_ch: int, out_ch: int, k: int):
    super().__init__()
    self.shift = max(k - 2, 0) // 2
    self.conv = nn.ConvTranspose2d(in_ch, out_ch, k, stride=2)      # full output: 2h + max(k - 2, 0)

  def forward(self, x):
    y = self.conv(x)
    h, w = 2 * x.shape[2], 2 * x.shape[3]
    if y.shape[2] < h:     # k = 1: the last row and column lie beyond every input pixel and get only the bias
      bias = self.conv.bias[None, :, None, None]
      y = F.pad(y - bias, (0, 1, 0, 1)) + bias
    return y[:, :, self.shift:self.shift + h, self.shift:self.shift + w]


class SE(nn.Module):

  def __init__(self, ch: int):
    super().__init__()
    self.squeeze = nn.Linear(ch, max(1, ch // 16))
    self.excite = nn.Linear(max(1, ch // 16), ch)

  def forward(self, x):
    gate = torch.sigmoid(self.excite(F.relu(self.squeeze(x.mean((2, 3))))))
    return x * gate[:, :, None, None]


def bn(ch: int, eps: float = 1e-3) -> nn.BatchNorm2d:
  return nn.BatchNorm2d(ch, eps=eps, momentum=0.01)


class EncoderBlock(nn.Module):

  def __init__(self, in_ch: int, out_ch: int, se: bool):
    super().__init__()
    self.conv1, self.conv2, self.bn = conv_same(in_ch, out_ch), conv_same(out_ch, out_ch), bn(out_ch)
    self.se = SE(out_ch) if se else nn.Identity()

  def forward(self, x):
    return self.se(self.bn(F.relu(self.conv2(F.relu(self.conv1(x))))))


def lrelu(x):
  return F.leaky_relu(x, 0.25)


class RDDB(nn.Module):
  """The dual-scale dense fusion block as Keras executes it (y1 = lrelu(y)): x (Cx, H) and y (Cy, H/2)."""

  def __init__(self, cx: int, cy: int):
    super().__init__()
    gc = cx // 2
    self.x1 = conv_same(cx, gc)
    self.x2, self.x3, self.x4 = conv_same(cx + 2 * gc, gc), conv_same(cx + 3 * gc, gc), conv_same(cx + 4 * gc, gc)
    self.x5 = conv_same(cx + 5 * gc, cx)
    self.y2, self.y3 = conv_same(2 * cy + gc, gc), conv_same(2 * cy + 2 * gc, gc)
    self.y4 = conv_same(2 * cy + 3 * gc, gc)
    self.y5 = conv_same(2 * cy + 4 * gc, cy)
    self.down = nn.ModuleList([ConvDown(cx, gc), ConvDown(gc, gc), ConvDown(gc, gc), ConvDown(gc, gc)])
    self.up = nn.ModuleList([ConvUp(cy, gc, 3), ConvUp(cy, gc, 3), ConvUp(gc, gc, 3), ConvUp(gc, gc, 3)])

  def forward(self, x, y):
    x1, y1 = lrelu(self.x1(x)), lrelu(y)
    x1c, y1t = lrelu(self.down[0](x)), lrelu(self.up[0](y))
    x2, y2 = lrelu(self.x2(torch.cat((x, x1, y1t), 1))), lrelu(self.y2(torch.cat((y, y1, x1c), 1)))
    x2c, y2t = lrelu(self.down[1](x1)), lrelu(self.up[1](y1))
    x3, y3 = lrelu(self.x3(torch.cat((x, x1, x2, y2t), 1))), lrelu(self.y3(torch.cat((y, y1, y2, x2c), 1)))
    x3c, y3t = lrelu(self.down[2](x3)), lrelu(self.up[2](y3))
    x4 = lrelu(self.x4(torch.cat((x, x1, x2, x3, y3t), 1)))
    y4 = lrelu(self.y4(torch.cat((y, y1, y2, y3, x3c), 1)))
    x4c, y4t = lrelu(self.down[3](x4)), lrelu(self.up[3](y4))
    x5 = lrelu(self.x5(torch.cat((x, x1, x2, x3, x4, y4t), 1)))
    y5 = lrelu(self.y5(torch.cat((y, y1, y2, y3, y4, x4c), 1)))
    return x + 0.4 * x5, y + 0.4 * y5


def up_bilinear(x, size):
  return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class GSC(nn.Module):
  """Gated shape conv: the 1-channel map sigmoid(BN(1x1(relu(1x1(BN([x, gate]))))))."""

  def __init__(self, ch: int, hidden: int):
    super().__init__()
    self.bn_in, self.hidden = bn(ch + 1), conv_same(ch + 1, hidden, 1)
    self.out, self.bn_out = conv_same(hidden, 1, 1), bn(1)

  def forward(self, x, gate):
    return torch.sigmoid(self.bn_out(self.out(F.relu(self.hidden(self.bn_in(torch.cat((x, gate), 1)))))))


class ShapeRes(nn.Module):

  def __init__(self, in_ch: int, out_ch: int):
    super().__init__()
    self.conv, self.bn = conv_same(in_ch, out_ch), bn(out_ch)

  def forward(self, x):
    return F.relu(self.bn(self.conv(x)) + x)


class AttentionB(nn.Module):

  def __init__(self, skip_ch: int, gate_ch: int, k: int):
    super().__init__()
    self.theta, self.phi = nn.Conv2d(skip_ch, k, 2, stride=2), conv_same(gate_ch, k, 1)
    self.psi, self.up, self.bn = conv_same(k, 1, 1), ConvUp(1, 1, 2), bn(skip_ch, eps=1e-5)

  def forward(self, skip, gate):
    psi = torch.sigmoid(self.psi(F.relu(self.theta(skip) + self.phi(gate))))
    return self.bn(skip * self.up(psi))


class DualAttention(nn.Module):

  def __init__(self, skip_ch: int, prev_ch: int, ch: int):
    super().__init__()
    self.up, self.up_bn = ConvUp(prev_ch, ch, 4), bn(ch)
    self.fuse, self.fuse_bn, self.se = conv_same(skip_ch + ch, ch), bn(ch), SE(ch)
    self.sp_hidden, self.sp_bn, self.sp_out = conv_same(ch, ch // 4, 1), bn(ch // 4), conv_same(ch // 4, 1, 1)

  def forward(self, skip, prev):
    u = F.relu(self.up_bn(self.up(prev)))
    z = F.relu(self.fuse_bn(self.fuse(torch.cat((skip, u), 1))))
    spatial = torch.sigmoid(self.sp_out(F.relu(self.sp_bn(self.sp_hidden(z)))))
    return (spatial + 1) * self.se(z)


class DecoderStage(nn.Module):

  def __init__(self, ch: int, prev_ch: int, out_ch: int):
    super().__init__()
    self.att, self.up3, self.dual = AttentionB(ch, prev_ch, ch), ConvUp(prev_ch, ch, 1), DualAttention(ch, prev_ch, ch)
    self.fuse, self.bn1, self.conv1 = conv_same(3 * ch, ch, 1), bn(ch), conv_same(ch, ch)
    self.bn2, self.conv2, self.head = bn(ch), conv_same(ch, ch), conv_same(ch, out_ch, 1)

  def forward(self, skip, prev):
    t = self.fuse(torch.cat((self.up3(prev), self.att(skip, prev), self.dual(skip, prev)), 1))
    n = t + self.conv2(F.relu(self.bn2(self.conv1(F.relu(self.bn1(t))))))
    return n, self.head(n)


class MSRFNet(nn.Module):
  """forward(image (B, in_ch, H, W), canny (B, 1, H, W)) -> [x, edge_out, pred2, pred4] logits (B, out_ch, H, W)."""

  def __init__(self, in_ch: int = 1, out_ch: int = 1, width: float = 1.0):
    super().__init__()
    c1, c2, c3, c4 = (max(1, int(c * width + 0.5)) for c in MSRF_CHANNELS)
    s1, s2, s3, s4 = (max(1, int(c * width + 0.5)) for c in (32, 16, 8, 4))
    self.encoder = nn.ModuleList([EncoderBlock(in_ch, c1, True), EncoderBlock(c1, c2, True),
                                  EncoderBlock(c2, c3, True), EncoderBlock(c3, c4, False)])
    pairs = ((c1, c2), (c2, c3), (c3, c4))
    self.dsdf = nn.ModuleList([RDDB(*pairs[p]) for p in MSRF_LIVE_DSDF])
    self.ss_entry, self.ss_res1, self.ss_gate3 = conv_same(c2, s1, 1), ShapeRes(s1, s1), conv_same(c3, 1, 1)
    self.ss_reduce2, self.ss_gsc2, self.ss_res2 = conv_same(s1, s2, 1), GSC(s2, s1 + 1), ShapeRes(1, s2)
    self.ss_reduce3, self.ss_gate4, self.ss_gsc3 = conv_same(s2, s3, 1), conv_same(c4, 1, 1), GSC(s3, s2 + 1)
    self.ss_res3, self.ss_reduce4, self.ss_head = ShapeRes(1, s3), conv_same(s3, s4, 1), conv_same(s4, out_ch, 1)
    self.edge_mix, self.edge_gain, self.edge_bn = conv_same(out_ch + 1, 1, 1), conv_same(1, 1, 1), bn(1)
    self.dec4, self.dec2 = DecoderStage(c3, c4, out_ch), DecoderStage(c2, c3, out_ch)
    self.out_up, self.out_merge = ConvUp(c2, c1, 4), conv_same(2 * c1, c1, 1)
    self.out_conv, self.out_bn, self.out_edge = conv_same(c1, c1), bn(c1), conv_same(c1 + 1, c1)
    self.out_head = conv_same(c1, out_ch, 1)

  def forward(self, image, canny):
    size = image.shape[2:]
    encoded, x = [], image
    for level, block in enumerate(self.encoder):
      if level:
        x = F.dropout(F.max_pool2d(x, 2), 0.2, self.training)
      x = block(x)
      encoded.append(x)
    streams = list(encoded)
    for pair, block in zip(MSRF_LIVE_DSDF, self.dsdf):
      streams[pair], streams[pair + 1] = block(streams[pair], streams[pair + 1])
    n13, n23, n33, n43 = (e + 0.4 * s for e, s in zip(encoded, streams))
    ss = self.ss_res1(up_bilinear(self.ss_entry(n23), size))
    ss = self.ss_res2(self.ss_gsc2(self.ss_reduce2(ss), up_bilinear(self.ss_gate3(n33), size)))
    ss = self.ss_res3(self.ss_gsc3(self.ss_reduce3(ss), up_bilinear(self.ss_gate4(n43), size)))
    edge_out = self.ss_head(self.ss_reduce4(ss))
    mixed = torch.sigmoid(self.edge_mix(torch.cat((torch.sigmoid(edge_out), canny), 1)))
    edge = F.relu(self.edge_bn(self.edge_gain(mixed)))
    n34, pred4 = self.dec4(n33, n43)
    n24, pred2 = self.dec2(n23, n34)
    merged = F.relu(self.out_merge(torch.cat((self.out_up(n24), n13), 1)))
    y = self.out_bn(F.relu(self.out_conv(merged))) + merged
    x = self.out_head(F.relu(self.out_edge(torch.cat((y, edge), 1))))
    return [x, edge_out, up_bilinear(pred2, size), up_bilinear(pred4, size)]
