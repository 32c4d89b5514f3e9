"""G.711 (ITU-T) mu-law and A-law: 16-bit linear PCM <-> 8-bit codes through numpy tables. Pure.

Decoding is one table look-up per byte; encoding one look-up per sample in a 65,536-entry table
built once from the reference algorithm (the same bit-exact results as the standard's code).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Pcm = npt.NDArray[np.int16]


def _ulaw_encode_one(sample: int) -> int:
    """The reference encoder (14-bit magnitude, bias 33, eight segments)."""
    value = sample >> 2
    mask = 0xFF
    if value < 0:
        value, mask = -value, 0x7F
    value = min(value, 8159) + 33
    segment = next((i for i, end in enumerate(_ULAW_SEGMENT_ENDS) if value <= end), 8)
    if segment >= 8:
        return 0x7F ^ mask
    return ((segment << 4) | ((value >> (segment + 1)) & 0x0F)) ^ mask


_ULAW_SEGMENT_ENDS = (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF)


def _ulaw_decode_one(code: int) -> int:
    code = ~code & 0xFF
    sign, exponent, mantissa = code & 0x80, (code >> 4) & 0x07, code & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return -magnitude if sign else magnitude


def _alaw_encode_one(sample: int) -> int:
    sign = 0x80 if sample >= 0 else 0
    magnitude = sample if sample >= 0 else -sample - 1
    magnitude = min(magnitude, 32767) >> 3  # 13-bit
    if magnitude < 32:
        code = magnitude >> 1
    else:
        exponent = magnitude.bit_length() - 5
        code = (exponent << 4) | ((magnitude >> exponent) & 0x0F)
    return (sign | code) ^ 0x55


def _alaw_decode_one(code: int) -> int:
    code ^= 0x55
    sign, exponent, mantissa = code & 0x80, (code >> 4) & 0x07, code & 0x0F
    step = (mantissa << 4) + (8 if exponent == 0 else 0x108)
    magnitude = step << (exponent - 1) if exponent else step
    return magnitude if sign else -magnitude


_ALL = range(-32768, 32768)
_ULAW_ENCODE = np.array([_ulaw_encode_one(s) for s in _ALL], dtype=np.uint8)
_ALAW_ENCODE = np.array([_alaw_encode_one(s) for s in _ALL], dtype=np.uint8)
_ULAW_DECODE = np.array([_ulaw_decode_one(c) for c in range(256)], dtype=np.int16)
_ALAW_DECODE = np.array([_alaw_decode_one(c) for c in range(256)], dtype=np.int16)


def ulaw_encode(pcm: Pcm) -> bytes:
    return _ULAW_ENCODE[pcm.astype(np.int32) + 32768].tobytes()


def ulaw_decode(data: bytes) -> Pcm:
    return _ULAW_DECODE[np.frombuffer(data, dtype=np.uint8)]


def alaw_encode(pcm: Pcm) -> bytes:
    return _ALAW_ENCODE[pcm.astype(np.int32) + 32768].tobytes()


def alaw_decode(data: bytes) -> Pcm:
    return _ALAW_DECODE[np.frombuffer(data, dtype=np.uint8)]
