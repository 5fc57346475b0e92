"""Static checks of docker-compose.yml and the Kubernetes manifests under deploy/."""

from pathlib import Path

import yaml

from services.delegate.agent import parse_args
from services.delegate.health import parse_address

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
MODULES = {"catalog", "identity_sync", "workflow", "scorecard", "audit", "plugin_proxy"}


def load(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def manifests() -> list[dict]:
    return [doc for path in sorted(DEPLOY.glob("*.yaml")) for doc in load(path)]


def of_kind(kind: str) -> list[dict]:
    return [doc for doc in manifests() if doc["kind"] == kind]


def container(deployment: dict) -> dict:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def module_of(args: list[str]) -> str:
    (arg,) = args
    assert arg.startswith("services."), arg
    return arg.removeprefix("services.")


def compose() -> dict:
    return load(REPO / "docker-compose.yml")[0]


def app_services() -> dict[str, dict]:
    return {name: svc for name, svc in compose()["services"].items() if name not in {"nats", "postgres"}}


def test_every_document_parses():
    """Every YAML file under deploy/ and docker-compose.yml holds mappings with a kind or services."""
    for doc in manifests():
        assert {"apiVersion", "kind"} <= doc.keys()
    assert compose()["services"]


def test_kustomization_lists_every_manifest():
    """kustomization.yaml lists exactly the YAML files in deploy/ besides itself."""
    (kustomization,) = load(DEPLOY / "kustomization.yaml")
    on_disk = {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(on_disk)


def test_deployments_have_probes():
    """Every Deployment is ready on /readyz and alive on /healthz."""
    for deployment in of_kind("Deployment"):
        c = container(deployment)
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_deployment_args_name_existing_modules():
    """Every Deployment runs `python -m services.<module>` for a module that exists in the repo."""
    for deployment in of_kind("Deployment"):
        module = module_of(container(deployment)["args"])
        assert (REPO / "services" / module / "__main__.py").exists(), module


def test_every_deployment_has_a_matching_service():
    """Each Deployment has a Service selecting its pod labels and targeting a container port."""
    services = of_kind("Service")
    for deployment in of_kind("Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        ports = container(deployment)["ports"]
        port_ids = {p["containerPort"] for p in ports} | {p.get("name") for p in ports}
        matching = [s for s in services if s["spec"]["selector"].items() <= labels.items()]
        assert matching, deployment["metadata"]["name"]
        for service in matching:
            assert all(p["targetPort"] in port_ids for p in service["spec"]["ports"])


def test_nats_is_a_three_node_jetstream_cluster():
    """The NATS StatefulSet runs 3 replicas with JetStream and routes to every pod."""
    (statefulset,) = of_kind("StatefulSet")
    assert statefulset["spec"]["replicas"] == 3
    (config,) = [c for c in of_kind("ConfigMap") if "nats.conf" in c["data"]]
    conf = config["data"]["nats.conf"]
    assert "jetstream" in conf
    assert all(f"nats-{i}.{statefulset['spec']['serviceName']}" in conf for i in range(3))


def test_no_dev_token_in_deploy():
    """No manifest under deploy/ mentions IDP_DEV_TOKEN; production must not have one."""
    for path in DEPLOY.glob("*.yaml"):
        assert "IDP_DEV_TOKEN" not in path.read_text(), path.name
    (config,) = [c for c in of_kind("ConfigMap") if c["metadata"]["name"] == "idp-config"]
    assert config["data"]["IDP_ENVIRONMENT"] == "production"


def test_compose_defines_the_suite():
    """Compose runs nats, postgres and each service with a healthcheck and both dependencies."""
    assert {"nats", "postgres"} <= compose()["services"].keys()
    for name, svc in app_services().items():
        assert svc["healthcheck"]["test"], name
        assert {"nats", "postgres"} <= set(svc["depends_on"]), name
        assert svc["depends_on"]["postgres"]["condition"] == "service_healthy", name
    ports = [port for svc in app_services().values() for port in svc["ports"]]
    assert len(set(ports)) == len(ports)


def test_compose_and_deploy_run_the_same_modules():
    """Compose and deploy/ each run the six service modules, named after them with hyphens."""
    compose_modules = [module_of(svc["command"]) for svc in app_services().values()]
    deploy_modules = [module_of(container(d)["args"]) for d in of_kind("Deployment")]
    assert [name.replace("-", "_") for name in app_services()] == compose_modules
    assert [d["metadata"]["name"].replace("-", "_") for d in of_kind("Deployment")] == deploy_modules
    assert sorted(compose_modules) == sorted(MODULES)
    assert sorted(deploy_modules) == sorted(MODULES)


def test_dockerfile_runs_modules_as_non_root():
    """The one image runs `python -m <args>` as a non-root user on port 8080."""
    dockerfile = (REPO / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["python", "-m"]' in dockerfile
    assert "USER 10001" in dockerfile
    assert "EXPOSE 8080" in dockerfile


def test_compose_does_not_take_the_standard_nats_and_postgres_ports():
    """A developer machine may already run NATS on 4222 and PostgreSQL on 5432."""
    published = [str(p) for svc in compose()["services"].values() for p in svc.get("ports", [])]
    assert not [p for p in published if p.split(":")[0] in {"4222", "5432"}], published


DELEGATE = DEPLOY / "delegate"


def delegate_manifests() -> list[dict]:
    return [doc for path in sorted(DELEGATE.glob("*.yaml")) for doc in load(path)]


def test_delegate_kustomization_lists_its_manifests():
    """deploy/delegate/ is applied on its own, in the private network the agent reaches."""
    (kustomization,) = load(DELEGATE / "kustomization.yaml")
    on_disk = {p.name for p in DELEGATE.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(on_disk)


def test_delegate_runs_two_outbound_only_replicas_with_its_token_from_a_secret():
    docs = delegate_manifests()
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    assert deployment["spec"]["replicas"] == 2
    c = container(deployment)
    assert module_of(c["args"]) == "delegate" and (REPO / "services" / "delegate" / "__main__.py").exists()
    (token,) = [e for e in c["env"] if e["name"] == "IDP_DELEGATE_TOKEN"]
    assert token["valueFrom"]["secretKeyRef"] == {"name": "idp-delegate", "key": "token"}
    assert not [d for d in docs if d["kind"] in ("Service", "Ingress")]
    (policy,) = [d for d in docs if d["kind"] == "NetworkPolicy"]
    assert policy["spec"]["policyTypes"] == ["Ingress"] and "ingress" not in policy["spec"]


def test_delegate_probes_ask_the_agents_health_port():
    """Liveness and readiness are HTTP probes on the one port the container declares, which the agent serves
    because its ConfigMap sets IDP_DELEGATE_HEALTH_ADDRESS to it."""
    docs = delegate_manifests()
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    c = container(deployment)
    (port,) = c["ports"]
    probes = {name: c[name]["httpGet"] for name in ("livenessProbe", "readinessProbe")}
    assert probes == {
        "livenessProbe": {"path": "/healthz", "port": port["name"]},
        "readinessProbe": {"path": "/readyz", "port": port["name"]},
    }
    (config,) = [d for d in docs if d["kind"] == "ConfigMap"]
    agent = parse_args([], environ={**config["data"], "IDP_DELEGATE_TOKEN": "corp." + "s" * 40})
    assert agent.health_address is not None
    host, bound_port = parse_address(agent.health_address)
    assert host == "0.0.0.0" and bound_port == port["containerPort"]  # the kubelet calls the pod's IP


def test_delegate_is_non_root_read_only_and_memory_bounded():
    (deployment,) = [d for d in delegate_manifests() if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    c = container(deployment)
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
    assert c["securityContext"]["readOnlyRootFilesystem"] and not c["securityContext"]["allowPrivilegeEscalation"]
    assert c["resources"]["requests"]["memory"] == "64Mi" and c["resources"]["limits"]["memory"] == "128Mi"


def test_delegate_config_is_what_the_agent_accepts():
    """The ConfigMap the Deployment reads parses with the agent's own argument rules."""
    (deployment,) = [d for d in delegate_manifests() if d["kind"] == "Deployment"]
    (source,) = container(deployment)["envFrom"]
    (config,) = [
        d
        for d in delegate_manifests()
        if d["kind"] == "ConfigMap" and d["metadata"]["name"] == source["configMapRef"]["name"]
    ]
    config = parse_args([], environ={**config["data"], "IDP_DELEGATE_TOKEN": "corp." + "s" * 40})
    assert config.tags and (config.policy.allowed_hosts or config.policy.allowed_networks)
    assert not config.policy.allow_public
