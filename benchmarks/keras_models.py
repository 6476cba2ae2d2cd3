"""MSRF-Net (the original's wiring) in Keras 3 on TensorFlow, for `python -m benchmarks.vs_torch --baseline keras`.

The original project trained MSRF-Net in Keras; this is an independent build of the same network, written from
docs/msrfnet.md like `benchmarks/torch_models.MSRFNet` and layer for layer the same as it (NHWC, Keras's own
'same' padding), so that its parameter count equals lensjax's. Inputs: image (B, H, W, in_ch) and its Canny
edges (B, H, W, 1); outputs: the probabilities [x, edge_out, pred2, pred4], each (B, H, W, out_ch).
"""

from __future__ import annotations

import keras
from keras import layers, ops

MSRF_CHANNELS = (32, 64, 128, 256)
# (scale pair) of the 7 live DSDF blocks in call order: pair p fuses scales p and p + 1 (as torch_models).
MSRF_LIVE_DSDF = (0, 2, 0, 2, 1, 0, 2)


def conv(ch: int, k: int = 3, strides: int = 1, padding: str = "same", activation=None) -> layers.Conv2D:
  return layers.Conv2D(ch, k, strides=strides, padding=padding, activation=activation)


def conv_up(ch: int, k: int) -> layers.Conv2DTranspose:
  return layers.Conv2DTranspose(ch, k, strides=2, padding="same")


def bn(eps: float = 1e-3) -> layers.BatchNormalization:
  return layers.BatchNormalization(epsilon=eps, momentum=0.99)


def lrelu(x):
  return layers.LeakyReLU(negative_slope=0.25)(x)


def relu(x):
  return layers.ReLU()(x)


