"""The one error the certificate package raises.

``certs`` must not import ``proxy``, so :class:`CertError` stands alone; it
carries the CLI exit code it maps to, like the ``proxy.errors`` tree does.
"""

from __future__ import annotations


class CertError(Exception):
    """A CA, key or certificate that cannot be created, loaded or used.

    The message names the file or value that was wrong and, where there is one,
    the fix.
    """

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
