"""The ``multiprocessing.connection`` authentication handshake, without I/O.

Both sides prove they know the shared authkey with an HMAC over a random
challenge; the server challenges first, then the client challenges back::

    server -> client   #CHALLENGE#<message>
    client -> server   <response to message>
    server -> client   #WELCOME#  or  #FAILURE#
    client -> server   #CHALLENGE#<message>
    server -> client   <response>
    client -> server   #WELCOME#  or  #FAILURE#

Two dialects exist and must interoperate:

* legacy (Python <= 3.11, and 2.7): the message is 20 random bytes, the
  response is the raw 16-byte HMAC-MD5 of it;
* modern (Python >= 3.12): the message is ``{digest}`` followed by 40 random
  bytes, the response is ``{digest}`` followed by the HMAC, with that digest,
  of the *whole* message (prefix included, so a peer cannot downgrade it).

A legacy peer answers a modern message with a raw HMAC-MD5 of the whole
message, and a modern verifier accepts that; both dialects are told apart by
length alone (16 or 20 bytes is legacy), as CPython does.

FIPS-patched Pythons (<= 3.11, where MD5 is disabled) speak the legacy
dialect with HMAC-SHA256 instead: an unprefixed 32-byte answer, and the same
expected for their 20-byte challenges. ``legacy_digest="sha256"`` speaks
that variant: legacy challenges are answered with HMAC-SHA256, and an
unprefixed 32-byte answer is checked as one.

:class:`ClientHandshake` and :class:`ServerHandshake` are fed the payloads of
received frames and return the payloads to send. They never see sockets and
never include the authkey in an error.
"""

from __future__ import annotations

import hmac
import os
from enum import Enum

from .errors import AuthenticationError, HandshakeError

__all__ = [
    "ALLOWED_DIGESTS",
    "CHALLENGE",
    "FAILURE",
    "LEGACY_DIGESTS",
    "MAX_HANDSHAKE_MESSAGE",
    "WELCOME",
    "ClientHandshake",
    "ServerHandshake",
    "create_response",
    "verify_response",
]

CHALLENGE = b"#CHALLENGE#"
WELCOME = b"#WELCOME#"
FAILURE = b"#FAILURE#"
#: Every handshake message is read with this limit, as the stdlib does.
MAX_HANDSHAKE_MESSAGE = 256
#: Digests a modern peer may name; the set CPython 3.12+ accepts.
ALLOWED_DIGESTS = frozenset({"md5", "sha256", "sha384", "sha3_256", "sha3_384"})

_LEGACY_CHALLENGE_SIZE = 20
_MD5_SIZE = 16
_SHA256_SIZE = 32
#: What ``legacy_digest`` may be: the stdlib's MD5, or the SHA-256 of FIPS builds.
LEGACY_DIGESTS = ("md5", "sha256")
_LEGACY_SIZES = (_LEGACY_CHALLENGE_SIZE, _MD5_SIZE)
_MODERN_NONCE_SIZE = 40
_MAX_DIGEST_NAME = max(len(name) for name in ALLOWED_DIGESTS)


def _preview(data: bytes) -> str:
    """Show the start of a peer's message in an error (peer data, never our key)."""
    return repr(data[:32]) + ("..." if len(data) > 32 else "")


def _split_digest(message: bytes, legacy_digest: str = "md5") -> tuple[str, bytes]:
    """Return ``(digest name, payload)``; the name is ``""`` for the legacy dialect."""
    if len(message) in _LEGACY_SIZES:
        return "", message
    if legacy_digest == "sha256" and len(message) == _SHA256_SIZE and message[:1] != b"{":
        return "", message  # the FIPS variant's unprefixed answer
    if message.startswith(b"{"):
        end = message.find(b"}", 1, _MAX_DIGEST_NAME + 2)
        if end > 0:
            name = message[1:end].decode("ascii", "replace")
            if name in ALLOWED_DIGESTS:
                return name, message[end + 1 :]
    raise AuthenticationError(
        f"unsupported handshake message: {len(message)} bytes with no known "
        f"{{digest}} prefix ({_preview(message)})"
    )


def _refuse_md5(role: str) -> AuthenticationError:
    return AuthenticationError(
        f"the {role} uses HMAC-MD5 (the legacy handshake of Python <= 3.11) and allow_md5 is false"
    )