def squeeze_excite(x):
  ch = x.shape[-1]
  gate = layers.GlobalAveragePooling2D()(x)
  gate = layers.Dense(ch, activation="sigmoid")(layers.Dense(max(1, ch // 16), activation="relu")(gate))
  return x * layers.Reshape((1, 1, ch))(gate)


def encoder_block(x, ch: int, se: bool):
  x = bn()(conv(ch, activation="relu")(conv(ch, activation="relu")(x)))
  return squeeze_excite(x) if se else x


def dsdf(x, y):
  """The dual-scale dense fusion block as Keras executes it (y1 = lrelu(y)): x (H, Cx) and y (H/2, Cy)."""
  cx, cy = x.shape[-1], y.shape[-1]
  gc = cx // 2
  cat = lambda *ts: layers.Concatenate()(list(ts))
  x1, y1 = lrelu(conv(gc)(x)), lrelu(y)
  x1c, y1t = lrelu(conv(gc, strides=2)(x)), lrelu(conv_up(gc, 3)(y))
  x2, y2 = lrelu(conv(gc)(cat(x, x1, y1t))), lrelu(conv(gc)(cat(y, y1, x1c)))
  x2c, y2t = lrelu(conv(gc, strides=2)(x1)), lrelu(conv_up(gc, 3)(y1))
  x3, y3 = lrelu(conv(gc)(cat(x, x1, x2, y2t))), lrelu(conv(gc)(cat(y, y1, y2, x2c)))
  x3c, y3t = lrelu(conv(gc, strides=2)(x3)), lrelu(conv_up(gc, 3)(y3))
  x4, y4 = lrelu(conv(gc)(cat(x, x1, x2, x3, y3t))), lrelu(conv(gc)(cat(y, y1, y2, y3, x3c)))
  x4c, y4t = lrelu(conv(gc, strides=2)(x4)), lrelu(conv_up(gc, 3)(y4))
  x5 = lrelu(conv(cx)(cat(x, x1, x2, x3, x4, y4t)))
  y5 = lrelu(conv(cy)(cat(y, y1, y2, y3, y4, x4c)))
  return x + 0.4 * x5, y + 0.4 * y5


def resize(x, size):
  return layers.Resizing(*size, interpolation="bilinear")(x)


def gated_shape_conv(x, gate, hidden: int):
  z = bn()(layers.Concatenate()([x, gate]))
  return layers.Activation("sigmoid")(bn()(conv(1, 1)(conv(hidden, 1, activation="relu")(z))))


def shape_residual(x, ch: int):
  return relu(bn()(conv(ch)(x)) + x)


def attention(skip, gate, k: int):
  theta = conv(k, 2, strides=2, padding="valid")(skip)
  psi = conv(1, 1, activation="sigmoid")(relu(theta + conv(k, 1)(gate)))
  return bn(1e-5)(skip * conv_up(1, 2)(psi))


def dual_attention(skip, prev, ch: int):
  u = relu(bn()(conv_up(ch, 4)(prev)))
  z = relu(bn()(conv(ch)(layers.Concatenate()([skip, u]))))
  spatial = conv(1, 1, activation="sigmoid")(relu(bn()(conv(ch // 4, 1)(z))))
  return (spatial + 1) * squeeze_excite(z)


def decoder_stage(skip, prev, out_ch: int):
  ch = skip.shape[-1]
  t = conv(ch, 1)(layers.Concatenate()([conv_up(ch, 1)(prev), attention(skip, prev, ch),
                                        dual_attention(skip, prev, ch)]))
  n = t + conv(ch)(relu(bn()(conv(ch)(relu(bn()(t))))))
  return n, conv(out_ch, 1)(n)


def msrfnet(size: int, in_ch: int = 1, out_ch: int = 1, width: float = 1.0) -> keras.Model:
  """The network at `size` px: inputs [image, canny], outputs the probabilities [x, edge_out, pred2, pred4]."""
  c1, c2, c3, c4 = (max(1, int(c * width + 0.5)) for c in MSRF_CHANNELS)
  s1, s2, s3, s4 = (max(1, int(c * width + 0.5)) for c in (32, 16, 8, 4))
  image, canny = keras.Input((size, size, in_ch)), keras.Input((size, size, 1))
  encoded, x = [], image
  for level, (ch, se) in enumerate(((c1, True), (c2, True), (c3, True), (c4, False))):
    if level:
      x = layers.Dropout(0.2)(layers.MaxPooling2D(2)(x))
    x = encoder_block(x, ch, se)
    encoded.append(x)
  streams = list(encoded)
  for pair in MSRF_LIVE_DSDF:
    streams[pair], streams[pair + 1] = dsdf(streams[pair], streams[pair + 1])
  n13, n23, n33, n43 = (e + 0.4 * s for e, s in zip(encoded, streams))
  full = (size, size)
  ss = shape_residual(resize(conv(s1, 1)(n23), full), s1)
  ss = shape_residual(gated_shape_conv(conv(s2, 1)(ss), resize(conv(1, 1)(n33), full), s1 + 1), s2)
  ss = shape_residual(gated_shape_conv(conv(s3, 1)(ss), resize(conv(1, 1)(n43), full), s2 + 1), s3)
  edge_logits = conv(out_ch, 1)(conv(s4, 1)(ss))
  mixed = conv(1, 1, activation="sigmoid")(layers.Concatenate()([layers.Activation("sigmoid")(edge_logits), canny]))
  edge = relu(bn()(conv(1, 1)(mixed)))
  n34, pred4 = decoder_stage(n33, n43, out_ch)
  n24, pred2 = decoder_stage(n23, n34, out_ch)
  merged = conv(c1, 1, activation="relu")(layers.Concatenate()([conv_up(c1, 4)(n24), n13]))
  y = bn()(conv(c1, activation="relu")(merged)) + merged
  x = conv(out_ch, 1)(conv(c1, activation="relu")(layers.Concatenate()([y, edge])))
  outputs = [layers.Activation("sigmoid", name=name)(logits) for name, logits in
             (("x", x), ("edge_out", edge_logits), ("pred2", resize(pred2, full)), ("pred4", resize(pred4, full)))]
  return keras.Model([image, canny], outputs)


def seg_loss(mask, probabilities):
  """The original's segmentation loss: mean BCE + (1 - soft Dice over the whole batch, smoothing 1)."""
  dice = (2 * ops.sum(mask * probabilities) + 1) / (ops.sum(mask) + ops.sum(probabilities) + 1)
  return keras.losses.binary_crossentropy(mask, probabilities) + 1 - dice
