"""One file per personalisation method; each registers itself in
:data:`tasks.personalization.PERSONALIZATION` on import."""