def create_response(
    authkey: bytes, message: bytes, *, allow_md5: bool = True, legacy_digest: str = "md5"
) -> bytes:
    """Answer a challenge ``message`` (without the ``#CHALLENGE#`` prefix).

    A legacy message gets the raw HMAC with ``legacy_digest`` (MD5, or the
    SHA-256 of FIPS builds); a ``{digest}`` message gets the prefixed HMAC of
    the whole message with that digest.
    Raises :class:`AuthenticationError` for an unknown digest or, with
    ``allow_md5=False``, for an MD5 one.
    """
    name, _ = _split_digest(message)
    if not name:
        if legacy_digest == "md5" and not allow_md5:
            raise _refuse_md5("server")
        return hmac.new(authkey, message, legacy_digest).digest()
    if name == "md5" and not allow_md5:
        raise _refuse_md5("server")
    mac = hmac.new(authkey, message, name).digest()
    return b"{" + name.encode("ascii") + b"}" + mac


def verify_response(
    authkey: bytes,
    message: bytes,
    response: bytes,
    *,
    allow_md5: bool = True,
    legacy_digest: str = "md5",
) -> None:
    """Check a peer's ``response`` to our challenge ``message``, in constant time.

    The peer may pick any allowed digest: the MAC covers our ``{digest}``
    prefix, so naming another one cannot weaken it. An unprefixed answer is
    legacy: HMAC-MD5 by its 16 bytes, or, with ``legacy_digest="sha256"``,
    HMAC-SHA256 by its 32. Raises :class:`AuthenticationError` when the
    response is wrong or unsupported.
    """
    name, mac = _split_digest(response, legacy_digest)
    if not name:
        name = "sha256" if len(mac) == _SHA256_SIZE and legacy_digest == "sha256" else "md5"
    if name == "md5" and not allow_md5:
        raise _refuse_md5("peer")
    expected = hmac.new(authkey, message, name).digest()
    if len(mac) != len(expected) or not hmac.compare_digest(expected, mac):
        raise AuthenticationError("the peer's answer to our challenge was wrong (authkey mismatch)")


def _new_message(digest: str) -> bytes:
    if digest == "legacy":
        return os.urandom(_LEGACY_CHALLENGE_SIZE)
    if digest not in ALLOWED_DIGESTS:
        raise ValueError(f"unknown challenge digest {digest!r}")
    return b"{" + digest.encode("ascii") + b"}" + os.urandom(_MODERN_NONCE_SIZE)


def _check_key(authkey: bytes) -> None:
    if not isinstance(authkey, bytes):
        raise TypeError(f"authkey must be bytes, not {type(authkey).__name__}")


class _State(Enum):
    AWAIT_CHALLENGE = "the peer's challenge"
    AWAIT_VERDICT = "the peer's verdict on our answer"
    AWAIT_ANSWER = "the peer's answer to our challenge"
    SEND_CHALLENGE = "nothing (our challenge is to be sent)"
    DONE = "nothing (done)"
    FAILED = "nothing (failed)"


