"""deploy/kubernetes/: valid against the Kubernetes API schemas, and set up the way the worker needs.

Validation is offline: kubernetes-validate ships the API's JSON schemas per Kubernetes version, and its
strict variants refuse fields the API does not know, so a typo in a manifest fails here rather than
at `kubectl apply`.
"""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from copy import deepcopy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
SHIPPED_MODELS = ROOT / "src" / "statusek" / "models"
KUSTOMIZATION = KUBE / "kustomization.yaml"
SECRET_EXAMPLE = KUBE / "secret.example.yaml"

# The oldest Kubernetes the manifests promise to work on, and the newest the installed
# kubernetes-validate knows (so an API removal shows up when the package is upgraded).
KUBERNETES_VERSIONS = sorted({"1.30", ".".join(latest_version().split(".")[:2])})

OPS_PORT = 9464
HTTP_PORT = 8080
# gateway/server.py: on SIGTERM the gateway stops accepting, then gives the requests under way
# STATUSEK_SHUTDOWN_TIMEOUT plus the time a request waits for its answer.
GATEWAY_ANSWER_WITHIN = 10.0
# worker/worker.py: on SIGTERM the worker drains its window within STATUSEK_SHUTDOWN_TIMEOUT, closes the
# commands consumer (up to 2 s), then flushes the outbox for up to max(1, timeout / 2).
CONSUMER_CLOSE_SECONDS = 2.0


def manifest_files() -> list[Path]:
    """Every Kubernetes manifest: the YAML files beside kustomization.yaml (models/ holds data)."""
    return sorted(p for p in KUBE.glob("*.yaml") if p != KUSTOMIZATION)


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def kustomization() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(KUSTOMIZATION.read_text(encoding="utf-8"))
    return data


def applied() -> list[dict[str, Any]]:
    """The resources `kubectl apply -k deploy/kubernetes` sends, before kustomize's rewrites."""
    return [doc for name in kustomization()["resources"] for doc in documents(KUBE / name)]


def the(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in applied() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"want one {kind} {name}, found {len(found)}"
    return found[0]


def worker() -> dict[str, Any]:
    containers: list[dict[str, Any]] = the("Deployment", "statusek-worker")["spec"]["template"]["spec"][
        "containers"
    ]
    return next(c for c in containers if c["name"] == "worker")


def gateway() -> dict[str, Any]:
    containers: list[dict[str, Any]] = the("Deployment", "statusek-gateway")["spec"]["template"]["spec"][
        "containers"
    ]
    return next(c for c in containers if c["name"] == "gateway")


def example_secret(name: str) -> dict[str, Any]:
    (secret,) = [d for d in documents(SECRET_EXAMPLE) if d["metadata"]["name"] == name]
    return secret


def env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def pod_specs() -> list[tuple[str, dict[str, Any]]]:
    """(resource, pod spec) of every workload, the Secret example excluded."""
    return [
        (f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"])
        for d in applied()
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job")
    ]


def containers() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{resource} {c['name']}", c)
        for resource, spec in pod_specs()
        for c in [*spec.get("initContainers", []), *spec["containers"]]
    ]


def validate(doc: dict[str, Any], version: str) -> None:
    """Strict validation, failing with the field and the reason (jsonschema's own message is huge)."""
    try:
        kubernetes_validate.validate(doc, version, strict=True)
        return
    except kubernetes_validate.ValidationError as e:
        field = ".".join(str(part) for part in e.absolute_path) or "<root>"
        resource = f"{doc['kind']}/{doc['metadata']['name']}"
        problem = f"{resource} is invalid for Kubernetes {version}: {field}: {e.message}"
    # Outside the except block, so the report does not chain the error that prints the whole schema.
    pytest.fail(problem, pytrace=False)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: p.name)
def test_manifest_is_valid_against_the_kubernetes_schema(path: Path, version: str) -> None:
    """Every resource of the file passes kubernetes-validate in strict mode."""
    docs = documents(path)
    assert docs, f"{path.name} holds no resource"
    for doc in docs:
        validate(doc, version)


def test_strict_validation_refuses_an_unknown_field() -> None:
    """A misspelt field fails validation, so the check above is not vacuous."""
    deployment = deepcopy(the("Deployment", "statusek-worker"))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["paht"] = "/livez"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with kustomize) is not installed")
def test_rendered_kustomization_is_valid() -> None:
    """`kubectl kustomize` renders the folder, generated ConfigMap included, into valid resources."""
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(KUBE)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    kinds = {d["kind"] for d in docs}
    assert {"Namespace", "Deployment", "ConfigMap", "PodDisruptionBudget", "Job"} <= kinds
    assert "Secret" not in kinds
    for doc in docs:
        validate(doc, KUBERNETES_VERSIONS[-1])


