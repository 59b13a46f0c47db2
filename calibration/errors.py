"""The read path's exceptions, importable without numpy or OpenCV (the CLI's light commands catch
them too). `ReadError`: an error code of `stripread.read/1` and a sentence a patient or nurse can
act on; anything else escaping the read path is a bug (code `internal`). `SpecError`: a card or
product file that cannot be used."""
from __future__ import annotations


OVEREXPOSED_MESSAGE = ("The photo is too bright: close the lid and keep direct light off the reader, "
                       "then read again.")

CARD_GLARE_MESSAGE = "Light is reflecting off the card: close the lid and read again."


class SpecError(ValueError):
    """A card or product file that cannot be used."""


class ReadError(Exception):
    """`reason` refines a schema code where the code alone is too coarse (e.g. `lot_expired` for
    `wrong_strip`); it is an added key of the result's `error`, so the code list stays the contract's."""

    def __init__(self, code: str, message: str, reason: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
