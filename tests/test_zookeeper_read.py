"""ZooKeeperMirror.read: what a caller sees when ZooKeeper fails or holds garbage (no server)."""

from __future__ import annotations

import pytest
from kazoo.exceptions import ConnectionLoss, NoNodeError, SessionExpiredError

from app.errors import AesopError
from tables.zookeeper import ZooKeeperDocumentInvalid, ZooKeeperMirror, ZooKeeperUnavailable


class FakeClient:
    connected = True

    def __init__(self, answer: object) -> None:
        self.answer = answer
        self.paths: list[str] = []

    def get(self, path: str) -> tuple[bytes, object]:
        self.paths.append(path)
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer, None  # type: ignore[return-value]


def mirror_with(answer: object) -> tuple[ZooKeeperMirror, FakeClient]:
    mirror = ZooKeeperMirror("127.0.0.1:1", "/aesop/x")
    client = FakeClient(answer)
    mirror._client = client  # type: ignore[assignment]
    return mirror, client


async def test_read_returns_the_document_under_the_root() -> None:
    mirror, client = mirror_with(b'{"scn": 7}')
    assert await mirror.read("/relays/a") == {"scn": 7}
    assert client.paths == ["/aesop/x/relays/a"]


async def test_read_of_an_absent_node_is_none() -> None:
    mirror, _ = mirror_with(NoNodeError())
    assert await mirror.read("/relays/a") is None


@pytest.mark.parametrize("error", [ConnectionLoss(), SessionExpiredError()])
async def test_kazoo_errors_come_out_as_zookeeper_unavailable(error: Exception) -> None:
    mirror, _ = mirror_with(error)
    with pytest.raises(ZooKeeperUnavailable, match=type(error).__name__) as raised:
        await mirror.read("/relays/a")
    assert isinstance(raised.value, AesopError)


async def test_a_node_without_json_is_named_in_one_line() -> None:
    mirror, _ = mirror_with(b"not json")
    with pytest.raises(ZooKeeperDocumentInvalid) as raised:
        await mirror.read("/consumers/c/t/0")
    message = str(raised.value)
    assert "/aesop/x/consumers/c/t/0" in message and "\n" not in message
    assert isinstance(raised.value, AesopError)


async def test_read_with_no_hosts_is_none_without_a_client() -> None:
    assert await ZooKeeperMirror("", "/aesop/x").read("/relays/a") is None
