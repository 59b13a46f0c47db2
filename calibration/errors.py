"""The read path's exceptions, importable without numpy or OpenCV (the CLI's light commands catch
them too). `ReadError`: an error code of `stripread.read/1` and a sentence a patient or nurse can
act on; anything else escaping the read path is a bug (code `internal`). `SpecError`: a card or
product file that cannot be used."""


class SpecError(ValueError):
    """A card or product file that cannot be used."""


class ReadError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message
