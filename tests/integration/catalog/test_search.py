"""Ranked full-text search (`GET /api/catalog/search`) and by-query's fullTextFilter on the same index."""

from __future__ import annotations

import copy

import pytest
import pytest_asyncio

from services.catalog.app import DEFINITION as CATALOG
from services.catalog.app import Settings as CatalogSettings
from shared.service import running_service


def component(name: str, owner: str, *, type_: str = "service", **metadata) -> dict:
    return {
        "apiVersion": "backstage.io/v1alpha1",
        "kind": "Component",
        "metadata": {"name": name, **metadata},
        "spec": {"type": type_, "lifecycle": "production", "owner": owner},
    }


ENTITIES = [
    ("account", {"apiVersion": "backstage.io/v1alpha1", "kind": "Group", "metadata": {"name": "payments-team"},
                 "spec": {"type": "team", "children": []}}),
    ("account", component("billing-api", "payments-team", title="Billing API", tags=["payments", "java"],
                          description="Charges customers every month")),
    ("account", component("billing-worker", "team-b", type_="library", tags=["java"])),
    ("account", component("checkout", "team-b", type_="website", description="Takes billing details at checkout",
                          annotations={"pagerduty.com/service-id": "PBILL42"})),
    ("account.acme.shop", component("billing-portal", "team-b", type_="website")),
]  # fmt: skip


@pytest_asyncio.fixture
async def catalog(make_settings, http):
    async with running_service(CATALOG, make_settings(CatalogSettings)) as service:
        for scope, entity in ENTITIES:
            async with http.post(f"{service.url}/api/catalog/entities", params={"scope": scope}, json=entity) as r:
                assert r.status == 201, await r.text()
        yield service


async def search(http, catalog, status=200, **params):
    async with http.get(f"{catalog.url}/api/catalog/search", params=params) as r:
        body = await r.json()
        assert r.status == status, body
        return body


def names(page: dict) -> list[str]:
    return [hit["entity"]["metadata"]["name"] for hit in page["items"]]


async def test_results_are_ranked_with_scores_and_highlights(catalog, http):
    page = await search(http, catalog, q="billing")
    # Name and title weigh more than a description; the exact name would weigh most.
    assert names(page)[:3] == ["billing-api", "billing-portal", "billing-worker"] and names(page)[3] == "checkout"
    assert page["totalItems"] == 4
    scores = [hit["score"] for hit in page["items"]]
    assert scores == sorted(scores, reverse=True) and scores[0] > scores[-1] > 0
    assert "**Billing**" in page["items"][0]["highlight"]
    served = page["items"][0]["entity"]
    assert served["relations"] == [{"type": "ownedBy", "targetRef": "group:default/payments-team"}]
    assert names(await search(http, catalog, q="billing-worker"))[0] == "billing-worker"


async def test_words_match_by_prefix_in_every_indexed_field(catalog, http):
    assert names(await search(http, catalog, q="bill work")) == ["billing-worker"]
    assert names(await search(http, catalog, q="charg")) == ["billing-api"]  # description
    assert names(await search(http, catalog, q="pbill")) == ["checkout"]  # annotation value
    assert names(await search(http, catalog, q="payments")) == ["payments-team", "billing-api"]  # name, then tag
    assert names(await search(http, catalog, q="payments-team", kind="component")) == ["billing-api"]  # owner


async def test_words_of_three_letters_or_more_also_match_inside_names_titles_tags_and_owners(catalog, http):
    """pg_trgm (migration 0021): infix matches stay indexed; descriptions still match by word start only."""
    assert names(await search(http, catalog, q="illing")) == ["billing-api", "billing-portal", "billing-worker"]
    assert names(await search(http, catalog, q="orker")) == ["billing-worker"]  # name
    assert names(await search(http, catalog, q="ava")) == ["billing-api", "billing-worker"]  # tag
    assert names(await search(http, catalog, q="ments-te", kind="component")) == ["billing-api"]  # owner
    assert names(await search(http, catalog, q="illing orker")) == ["billing-worker"]  # every word must match
    assert (await search(http, catalog, q="etails"))["items"] == []  # inside a description word: no
    assert (await search(http, catalog, q="il"))["items"] == []  # two letters only: word starts only
    # Either every word starts a word (here `details`, in a description), or every word is inside the short fields.
    assert names(await search(http, catalog, q="check detail")) == ["checkout"]
    assert (await search(http, catalog, q="illing detail"))["items"] == []


