"""float32 exp2, log2, arctanh and arctan as fused jax.numpy arithmetic, for the renderer's inner loops.

XLA's CPU `exp`, `log` and `log1p` keep full-range reduction and inf/NaN handling that the profiles never need,
and its `arctan` is about 10x slower than `exp`; the renderer spends most of its time in them. These versions
split the argument with integer bit arithmetic (`lax.bitcast_convert_type`) and evaluate a short polynomial, so
each is a dozen vector instructions that XLA fuses into the profile's loop.

Accuracy against float64 (tests/test_sim_fastmath.py pins it; measured maxima in brackets):
  exp2     relative error < 3e-7 for x in [-126, 127] [1.8e-7]; exactly 0 below -126 (where float32 would be
           subnormal: XLA's CPU code flushes those to zero anyway); x above 127 is clamped to 127.
  log2     absolute error < 1.5e-7 max(|log2 x|, 1) [8.8e-8], relative < 3e-7 [1.8e-7], for normal positive x.
  arctanh  relative error < 4e-7 for |u| < 1 [1.7e-7].
  arctan   relative error < 3e-7 (Cephes `atanf` range reduction).
Derivatives are the exact ones (custom JVPs: 2^x ln 2, 1 / (x ln 2), 1 / (1 - u^2), 1 / (1 + z^2)), not those
of the bit arithmetic, so the profiles stay differentiable. No NaN or inf handling: callers pass finite
arguments in these domains. float64 arguments go to `jax.numpy` (the polynomials only have float32 accuracy),
so the float64 test path stays exact.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

# Minimax (relative error) polynomial of 2^f on [-1/2, 1/2], degree 5 with c0 = 1 (2^0 is exact): 9.1e-8.
_EXP2_COEFFICIENTS = (1.0, 0.6931469775484278, 0.24022242046439113, 0.055507338123935344, 0.00967151460547387,
                      0.0013264708168645167)
# Minimax (relative error) polynomial P with log2(1 + t) = t P(t) on [sqrt(1/2) - 1, sqrt(2) - 1]: 2.6e-8.
_LOG2_COEFFICIENTS = (1.442695003645303, -0.7213473475537875, 0.480910645024268, -0.36070361924665384,
                      0.2879161229000064, -0.23894616885306438, 0.2157182442153598, -0.20726150826093706,
                      0.12581966224148686)
# Minimax (relative error) polynomial Q with arctanh(u) = u Q(u^2) for |u| <= 1/2: 2.0e-8.
_ATANH_COEFFICIENTS = (0.9999999796755943, 0.33333904069317694, 0.1997421154667441, 0.14706281770513166,
                       0.08093861990172153, 0.18393215737736598)
# Below this |u| arctanh uses its series; above, log2((1 + u) / (1 - u)) is at least 1.58 and the rounding of
# the ratio costs under 1 ulp.
_ATANH_SERIES_BELOW = 0.5
_ROUNDING_SHIFTER = np.float32(1.5 * 2**23)   # x + this rounds x to an integer held in the low mantissa bits
_SQRT_HALF_BITS = 0x3F3504F3                  # float32 bits of sqrt(1/2)


def _horner(x: jax.Array, coefficients: tuple[float, ...]) -> jax.Array:
  """c0 + x (c1 + x (c2 + ...)) in float32 (XLA contracts each step into one FMA)."""
  result = jnp.full_like(x, np.float32(coefficients[-1]))
  for c in coefficients[-2::-1]:
    result = result * x + np.float32(c)
  return result


@jax.custom_jvp
def exp2(x: jax.Array) -> jax.Array:
  """2^x, elementwise; see the module docstring for domain and accuracy."""
  x = jnp.asarray(x)
  if x.dtype != jnp.float32:
    return jnp.exp2(x)
  clamped = jnp.clip(x, np.float32(-126), np.float32(127))
  # Adding 1.5 * 2^23 leaves round(clamped) in the low mantissa bits of `shifted`; shifting its bits left by 23
  # moves that integer into the exponent field and pushes every other bit out. (`shifted - 1.5 * 2^23` would
  # be the rounded value too, but XLA simplifies (x + c) - c to x.) Both round half to even.
  shifted = clamped + _ROUNDING_SHIFTER
  fraction = clamped - jnp.round(clamped, 0)         # in [-1/2, 1/2]
  mantissa = _horner(fraction, _EXP2_COEFFICIENTS)  # 2^fraction in [0.707, 1.415]
  exponent_bits = jax.lax.shift_left(jax.lax.bitcast_convert_type(shifted, jnp.int32), np.int32(23))
  power = jax.lax.bitcast_convert_type(jax.lax.bitcast_convert_type(mantissa, jnp.int32) + exponent_bits,
                                       jnp.float32)
  return jnp.where(x < np.float32(-126), np.float32(0), power)


def _split_log2(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(e, m) with x = 2^e m, e integral (float32) and m in [sqrt(1/2), sqrt(2)), for normal positive float32 x."""
  bits = jax.lax.bitcast_convert_type(x, jnp.int32)
  offset = bits - np.int32(_SQRT_HALF_BITS)
  exponent = jax.lax.shift_right_arithmetic(offset, np.int32(23))
  mantissa = jax.lax.bitcast_convert_type(bits - (offset & np.int32(-(1 << 23))), jnp.float32)
  return exponent.astype(jnp.float32), mantissa


