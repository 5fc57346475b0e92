"""Repository browser URLs become raw-file paths on the proxy endpoint configured for their host."""

from __future__ import annotations

import pytest
from yarl import URL

from services.catalog.app import Settings as CatalogSettings
from services.scorecard.app import Settings as ScorecardSettings
from shared.config import ConfigError, load_settings
from shared.repositories import RepositoryHost, RepositoryReadError, parse_repository_hosts, raw_path_of


def test_repository_hosts_name_an_endpoint_and_a_raw_path():
    gitea = "git.example.com:3000=gitea/{owner}/{repo}/raw/branch/{ref}/{path}"
    hosts = parse_repository_hosts(f"github.com=github-raw, {gitea}")
    assert hosts["github.com"] == RepositoryHost("github.com", "github-raw", "/{owner}/{repo}/{ref}/{path}")
    assert hosts["git.example.com:3000"].endpoint == "gitea"
    with pytest.raises(ValueError, match="needs \\{path\\}"):
        parse_repository_hosts("h=e/{owner}/{branch}/{path}")
    with pytest.raises(ValueError, match="not host=endpoint"):
        parse_repository_hosts("h=Bad_Name")


@pytest.mark.parametrize(
    ("source", "path", "expected"),
    [
        ("https://github.com/acme/billing/tree/main/", "Dockerfile", "/acme/billing/main/Dockerfile"),
        ("https://github.com/acme/billing/blob/v2/svc/api/", "package.json", "/acme/billing/v2/svc/api/package.json"),
        ("https://git.example.com/acme/billing/src/branch/dev/", "a/b.yaml", "/acme/billing/dev/a/b.yaml"),
        ("https://gitlab.example.com/acme/billing/-/tree/main/x/", "y", "/acme/billing/main/x/y"),
        ("https://github.com/acme/billing.git", "Dockerfile", "/acme/billing/HEAD/Dockerfile"),
    ],
)
def test_browser_urls_become_raw_paths(source, path, expected):
    host = RepositoryHost("h", "e")
    assert raw_path_of(host, URL(source), path) == expected


def test_urls_without_a_ref_or_repository_are_unreadable():
    host = RepositoryHost("h", "e")
    with pytest.raises(RepositoryReadError, match="no branch"):
        raw_path_of(host, URL("https://h/acme/billing/main/"), "x")
    with pytest.raises(RepositoryReadError, match="no owner"):
        raw_path_of(host, URL("https://h/acme/"), "x")
    with pytest.raises(RepositoryReadError, match="outside the repository"):
        raw_path_of(host, URL("https://h/acme/billing/tree/main/"), "../../etc/passwd")


@pytest.mark.parametrize("settings_type", [CatalogSettings, ScorecardSettings], ids=["catalog", "scorecard"])
def test_services_refuse_repository_hosts_without_a_proxy_in_one_line(settings_type):
    base = {"IDP_DATABASE_URL": "postgresql://x", "IDP_NATS_URL": "nats://x"}
    with pytest.raises(ConfigError, match="needs IDP_PROXY_URL and IDP_PROXY_TOKEN"):
        load_settings(settings_type, {**base, "IDP_REPOSITORY_HOSTS": "git.example.com=gitea"})
    with pytest.raises(ConfigError, match="IDP_PROXY_TOKEN: 'key' is not a secret reference"):
        load_settings(settings_type, {**base, "IDP_PROXY_TOKEN": "key"})
    with pytest.raises(ConfigError, match="not host=endpoint"):
        load_settings(settings_type, {**base, "IDP_REPOSITORY_HOSTS": "h=Bad_Name"})
    configured = {"IDP_PROXY_URL": "http://proxy", "IDP_PROXY_TOKEN": "env:KEY", "IDP_REPOSITORY_HOSTS": "h=e"}
    assert load_settings(settings_type, {**base, **configured}).repository_hosts == "h=e"