def test_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    """Every manifest file is applied by the kustomization except secret.example.yaml."""
    listed = set(kustomization()["resources"])
    assert listed == {p.name for p in manifest_files()} - {SECRET_EXAMPLE.name}


def test_no_secret_is_applied() -> None:
    """The kustomization applies no Secret: real credentials are created out of band."""
    assert [d["metadata"]["name"] for d in applied() if d["kind"] == "Secret"] == []


def test_secret_example_is_marked_as_an_example() -> None:
    """secret.example.yaml says it is an example and its Secrets hold only placeholders."""
    text = SECRET_EXAMPLE.read_text(encoding="utf-8")
    assert text.startswith("# EXAMPLE ONLY")
    secrets = documents(SECRET_EXAMPLE)
    assert [s["kind"] for s in secrets] == ["Secret", "Secret"]
    assert all("CHANGE-ME" in value for secret in secrets for value in secret["stringData"].values())


def test_every_resource_is_in_the_statusek_namespace() -> None:
    """Namespaced resources name the statusek namespace, and so does the kustomization."""
    assert kustomization()["namespace"] == "statusek"
    for doc in applied():
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "statusek", doc["metadata"]["name"]


def test_model_copies_equal_the_shipped_models() -> None:
    """deploy/kubernetes/models/ holds exactly the files of src/statusek/models/, byte for byte."""
    copies = {p.name: p.read_bytes() for p in (KUBE / "models").iterdir()}
    shipped = {p.name: p.read_bytes() for p in SHIPPED_MODELS.glob("*.yaml")}
    assert copies == shipped, "copy src/statusek/models/*.yaml to deploy/kubernetes/models/"


def test_models_config_map_is_generated_from_every_model_copy() -> None:
    """The statusek-models generator takes every file of deploy/kubernetes/models/."""
    (generator,) = [g for g in kustomization()["configMapGenerator"] if g["name"] == "statusek-models"]
    assert sorted(generator["files"]) == sorted(f"models/{p.name}" for p in (KUBE / "models").iterdir())


def test_models_are_mounted_where_the_models_path_points() -> None:
    """STATUSEK_MODELS_PATH is the mount path of the statusek-models ConfigMap volume."""
    spec = the("Deployment", "statusek-worker")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in worker()["volumeMounts"]}
    mount = mounts[env(worker())["STATUSEK_MODELS_PATH"]["value"]]
    assert volumes[mount["name"]]["configMap"]["name"] == "statusek-models"