async def test_filters_combine(catalog, http):
    assert names(await search(http, catalog, q="billing", type="library")) == ["billing-worker"]
    assert names(await search(http, catalog, q="billing", owner="payments-team")) == ["billing-api"]
    assert names(await search(http, catalog, q="billing", owner="group:default/payments-team")) == ["billing-api"]
    assert names(await search(http, catalog, q="billing", tag="JAVA", kind="Component")) == [
        "billing-api",
        "billing-worker",
    ]
    both = await search(http, catalog, q="billing", type=["library", "website"])
    assert sorted(names(both)) == ["billing-portal", "billing-worker", "checkout"]
    assert names(await search(http, catalog, q="billing", scope="account.acme")) == ["billing-portal"]
    assert names(await search(http, catalog, q="billing", kind="group")) == []


async def test_cursor_pages_through_the_ranking(catalog, http):
    seen, params = [], {"q": "billing", "limit": "3"}
    while True:
        page = await search(http, catalog, **params)
        seen += names(page)
        cursor = page["pageInfo"].get("nextCursor")
        if not cursor:
            break
        params = {"cursor": cursor, "limit": "3"}
    assert seen == names(await search(http, catalog, q="billing", limit="10"))
    assert "prevCursor" in page["pageInfo"]


async def test_changes_are_searchable_when_the_write_commits(catalog, http):
    url = f"{catalog.url}/api/catalog/entities/by-name/component/default/billing-worker"
    async with http.get(url) as r:
        entity = await r.json()
    changed = copy.deepcopy(entity)
    changed["metadata"]["description"] = "Reconciles ledgers"
    changed["spec"]["owner"] = "payments-team"
    async with http.put(url, json=changed) as r:
        assert r.status == 200
    assert names(await search(http, catalog, q="ledger")) == ["billing-worker"]
    assert names(await search(http, catalog, q="billing", owner="payments-team")) == ["billing-api", "billing-worker"]
    async with http.delete(f"{catalog.url}/api/catalog/entities/by-uid/{entity['metadata']['uid']}") as r:
        assert r.status == 204
    assert (await search(http, catalog, q="ledger"))["totalItems"] == 0


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({}, "query.q"),
        ({"q": "!!! ***"}, "query.q"),
        ({"q": "x" * 201}, "query.q"),
        ({"q": "billing", "limit": "0"}, "query.limit"),
        ({"q": "billing", "scope": "acme"}, "query.scope"),
        ({"q": "billing", "owner": "group:"}, "query.owner"),
        ({"cursor": "garbage"}, "query.cursor"),
    ],
)
async def test_bad_searches_are_problems_naming_the_field(catalog, http, params, field):
    body = await search(http, catalog, status=400, **params)
    assert body["errors"][0]["field"] == field


async def test_by_query_full_text_filter_on_indexed_fields_keeps_substring_semantics(catalog, http):
    url = f"{catalog.url}/api/catalog/entities/by-query"
    params = {"fullTextFilterTerm": "BILLING-A", "fullTextFilterFields": "metadata.name,metadata.title"}
    async with http.get(url, params=params) as r:
        assert [e["metadata"]["name"] for e in (await r.json())["items"]] == ["billing-api"]
    params = {"fullTextFilterTerm": "billing", "fullTextFilterFields": "metadata.description"}
    async with http.get(url, params=params) as r:
        assert [e["metadata"]["name"] for e in (await r.json())["items"]] == ["checkout"]