class _Handshake:
    """The four steps both halves share, in the order each side meets them."""

    def __init__(
        self, authkey: bytes, *, allow_md5: bool, digest: str, legacy_digest: str = "md5"
    ) -> None:
        _check_key(authkey)
        if legacy_digest not in LEGACY_DIGESTS:
            raise ValueError(f"legacy_digest must be one of {LEGACY_DIGESTS}")
        self._authkey = authkey
        self._allow_md5 = allow_md5
        self._legacy_digest = legacy_digest
        self._digest = digest
        self._message = b""
        self._state = _State.AWAIT_CHALLENGE
        #: Set when the handshake failed; send what ``receive`` returned, then raise it.
        self.error: HandshakeError | None = None
        #: ``"legacy"`` or the digest name the peer challenged us with, once known.
        self.peer_dialect: str | None = None

    @property
    def done(self) -> bool:
        """True once both sides have proved their key."""
        return self._state is _State.DONE

    @property
    def awaiting_challenge(self) -> bool:
        """True while the peer has not sent its challenge yet (nothing was received)."""
        return self._state is _State.AWAIT_CHALLENGE

    @property
    def awaiting(self) -> str:
        """What the handshake waits for, in words, for timeout messages."""
        return self._state.value

    def _challenge(self) -> bytes:
        self._message = _new_message(self._digest)
        self._state = _State.AWAIT_ANSWER
        return CHALLENGE + self._message

    def _answer(self, frame: bytes) -> bytes:
        if not frame.startswith(CHALLENGE):
            self._fail(HandshakeError(f"expected a challenge, got {_preview(frame)}"))
            return b""
        message = frame[len(CHALLENGE) :]
        if len(message) < _LEGACY_CHALLENGE_SIZE:
            self._fail(HandshakeError(f"challenge too short: {len(message)} bytes"))
            return b""
        try:
            response = create_response(
                self._authkey,
                message,
                allow_md5=self._allow_md5,
                legacy_digest=self._legacy_digest,
            )
        except AuthenticationError as exc:
            self._fail(exc)
            return b""
        self.peer_dialect = _split_digest(message)[0] or "legacy"
        self._state = _State.AWAIT_VERDICT
        return response

    def _judge(self, frame: bytes) -> bytes:
        try:
            verify_response(
                self._authkey,
                self._message,
                frame,
                allow_md5=self._allow_md5,
                legacy_digest=self._legacy_digest,
            )
        except AuthenticationError as exc:
            self._fail(exc)
            return FAILURE
        return WELCOME

    def _verdict(self, frame: bytes) -> None:
        if frame != WELCOME:
            self._fail(
                AuthenticationError(
                    "the peer rejected our answer to its challenge (authkey mismatch)"
                    if frame == FAILURE
                    else f"expected a verdict, got {_preview(frame)}"
                )
            )

    def _fail(self, exc: HandshakeError) -> None:
        self._state = _State.FAILED
        self.error = exc

    def _check_open(self) -> None:
        if self._state in (_State.DONE, _State.FAILED):
            raise HandshakeError(f"handshake already finished ({self._state.name.lower()})")


class ClientHandshake(_Handshake):
    """The client half: answer the server's challenge, then challenge the server.

    Feed every received handshake payload to :meth:`receive` and send what it
    returns, in order. When :attr:`error` is set afterwards, send the returned
    payloads (a ``#FAILURE#`` verdict may be among them), then raise it.
    """

    def __init__(
        self,
        authkey: bytes,
        *,
        allow_md5: bool = True,
        digest: str = "sha256",
        legacy_digest: str = "md5",
    ) -> None:
        super().__init__(authkey, allow_md5=allow_md5, digest=digest, legacy_digest=legacy_digest)

    def receive(self, frame: bytes) -> list[bytes]:
        """Consume one payload from the server; return the payloads to send."""
        self._check_open()
        state = self._state
        if state is _State.AWAIT_CHALLENGE:
            response = self._answer(frame)
            return [response] if response else []
        if state is _State.AWAIT_VERDICT:
            self._verdict(frame)
            return [] if self.error else [self._challenge()]
        verdict = self._judge(frame)
        if not self.error:
            self._state = _State.DONE
        return [verdict]


class ServerHandshake(_Handshake):
    """The server half: challenge the client, then answer its challenge.

    Send :meth:`start`'s payload first, then feed every received payload to
    :meth:`receive`, as for :class:`ClientHandshake`. ``digest="legacy"``
    issues the 20-byte challenge of Python <= 3.11.
    """

    def __init__(self, authkey: bytes, *, allow_md5: bool = True, digest: str = "sha256") -> None:
        super().__init__(authkey, allow_md5=allow_md5, digest=digest)
        _new_message(digest)  # validate the digest name now, not mid-handshake
        self._state = _State.SEND_CHALLENGE

    def start(self) -> bytes:
        """Return the first payload to send: our challenge."""
        if self._state is not _State.SEND_CHALLENGE:
            raise HandshakeError("the handshake has already started")
        return self._challenge()

    def receive(self, frame: bytes) -> list[bytes]:
        """Consume one payload from the client; return the payloads to send."""
        self._check_open()
        state = self._state
        if state is _State.SEND_CHALLENGE:
            raise HandshakeError("call start() and send its challenge first")
        if state is _State.AWAIT_ANSWER:
            verdict = self._judge(frame)
            if not self.error:
                self._state = _State.AWAIT_CHALLENGE
            return [verdict]
        if state is _State.AWAIT_CHALLENGE:
            response = self._answer(frame)
            return [response] if response else []
        self._verdict(frame)
        if not self.error:
            self._state = _State.DONE
        return []
