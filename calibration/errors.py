"""The one exception the read path raises: an error code of `stripread.read/1` and a sentence a
patient or nurse can act on. Anything else escaping the read path is a bug (code `internal`)."""


class ReadError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message
