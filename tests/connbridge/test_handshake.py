"""The handshake core: both halves paired, vectors for every digest, and the stdlib as oracle."""

from __future__ import annotations

import hmac
import json
import subprocess

import pytest

from connbridge.errors import AuthenticationError, HandshakeError
from connbridge.handshake import (
    ALLOWED_DIGESTS,
    CHALLENGE,
    FAILURE,
    WELCOME,
    ClientHandshake,
    ServerHandshake,
    create_response,
    verify_response,
)
from tests.conftest import INTERPRETERS

KEY = b"secret-key-\x00\xff"
DIGESTS = sorted(ALLOWED_DIGESTS)
MODERN = [i for i in INTERPRETERS if i.version >= (3, 12)]


def run_pair(client: ClientHandshake, server: ServerHandshake) -> list[bytes]:
    """Pass messages between the two halves until neither has more to say.

    A half that failed still gets its last messages (a #FAILURE# verdict)
    delivered to the other; it receives nothing more itself.
    """
    transcript = [server.start()]
    to_client = [transcript[0]]
    to_server: list[bytes] = []
    while (to_client and client.error is None) or (to_server and server.error is None):
        while to_client and client.error is None:
            out = client.receive(to_client.pop(0))
            transcript += out
            to_server += out
        while to_server and server.error is None:
            out = server.receive(to_server.pop(0))
            transcript += out
            to_client += out
    return transcript


@pytest.mark.parametrize("server_digest", [*DIGESTS, "legacy"])
def test_our_halves_pair_for_each_digest(server_digest: str) -> None:
    client = ClientHandshake(KEY)
    server = ServerHandshake(KEY, digest=server_digest)
    transcript = run_pair(client, server)
    assert client.done and server.done
    assert client.error is None and server.error is None
    assert transcript[2] == WELCOME and transcript[-1] == WELCOME
    assert client.peer_dialect == server_digest
    assert server.peer_dialect == "sha256"  # what our client sends


@pytest.mark.parametrize("server_digest", [*DIGESTS, "legacy"])
def test_wrong_key_fails_both_halves_without_leaking_it(server_digest: str) -> None:
    client = ClientHandshake(b"wrong-key-123")
    server = ServerHandshake(KEY, digest=server_digest)
    transcript = run_pair(client, server)
    assert FAILURE in transcript
    assert isinstance(server.error, AuthenticationError)
    assert isinstance(client.error, AuthenticationError)
    for exc in (client.error, server.error):
        assert b"wrong-key-123".decode() not in str(exc)
        assert KEY.decode("latin-1") not in str(exc)
    assert "rejected" in str(client.error)


def test_legacy_challenge_gets_the_raw_hmac_md5() -> None:
    message = bytes(range(20))
    assert create_response(KEY, message) == hmac.new(KEY, message, "md5").digest()


@pytest.mark.parametrize("digest", DIGESTS)
def test_modern_challenge_gets_a_prefixed_hmac_of_the_whole_message(digest: str) -> None:
    message = b"{" + digest.encode() + b"}" + bytes(range(40))
    expected = b"{" + digest.encode() + b"}" + hmac.new(KEY, message, digest).digest()
    assert create_response(KEY, message) == expected


@pytest.mark.parametrize("digest", DIGESTS)
def test_verify_accepts_each_digest_and_rejects_a_flipped_bit(digest: str) -> None:
    message = b"{sha256}" + bytes(range(40))
    mac = hmac.new(KEY, message, digest).digest()
    verify_response(KEY, message, b"{" + digest.encode() + b"}" + mac)
    bad = bytes([mac[0] ^ 1]) + mac[1:]
    with pytest.raises(AuthenticationError, match="wrong"):
        verify_response(KEY, message, b"{" + digest.encode() + b"}" + bad)


def test_verify_accepts_a_legacy_raw_md5_answer() -> None:
    message = b"{sha256}" + bytes(range(40))
    verify_response(KEY, message, hmac.new(KEY, message, "md5").digest())