def test_ops_port_is_named_and_scraped() -> None:
    """The port named ops is STATUSEK_OPS_PORT, and the scrape annotations point at its /metrics."""
    ports = {p["name"]: p["containerPort"] for p in worker()["ports"]}
    annotations = the("Deployment", "statusek-worker")["spec"]["template"]["metadata"]["annotations"]
    assert ports["ops"] == int(env(worker())["STATUSEK_OPS_PORT"]["value"]) == OPS_PORT
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(OPS_PORT)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_liveness_probe_gets_livez_on_the_ops_port() -> None:
    """The liveness probe is GET /livez on the ops port."""
    assert worker()["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "ops"}


def test_readiness_probe_gets_readyz_on_the_ops_port() -> None:
    """The readiness probe is GET /readyz on the ops port."""
    assert worker()["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "ops"}


def test_readiness_probe_waits_longer_than_the_readiness_checks() -> None:
    """The readiness probe's timeout exceeds /readyz's 2 s dependency check timeout."""
    assert worker()["readinessProbe"]["timeoutSeconds"] > 2


def test_grace_period_exceeds_the_drain() -> None:
    """terminationGracePeriodSeconds leaves time for the window drain, consumer close and outbox flush."""
    shutdown_timeout = float(env(worker())["STATUSEK_SHUTDOWN_TIMEOUT"]["value"])
    drain = shutdown_timeout + CONSUMER_CLOSE_SECONDS + max(1.0, shutdown_timeout / 2)
    grace = the("Deployment", "statusek-worker")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > drain


def test_urls_come_from_the_statusek_urls_secret() -> None:
    """Every container's connection URLs are secretKeyRefs to keys the Secret example defines."""
    example = example_secret("statusek-urls")
    for where, container in containers():
        for name, var in env(container).items():
            if name.endswith("_URL"):
                ref = var["valueFrom"]["secretKeyRef"]
                assert ref["name"] == example["metadata"]["name"] == "statusek-urls", where
                assert ref["key"] in example["stringData"], where


def test_worker_gets_both_urls() -> None:
    """The worker container is given STATUSEK_AMQP_URL and STATUSEK_DATABASE_URL."""
    assert {"STATUSEK_AMQP_URL", "STATUSEK_DATABASE_URL"} <= env(worker()).keys()


def test_every_container_has_requests_and_limits() -> None:
    """Every container requests and limits both CPU and memory."""
    for where, container in containers():
        resources = container["resources"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= resources[kind].keys(), f"{where}: {kind}"


def test_every_container_runs_locked_down() -> None:
    """Non-root uid 10001, read-only root, no escalation, no capabilities, RuntimeDefault seccomp."""
    for where, container in containers():
        sc = container["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001, where
        assert sc["readOnlyRootFilesystem"] is True, where
        assert sc["allowPrivilegeEscalation"] is False, where
        assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"], where
        assert sc["seccompProfile"]["type"] == "RuntimeDefault", where


def test_no_pod_mounts_a_service_account_token() -> None:
    """statusek never calls the Kubernetes API, so no pod gets a token."""
    for where, spec in pod_specs():
        assert spec["automountServiceAccountToken"] is False, where


def test_images_carry_the_project_version() -> None:
    """Every container runs statusek:<the version in pyproject.toml>."""
    version = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    for where, container in containers():
        assert container["image"] == f"statusek:{version}", where


def test_worker_runs_the_worker_command() -> None:
    """The Deployment's container runs `statusek worker`."""
    assert worker()["args"] == ["worker"]


def test_rolling_update_never_drops_below_the_replicas() -> None:
    """Two replicas, replaced one at a time with a surge, so a standby consumer always exists."""
    spec = the("Deployment", "statusek-worker")["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert spec["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}


def test_disruption_budget_covers_the_worker_pods() -> None:
    """The PodDisruptionBudget keeps one worker pod, selected like the Deployment's pods."""
    deployment = the("Deployment", "statusek-worker")["spec"]
    budget = the("PodDisruptionBudget", "statusek-worker")["spec"]
    assert budget["minAvailable"] == 1 < deployment["replicas"]
    assert budget["selector"] == deployment["selector"]


def test_metrics_service_selects_the_worker_pods_ops_port() -> None:
    """The metrics Service targets the ops port of the Deployment's pods."""
    service = the("Service", "statusek-metrics")["spec"]
    labels = the("Deployment", "statusek-worker")["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= labels.items()
    assert [(p["name"], p["port"], p["targetPort"]) for p in service["ports"]] == [("ops", OPS_PORT, "ops")]


def test_migrate_job_runs_migrate_once_and_is_cleaned_up() -> None:
    """The migrate Job runs `statusek migrate` with bounded retries and a TTL after finishing."""
    job = the("Job", "statusek-migrate")["spec"]
    (container,) = job["template"]["spec"]["containers"]
    assert container["args"][0] == "migrate"
    assert 0 < job["backoffLimit"] <= 10
    assert job["ttlSecondsAfterFinished"] > 0
    assert job["template"]["spec"]["restartPolicy"] in ("Never", "OnFailure")


def migrate_job() -> dict[str, Any]:
    containers: list[dict[str, Any]] = the("Job", "statusek-migrate")["spec"]["template"]["spec"][
        "containers"
    ]
    return next(c for c in containers if c["name"] == "migrate")


def test_migrate_job_migrates_as_the_owner_and_grants_the_worker_role() -> None:
    """The Job connects with the owner's URL and grants statusek_worker, the role of the worker's URL."""
    example = example_secret("statusek-urls")
    assert migrate_job()["args"] == ["migrate", "--grant", "statusek_worker"]
    owner_key = env(migrate_job())["STATUSEK_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["key"]
    worker_key = env(worker())["STATUSEK_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["key"]
    assert owner_key != worker_key
    assert example["stringData"][worker_key].startswith("postgresql://statusek_worker:")
    assert not example["stringData"][owner_key].startswith("postgresql://statusek_worker:")


def test_worker_does_not_migrate_at_start() -> None:
    """The worker runs with STATUSEK_MIGRATE_ON_START=false: its role has no DDL rights."""
    assert env(worker())["STATUSEK_MIGRATE_ON_START"]["value"] == "false"


def test_gateway_runs_the_gateway_command() -> None:
    """The gateway Deployment's container runs `statusek gateway`."""
    assert gateway()["args"] == ["gateway"]


def test_gateway_probes_get_livez_and_readyz_on_its_ops_port() -> None:
    """The gateway's startup and liveness probes get /livez, its readiness probe /readyz, on port ops."""
    ports = {p["name"]: p["containerPort"] for p in gateway()["ports"]}
    assert ports["ops"] == int(env(gateway())["STATUSEK_OPS_PORT"]["value"]) == OPS_PORT
    assert gateway()["startupProbe"]["httpGet"] == {"path": "/livez", "port": "ops"}
    assert gateway()["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "ops"}
    assert gateway()["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "ops"}


def test_gateway_metrics_are_scraped_on_its_ops_port() -> None:
    """The gateway pods' scrape annotations point at /metrics on the ops port."""
    annotations = the("Deployment", "statusek-gateway")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(OPS_PORT)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_gateway_service_sends_http_to_the_gateway_pods() -> None:
    """Service statusek-gateway selects the gateway's pods and sends port 80 to STATUSEK_HTTP_PORT."""
    service = the("Service", "statusek-gateway")["spec"]
    labels = the("Deployment", "statusek-gateway")["spec"]["template"]["metadata"]["labels"]
    ports = {p["name"]: p["containerPort"] for p in gateway()["ports"]}
    assert service["selector"].items() <= labels.items()
    assert not service["selector"].items() <= worker_labels().items()
    assert ports["http"] == int(env(gateway())["STATUSEK_HTTP_PORT"]["value"]) == HTTP_PORT
    http = next(p for p in service["ports"] if p["name"] == "http")
    assert (http["port"], http["targetPort"]) == (80, "http")


def worker_labels() -> dict[str, str]:
    labels: dict[str, str] = the("Deployment", "statusek-worker")["spec"]["template"]["metadata"]["labels"]
    return labels


def test_gateway_authenticates_callers_against_the_mounted_users_file() -> None:
    """Auth is basic, and STATUSEK_GATEWAY_USERS_FILE is a key of the users Secret, mounted."""
    variables = env(gateway())
    assert variables["STATUSEK_GATEWAY_AUTH"]["value"] == "basic"
    path = Path(variables["STATUSEK_GATEWAY_USERS_FILE"]["value"])
    mount = next(m for m in gateway()["volumeMounts"] if Path(m["mountPath"]) == path.parent)
    volumes = {
        v["name"]: v for v in the("Deployment", "statusek-gateway")["spec"]["template"]["spec"]["volumes"]
    }
    secret = volumes[mount["name"]]["secret"]
    example = example_secret(secret["secretName"])
    (item,) = [i for i in secret["items"] if i["path"] == path.name]
    assert item["key"] in example["stringData"]


def test_gateway_publishes_as_its_own_rabbitmq_user() -> None:
    """The gateway's AMQP URL is a Secret key of its own (a user with the impersonator tag)."""
    gateway_key = env(gateway())["STATUSEK_AMQP_URL"]["valueFrom"]["secretKeyRef"]["key"]
    worker_key = env(worker())["STATUSEK_AMQP_URL"]["valueFrom"]["secretKeyRef"]["key"]
    assert gateway_key != worker_key
    assert example_secret("statusek-urls")["stringData"][gateway_key].startswith("amqp://statusek-gateway:")


def test_gateway_grace_period_exceeds_its_drain() -> None:
    """terminationGracePeriodSeconds covers preStop, the shutdown timeout and a request's answer wait."""
    pre_stop = float(gateway()["lifecycle"]["preStop"]["exec"]["command"][-1])
    drain = pre_stop + float(env(gateway())["STATUSEK_SHUTDOWN_TIMEOUT"]["value"]) + GATEWAY_ANSWER_WITHIN
    grace = the("Deployment", "statusek-gateway")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > drain


def test_disruption_budget_covers_the_gateway_pods() -> None:
    """A PodDisruptionBudget keeps one of the gateway's replicas, selected like its pods."""
    deployment = the("Deployment", "statusek-gateway")["spec"]
    budget = the("PodDisruptionBudget", "statusek-gateway")["spec"]
    assert budget["minAvailable"] == 1 < deployment["replicas"]
    assert budget["selector"] == deployment["selector"]


# deploy/compose.yaml's broker stopped cleanly in 6.4 s on the 2-core development machine.
BROKER_CLEAN_STOP_SECONDS = 6.4


def test_compose_gives_the_broker_time_to_stop_cleanly() -> None:
    """The compose broker's stop grace period is several times its measured clean stop, not Docker's 10 s."""
    services = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text(encoding="utf-8"))["services"]
    grace = services["rabbitmq"]["stop_grace_period"]
    assert grace.endswith("s")
    assert float(grace.removesuffix("s")) >= 5 * BROKER_CLEAN_STOP_SECONDS
