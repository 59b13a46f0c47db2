"""SHA-256 for the read path without loading OpenSSL.

`hashlib` loads and initialises OpenSSL's libcrypto as it is imported (3.7 MB and 5 ms of every cold
`stripread read`), only to hash one photo and a chart. CPython's own SHA-256 gives the same digests
(about 3 ms per MB here, against OpenSSL's 0.6: a camera JPEG is 0.3-1 MB).
"""
from __future__ import annotations

try:
    from _sha2 import sha256            # CPython 3.12 and later
except ImportError:
    try:
        from _sha256 import sha256      # CPython 3.11
    except ImportError:                 # a Python built without its own hashes: OpenSSL's
        from hashlib import sha256

__all__ = ["sha256"]
