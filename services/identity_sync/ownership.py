"""Ownership left behind by offboarding: the catalog entities owned by deactivated or deleted principals,
and moving them to another group. Both go through the catalog's HTTP API as the caller, so the catalog
checks the caller's permissions and its events name the caller."""

from __future__ import annotations

from typing import Any

import aiohttp
import msgspec

from services.identity_sync.model import Orphan, OrphanList, ReassignRequest, ReassignResult
from shared.errors import ERRORS_BY_STATUS, ProblemError, ServiceUnavailableError
from shared.scopes import check_scope

STATUS_ANNOTATION = "seed-idp.dev/identity-status"
"""Set by the catalog's identity mirror on User and Group entities."""
_REF_BATCH = 40


class CatalogClient:
    """The few catalog calls identity-sync makes, with the caller's credentials."""

    def __init__(self, base_url: str, authorization: str | None, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = {"Authorization": authorization} if authorization else {}
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            async with aiohttp.ClientSession(timeout=self.timeout, headers=self.headers) as session:
                async with session.request(method, self.base_url + path, **kwargs) as response:
                    body = await response.read()
                    if response.status >= 400:
                        detail = msgspec.json.decode(body).get("detail", "") if body else ""
                        error = ERRORS_BY_STATUS.get(response.status, ProblemError)
                        raise error(f"the catalog refused: {detail or response.reason}")
                    return msgspec.json.decode(body)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ServiceUnavailableError(f"the catalog is unreachable: {exc}") from None

    async def entities(self, scope: str, filters: list[str], fields: str) -> list[dict[str, Any]]:
        params = [("scope", scope), ("fields", fields), *(("filter", f) for f in filters)]
        return await self._call("GET", "/api/catalog/entities", params=params)

    async def set_owner(self, scope: str, refs: list[str], owner: str) -> dict[str, int]:
        body = {"items": [{"entityRef": ref, "properties": {"spec.owner": owner}} for ref in refs]}
        return await self._call("POST", "/api/catalog/ingest", params={"scope": scope}, json=body)


async def orphans(catalog: CatalogClient, scope: str) -> OrphanList:
    check_scope(scope)
    filters = [
        f"kind={kind},metadata.annotations.{STATUS_ANNOTATION}={status}"
        for kind in ("user", "group")
        for status in ("inactive", "deleted")
    ]
    fields = "kind,metadata.name,metadata.namespace,metadata.annotations"
    # Mirrored users live at `account`, groups at their own scope.
    gone = [e for s in dict.fromkeys(("account", scope)) for e in await catalog.entities(s, filters, fields)]
    status_of = {_ref(e): e["metadata"]["annotations"][STATUS_ANNOTATION] for e in gone}
    found = []
    refs = sorted(status_of)
    for start in range(0, len(refs), _REF_BATCH):
        batch = refs[start : start + _REF_BATCH]
        owned = await catalog.entities(
            scope, [f"relations.ownedBy={ref}" for ref in batch], "kind,metadata.name,metadata.namespace,relations"
        )
        for entity in owned:
            ref = _ref(entity)
            for relation in entity.get("relations") or []:
                owner = relation.get("targetRef")
                if relation.get("type") == "ownedBy" and owner in status_of:
                    found.append(Orphan(entityRef=ref, owner=owner, ownerStatus=status_of[owner]))
    return OrphanList(sorted(found, key=lambda o: (o.owner, o.entityRef)))


def _ref(entity: dict[str, Any]) -> str:
    metadata = entity["metadata"]
    return f"{entity['kind'].lower()}:{metadata.get('namespace', 'default')}/{metadata['name']}"


async def reassign(catalog: CatalogClient, request: ReassignRequest) -> ReassignResult:
    check_scope(request.scope, "$.scope")
    result = await catalog.set_owner(request.scope, request.entityRefs, request.owner)
    return ReassignResult(updated=result["updated"], unchanged=result["unchanged"])
