"""The compose stack, read as docker compose would (docker is not available to the tests): every
service runs with a health check, Prometheus scrapes every service's /metrics port, and Grafana
gets the datasources the dashboards name."""

import json
import re
from pathlib import Path
from typing import Any

import yaml

from libs.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def flowplan_services() -> list[str]:
    """Every service that runs as `python -m services.<name>`."""
    return sorted(p.parent.name for p in (ROOT / "services").glob("*/__main__.py"))


def test_every_compose_service_has_a_health_check_and_every_flowplan_service_runs() -> None:
    services = load(ROOT / "docker-compose.yml")["services"]
    one_shot = {name for name, s in services.items() if s.get("restart") == "no"}
    assert one_shot == {"setup"}
    assert [name for name, s in services.items() if name not in one_shot and "healthcheck" not in s] == []
    commands = {name: " ".join(s.get("command", [])) for name, s in services.items()}
    for name in flowplan_services():
        assert commands.get(name) == f"python -m services.{name}", name
    assert {"nats", "postgres", "prometheus", "grafana"} <= set(services)


def test_prometheus_scrapes_every_service_on_its_port() -> None:
    scrape = load(DEPLOY / "prometheus.yml")["scrape_configs"]
    jobs = {job["job_name"]: job["static_configs"][0]["targets"] for job in scrape}
    defaults = Settings()
    for name in flowplan_services():
        assert jobs.get(name) == [f"{name}:{getattr(defaults, f'{name}_port')}"], name
    compose = load(ROOT / "docker-compose.yml")["services"]
    for name, targets in jobs.items():
        host, port = targets[0].split(":")
        exposed = [str(p).split(":")[-1] for p in compose[host].get("expose", []) + compose[host].get("ports", [])]
        assert port in exposed, f"{name}: compose does not open {port} on {host}"


def test_dashboards_use_only_the_provisioned_datasources() -> None:
    sources = load(DEPLOY / "grafana/provisioning/datasources/flowplan.yml")["datasources"]
    provisioned = {d["uid"]: d["type"] for d in sources}
    dashboards = sorted((DEPLOY / "grafana/dashboards").glob("*.json"))
    assert len(dashboards) >= 4
    for path in dashboards:
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for source in [panel["datasource"], *(t["datasource"] for t in panel["targets"])]:
                assert provisioned.get(source["uid"]) == source["type"], f"{path.name}: {panel['title']}"
    grafana = load(ROOT / "docker-compose.yml")["services"]["grafana"]
    mounted = {v.split(":")[1] for v in grafana["volumes"]}
    provider = load(DEPLOY / "grafana/provisioning/dashboards/flowplan.yml")["providers"][0]
    assert provider["options"]["path"] in mounted and "/etc/grafana/provisioning" in mounted


def test_the_cluster_override_runs_three_nodes_and_r3_streams() -> None:
    override = load(DEPLOY / "docker-compose.cluster.yml")["services"]
    assert override["setup"]["environment"]["FLOWPLAN_STREAM_REPLICAS"] == "3"
    for node, service in (("nats-1", "nats"), ("nats-2", "nats-2"), ("nats-3", "nats-3")):
        conf = (DEPLOY / "nats/cluster" / f"{node}.conf").read_text()
        assert re.search(rf"server_name: {node}\b", conf)
        assert any(f"deploy/nats/cluster/{node}.conf" in v for v in override[service]["volumes"])


SECRET_NAME = re.compile(r"TOKEN|PASSWORD|SECRET")
REQUIRED = re.compile(r"^\$\{(?P<name>[A-Z0-9_]+):\?[^}]+\}$")


def test_compose_has_no_secret_with_a_default_and_publishes_only_what_must_be_public() -> None:
    """Nothing insecure by default: every token and password is required (`${NAME:?message}`, so
    `docker compose up` stops and says which to set), none has a default or a literal value; only
    the gateway, ingress and the console (which refuse development secrets off loopback) listen beyond
    this machine."""
    text = (ROOT / "docker-compose.yml").read_text()
    for dev_value in ("dev-admin-token", "dev-ingest-token", "dev-grafana-password"):
        assert dev_value not in text
    compose = load(ROOT / "docker-compose.yml")
    environments = [("x-flowplan-env", compose["x-flowplan-env"])]
    environments += [(name, s.get("environment", {})) for name, s in compose["services"].items()]
    secrets = {}
    for where, env in environments:
        for key, value in env.items():
            if SECRET_NAME.search(key):
                match = REQUIRED.match(str(value))
                assert match, f"{where}: {key} = {value!r} is not a required variable"
                secrets[key] = match["name"]
    assert {"FLOWPLAN_ADMIN_TOKEN", "FLOWPLAN_INGEST_TOKEN", "FLOWPLAN_GRAFANA_DB_PASSWORD", "FLOWPLAN_CONSOLE_SECRET",
            "FLOWPLAN_PAYMENT_WEBHOOK_SECRET", "GF_SECURITY_ADMIN_PASSWORD"} <= set(secrets)  # fmt: skip
    assert compose["x-flowplan-env"]["FLOWPLAN_HOST"] == "0.0.0.0"  # hence the check in every service
    public = {}
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            published = str(port).split(":")
            public[name] = len(published) == 2 or published[0] not in ("127.0.0.1", "localhost")
    assert {name for name, everyone in public.items() if everyone} == {"gateway", "ingress", "console"}
    assert {"prometheus", "grafana"} <= set(public)
    readme = (DEPLOY / "README.md").read_text()
    for variable in set(secrets.values()):
        assert variable in readme, f"deploy/README.md does not say how to set {variable}"
