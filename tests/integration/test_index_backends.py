"""The index registry on both backends, each against its real server: an SQLite file and a
PostgreSQL server the run starts (tests/integration/postgres.py), through adbapi's threads."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from mirror.index.codec import FileRecord
from mirror.index.database import open_registry
from mirror.index.registry import Limits, NotRegistered, Query, RegistryLimit

D1 = "1" * 64


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: Any, tmp_path: Any) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "index.db")
    return request.getfixturevalue("postgres_url")


@pytest_twisted.ensureDeferred
async def test_registry_on_a_real_database(db: str) -> None:
    registry, pool = open_registry(db, reactor, Limits(max_nodes=2, max_files_per_node=3))
    other, other_pool = open_registry(db, reactor, Limits(max_nodes=2, max_files_per_node=3))
    try:
        await registry.create()
        await other.create()
        assert await registry.hello("a", "a:1", 100.0, 10.0) is False
        await registry.begin("a")
        assert await registry.put("a", [FileRecord("d/x", 1, 2, D1),
                                        FileRecord("d0", 3, 4, None)]) == 2
        assert await registry.end("a") == 0
        # A second pool on the same database (a second index daemon) sees the same registry.
        assert await other.hello("b", "b:1", 100.0, 10.0) is False
        await other.put("b", [FileRecord("d/x", 1, 2, D1)])
        rows = await registry.holders(Query(path="d"), 101.0, None, 10)
        assert [(h.node, h.path, h.digest) for h in rows] == [("a", "d/x", D1),
                                                               ("b", "d/x", D1)]
        assert [h.path for h in await other.holders(Query(digest=D1), 101.0, None, 10)] == [
            "d/x", "d/x"]
        assert [h.path for h in await other.holders(Query(path=""), 101.0, ("d/x", "b"),
                                                    10)] == ["d0"]
        # The web site's overview: live nodes, their files, digests known, leases by name.
        seen = await other.overview(102.0, 10)
        assert (seen.nodes, seen.files, seen.files_with_digest) == (2, 3, 2)
        assert [(n.node, n.address, n.files, n.age, n.expires_in) for n in seen.leases] == [
            ("a", "a:1", 2, 2.0, 8.0), ("b", "b:1", 1, 2.0, 8.0)]
        assert [n.node for n in (await registry.overview(102.0, 1)).leases] == ["a"]
        # Bounds hold across both daemons, and a failed batch keeps nothing.
        with pytest.raises(RegistryLimit):
            await other.hello("c", "c:1", 101.0, 10.0)
        with pytest.raises(RegistryLimit):
            await registry.put("a", [FileRecord("e", 1, 1), FileRecord("f", 1, 1)])
        assert len(await registry.holders(Query(path=""), 101.0, None, 10)) == 3
        # Leases: b renews, a does not; after a's lease only b is left.
        await other.renew("b", 105.0, 10.0)
        assert [h.node for h in await registry.holders(Query(path=""), 110.0, None, 10)] == [
            "b"]
        with pytest.raises(NotRegistered):
            await registry.renew("a", 110.0, 10.0)
        assert await registry.expire(110.0) == 1
        await other.withdraw("b")
        assert await registry.holders(Query(path=""), 110.0, None, 10) == []
    finally:
        pool.close()
        other_pool.close()
