"""Personalisation methods (FedPer, FedRep, FedBN, Ditto, local fine-tuning) as pure torch
functions, each registered in its own file (:mod:`tasks.personalization.methods`); see
:mod:`tasks.personalization.base` and docs/personalization.md."""

from tasks.personalization.base import (
    PERSONAL_PREFIX,
    PERSONALIZATION,
    Local,
    PersonalizationSection,
    PersonalMethod,
    PersonalState,
    batch_norm_keys,
    get_method,
    head_keys,
)

__all__ = [
    "PERSONALIZATION",
    "PERSONAL_PREFIX",
    "Local",
    "PersonalMethod",
    "PersonalState",
    "PersonalizationSection",
    "batch_norm_keys",
    "get_method",
    "head_keys",
]