@jax.custom_jvp
def log2(x: jax.Array) -> jax.Array:
  """log2(x) for positive normal x, elementwise; see the module docstring for accuracy."""
  x = jnp.asarray(x)
  if x.dtype != jnp.float32:
    return jnp.log2(x)
  exponent, mantissa = _split_log2(x)
  t = mantissa - np.float32(1)
  return exponent + t * _horner(t, _LOG2_COEFFICIENTS)


@jax.custom_jvp
def arctanh(u: jax.Array) -> jax.Array:
  """arctanh(u) for |u| < 1, elementwise, accurate relative to u also for tiny u; see the module docstring."""
  u = jnp.asarray(u)
  if u.dtype != jnp.float32:
    return jnp.arctanh(u)
  series = u * _horner(u * u, _ATANH_COEFFICIENTS)
  # Large |u|: arctanh u = ln((1 + u) / (1 - u)) / 2, no cancellation once the ratio is outside [1/sqrt2, sqrt2].
  logarithm = np.float32(0.5 * math.log(2)) * log2((1 + u) / (1 - u))
  return jnp.where(jnp.abs(u) < np.float32(_ATANH_SERIES_BELOW), series, logarithm)


@jax.custom_jvp
def arctan(z: jax.Array) -> jax.Array:
  """arctan(z), elementwise: one division and a degree-9 odd polynomial (accuracy: module docstring).

  Range reduction to |t| <= tan(pi/8) as in Cephes `atanf`: arctan(z) = c + arctan((a|z| - b) / (g|z| + d))
  with c in {0, pi/4, pi/2}.
  """
  z = jnp.asarray(z)
  if z.dtype != jnp.float32:
    return jnp.arctan(z)
  magnitude = jnp.abs(z)
  beyond_3pi_8 = magnitude > np.float32(2.414213562373095)       # tan(3 pi / 8)
  beyond_pi_8 = magnitude > np.float32(0.41421356237309503)      # tan(pi / 8)
  one = jnp.ones_like(magnitude)
  zero = jnp.zeros_like(magnitude)
  numerator_scale = jnp.where(beyond_3pi_8, zero, one)
  numerator_offset = jnp.where(beyond_pi_8, one, zero)
  denominator_scale = jnp.where(beyond_pi_8, one, zero)
  denominator_offset = jnp.where(beyond_3pi_8, zero, one)
  offset = jnp.where(beyond_3pi_8, np.float32(math.pi / 2), jnp.where(beyond_pi_8, np.float32(math.pi / 4), zero))
  reduced = (numerator_scale * magnitude - numerator_offset) / (denominator_scale * magnitude + denominator_offset)
  square = reduced * reduced
  polynomial = ((np.float32(8.05374449538e-2) * square - np.float32(1.38776856032e-1)) * square
                + np.float32(1.99777106478e-1)) * square
  polynomial = (polynomial - np.float32(3.33329491539e-1)) * square * reduced + reduced
  return jnp.copysign(offset + polynomial, z)


@exp2.defjvp
def _exp2_jvp(primals, tangents):
  (x,), (dx,) = primals, tangents
  power = exp2(x)
  return power, power * math.log(2) * dx


@log2.defjvp
def _log2_jvp(primals, tangents):
  (x,), (dx,) = primals, tangents
  return log2(x), dx / (x * math.log(2))


@arctanh.defjvp
def _arctanh_jvp(primals, tangents):
  (u,), (du,) = primals, tangents
  return arctanh(u), du / (1 - u * u)


@arctan.defjvp
def _arctan_jvp(primals, tangents):
  (z,), (dz,) = primals, tangents
  return arctan(z), dz / (1 + z * z)
