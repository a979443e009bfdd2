"""Secret randomness for privacy mechanisms: torch generators whose state comes from the OS.

A DP guarantee holds only while the noise (and, for amplification by sampling, the
sample) is unknown to the adversary. A generator seeded from the run seed is known to
everyone holding the run config; one seeded by ``torch.Generator.seed()`` or
``manual_seed(os.urandom(8))`` is not, but is still guessable: torch's CPU generator is a
Mersenne Twister (MT19937) that keeps only the **low 32 bits** of any seed
(``manual_seed(s)`` and ``manual_seed(s + 2**32)`` give the same stream), so an attacker
could try all 2³² seeds against a released model.

:func:`secret_generator` therefore fills MT19937's whole state (624 × 32 bits) from
``os.urandom``: 19 968 bits that no search can enumerate. MT19937 is not a
cryptographically secure PRNG: 624 consecutive raw outputs reveal its state. Our
mechanisms never release raw outputs (only Gaussian noise added to data-dependent sums,
and secret batch memberships), and the state itself is kept where the mechanism runs
(the silo's state file or context, the server's checkpoint), never in the config, the
logs or an artefact. Opacus' ``secure_mode`` (torchcsprng) would be the stronger source
but torchcsprng is not available for current torch; see docs/privacy.md.

:func:`generator_state` / :func:`restore_generator` turn a generator into bytes and
back, to persist it between rounds (a restored generator continues the same stream).
"""

from __future__ import annotations

import os

import numpy as np
import torch

__all__ = ["generator_state", "restore_generator", "secret_generator"]

#: MT19937's state words in torch's serialised CPU generator state (a legacy
#: ``THGeneratorState``: seed u64, left i32, seeded i32, next u64, then 624 × u64 words).
_WORDS = 624
_WORDS_OFFSET = 24
_STATE_BYTES = 5056


def _layout_ok(state: np.ndarray) -> bool:
    if state.size != _STATE_BYTES:
        return False
    head = state[8:24].view(np.int32)
    return int(head[0]) >= 1 and int(head[1]) == 1  # left ∈ [1, 624], seeded


def secret_generator() -> torch.Generator:
    """A CPU ``torch.Generator`` whose full MT19937 state (19 968 bits) is drawn from
    ``os.urandom``; its ``initial_seed()`` is 0 and says nothing about the state.

    Raises ``RuntimeError`` if this torch's generator state has an unknown layout
    (rather than silently falling back to a 32-bit seed).
    """
    generator = torch.Generator()
    state = generator.get_state().numpy().copy()
    if not _layout_ok(state):
        raise RuntimeError(
            f"torch {torch.__version__}: unexpected CPU generator state layout "
            f"({state.size} bytes); cannot draw a secret generator. Pin torch to a version "
            "whose state is the legacy 5056-byte THGeneratorState (e.g. 2.13)."
        )
    words = np.frombuffer(os.urandom(4 * _WORDS), dtype=np.uint32).astype(np.uint64)
    state[_WORDS_OFFSET : _WORDS_OFFSET + 8 * _WORDS] = words.view(np.uint8)
    state[0:8] = 0  # the seed field: a plain number, must not carry secret bits
    state[8:12] = np.array([1], dtype=np.int32).view(np.uint8)  # left = 1: twist first
    state[16:24] = 0  # next
    generator.set_state(torch.from_numpy(state))
    if not np.array_equal(generator.get_state().numpy(), state):
        raise RuntimeError(
            f"torch {torch.__version__} did not accept a full MT19937 state; cannot draw "
            "a secret generator"
        )
    return generator


def generator_state(generator: torch.Generator) -> bytes:
    """The generator's complete state as bytes (secret: keep it where the mechanism runs)."""
    return generator.get_state().numpy().tobytes()


def restore_generator(state: bytes) -> torch.Generator:
    """A CPU generator continuing from :func:`generator_state`'s bytes."""
    if len(state) != _STATE_BYTES:
        raise ValueError(
            f"a saved generator state has {len(state)} bytes, expected {_STATE_BYTES}; the "
            "state was written by another torch version or is corrupt"
        )
    generator = torch.Generator()
    generator.set_state(torch.frombuffer(bytearray(state), dtype=torch.uint8))
    return generator