def test_allow_md5_false_refuses_legacy_and_md5_both_ways() -> None:
    with pytest.raises(AuthenticationError, match="allow_md5"):
        create_response(KEY, bytes(20), allow_md5=False)
    with pytest.raises(AuthenticationError, match="allow_md5"):
        create_response(KEY, b"{md5}" + bytes(40), allow_md5=False)
    message = b"{sha256}" + bytes(40)
    with pytest.raises(AuthenticationError, match="allow_md5"):
        verify_response(KEY, message, hmac.new(KEY, message, "md5").digest(), allow_md5=False)
    client = ClientHandshake(KEY, allow_md5=False)
    run_pair(client, ServerHandshake(KEY, digest="legacy"))
    assert isinstance(client.error, AuthenticationError)
    # sha256 still works with MD5 refused
    client = ClientHandshake(KEY, allow_md5=False)
    server = ServerHandshake(KEY, allow_md5=False)
    run_pair(client, server)
    assert client.done and server.done


@pytest.mark.parametrize(
    "message", [b"{sha1}" + bytes(40), b"{nope}" + bytes(40), bytes(30), b"{sha256" + bytes(40)]
)
def test_unsupported_challenges_are_refused(message: bytes) -> None:
    with pytest.raises(AuthenticationError, match="unsupported"):
        create_response(KEY, message)


def test_a_non_challenge_first_message_is_a_handshake_error() -> None:
    client = ClientHandshake(KEY)
    assert client.receive(b"\x80\x04K\x0b.") == []
    assert isinstance(client.error, HandshakeError)
    assert "expected a challenge" in str(client.error)


def test_a_short_challenge_is_refused() -> None:
    client = ClientHandshake(KEY)
    client.receive(CHALLENGE + bytes(10))
    assert isinstance(client.error, HandshakeError)
    assert "too short" in str(client.error)


def test_a_finished_handshake_refuses_more_input() -> None:
    client = ClientHandshake(KEY)
    server = ServerHandshake(KEY)
    run_pair(client, server)
    with pytest.raises(HandshakeError):
        client.receive(WELCOME)


def test_key_must_be_bytes() -> None:
    with pytest.raises(TypeError):
        ClientHandshake("text")  # type: ignore[arg-type]


# The stdlib of Python 3.12+ as the oracle: its _create_response answers our
# server's challenges, and its _verify_challenge checks our client's answers.
ORACLE = r"""
import json, sys
from multiprocessing import connection as c
data = json.loads(sys.stdin.read())
key = bytes.fromhex(data["key"])
out = {"responses": [], "verified": []}
for message in data["messages"]:
    out["responses"].append(c._create_response(key, bytes.fromhex(message)).hex())
for message, response in data["to_verify"]:
    try:
        c._verify_challenge(key, bytes.fromhex(message), bytes.fromhex(response))
        out["verified"].append(True)
    except c.AuthenticationError:
        out["verified"].append(False)
print(json.dumps(out))
"""


@pytest.mark.interop
@pytest.mark.skipif(not MODERN, reason="no Python >= 3.12 under /root/.pyenv to act as oracle")
@pytest.mark.parametrize("python", MODERN, ids=lambda i: i.id)
def test_stdlib_agrees_with_our_vectors(python: object) -> None:
    messages = [b"{" + d.encode() + b"}" + bytes(range(40)) for d in DIGESTS] + [bytes(range(20))]
    to_verify = []
    for message in messages:
        response = create_response(KEY, message)
        to_verify.append((message.hex(), response.hex()))
        to_verify.append((message.hex(), (response[:-1] + bytes([response[-1] ^ 1])).hex()))
    payload = json.dumps(
        {"key": KEY.hex(), "messages": [m.hex() for m in messages], "to_verify": to_verify}
    )
    result = subprocess.run(
        [python.path, "-c", ORACLE],  # type: ignore[attr-defined]
        input=payload,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    out = json.loads(result.stdout)
    # The stdlib answers each challenge exactly as we do...
    assert out["responses"] == [create_response(KEY, m).hex() for m in messages]
    # ...and accepts our answers, refusing the tampered ones.
    assert out["verified"] == [True, False] * len(messages)
