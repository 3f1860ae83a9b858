"""deploy/k8s without a cluster: kustomize renders it, every object validates offline, and the
rendered fleet keeps its promises (secrets, no root, one GPU, readiness, grace, scaling)."""

from __future__ import annotations

import copy
import functools
import re
from pathlib import Path
from typing import Any

import pytest

from testkit.manifests import K8S, KUBECTL, check_command, render
from worker.core.celeryconf import tagging_queue
from worker.core.settings import load_settings

pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed: its "
                                "kustomize renders deploy/k8s (kubectl 1.32 here)")

BASE, OVERLAY = K8S / "base", K8S / "overlays" / "gpu"
KUBERNETES = "1.32"  # this machine's kubectl; kubernetes-validate ships the schemas
Object = dict[str, Any]


@functools.cache
def objects(folder: Path = OVERLAY) -> tuple[Object, ...]:
    return tuple(render(folder))


def one(kind: str, folder: Path = OVERLAY, name: str = "") -> Object:
    found = [o for o in objects(folder) if o["kind"] == kind
             and o["metadata"]["name"].startswith(name)]
    assert len(found) == 1, [o["metadata"]["name"] for o in found]
    return found[0]


def pod_specs(folder: Path = OVERLAY) -> dict[str, Object]:
    """Each workload's pod spec, by object name."""
    specs = {}
    for obj in objects(folder):
        template = {"Deployment": lambda o: o["spec"]["template"],
                    "Job": lambda o: o["spec"]["template"],
                    "CronJob": lambda o: o["spec"]["jobTemplate"]["spec"]["template"]}.get(
            obj["kind"])
        if template:
            specs[obj["metadata"]["name"]] = template(obj)["spec"]
    return specs


def containers(spec: Object) -> list[Object]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def env_of(container: Object) -> dict[str, Object]:
    return {e["name"]: e for e in container.get("env", [])}


def shared_settings(folder: Path = OVERLAY) -> dict[str, str]:
    return dict(one("ConfigMap", folder, "tagger-config")["data"])


def crd_models() -> dict[tuple[str, str], Any]:
    """KEDA's and the Prometheus Operator's CRDs, as pydantic models generated from them."""
    from cloudcoil.models.keda.v1alpha1 import ScaledObject, TriggerAuthentication
    from cloudcoil.models.prometheus_operator.v1 import PodMonitor

    return {("keda.sh/v1alpha1", "ScaledObject"): ScaledObject,
            ("keda.sh/v1alpha1", "TriggerAuthentication"): TriggerAuthentication,
            ("monitoring.coreos.com/v1", "PodMonitor"): PodMonitor}


def dropped(given: Any, kept: Any, path: str = "") -> list[str]:
    """Fields of ``given`` that the model did not keep: names its CRD does not have."""
    if isinstance(given, dict) and isinstance(kept, dict):
        return [p for key, value in given.items() for p in (
            dropped(value, kept[key], f"{path}.{key}") if key in kept else [f"{path}.{key}"])]
    if isinstance(given, list) and isinstance(kept, list):
        return [p for i, (a, b) in enumerate(zip(given, kept, strict=True))
                for p in dropped(a, b, f"{path}[{i}]")]
    return []


def problems(obj: Object) -> list[str]:
    """What the API server (or the CRD's schema) would refuse, offline."""
    import kubernetes_validate
    import pydantic

    where = f"{obj['kind']}/{obj['metadata']['name']}"
    model = crd_models().get((obj["apiVersion"], obj["kind"]))
    if model is None:  # a core kind: the Kubernetes schema, unknown fields refused (strict)
        try:
            kubernetes_validate.validate(obj, KUBERNETES, strict=True)
        except kubernetes_validate.ValidationError as exc:
            return [f"{where}: {exc.message} at {list(exc.absolute_path)}"]
        return []
    try:
        parsed = model.model_validate(obj)
    except pydantic.ValidationError as exc:
        return [f"{where}: {exc}"]
    kept = parsed.model_dump(by_alias=True, exclude_unset=True, mode="json")
    return [f"{where}: unknown field {path}" for path in dropped(obj, kept)]


@pytest.mark.parametrize("folder", [BASE, OVERLAY], ids=["base", "gpu"])
def test_every_rendered_object_validates_offline(folder):
    kinds = sorted(o["kind"] for o in objects(folder))
    assert {"Deployment", "Job", "CronJob", "ScaledObject", "PodMonitor", "Service",
            "ConfigMap"} <= set(kinds)
    assert [p for obj in objects(folder) for p in problems(obj)] == []


def broken(kind: str, name: str, path: list[str | int], change: Any) -> Object:
    """A copy of a rendered object with one mistake: a field renamed, or one removed."""
    obj = copy.deepcopy(one(kind, name=name))
    parent = functools.reduce(lambda node, key: node[key], path[:-1], obj)
    value = parent.pop(path[-1])
    if change is not None:
        parent[change] = value
    return obj


@pytest.mark.parametrize(("obj", "mistake"), [
    (("Deployment", "tagger-worker", ["spec", "template", "spec", "terminationGracePeriodSeconds"],
      "terminationGracePeriod"), "'terminationGracePeriod' was unexpected"),
    (("Deployment", "tagger-worker", ["spec", "template", "spec", "containers", 0, "name"], None),
     "'name' is a required property"),
    (("ScaledObject", "", ["spec", "cooldownPeriod"], "cooldownPeriods"),
     "unknown field .spec.cooldownPeriods"),
    (("ScaledObject", "", ["spec", "fallback", "replicas"], None), "fallback.replicas"),
    (("ScaledObject", "", ["spec", "scaleTargetRef"], None), "scaleTargetRef"),
    (("PodMonitor", "", ["spec", "podMetricsEndpoints"], "podMetricsEndpoint"),
     "unknown field .spec.podMetricsEndpoint"),
], ids=["typo", "missing", "keda-typo", "keda-missing", "keda-target", "podmonitor-typo"])
def test_the_validation_catches_mistakes(obj, mistake):
    assert mistake in " ".join(problems(broken(*obj)))


def test_the_keda_trigger_has_what_its_scaler_requires():
    # A CRD leaves a trigger's metadata free-form: KEDA's prometheus scaler documents these.
    (trigger,) = one("ScaledObject")["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert {"serverAddress", "query", "threshold"} <= set(trigger["metadata"])
    assert float(trigger["metadata"]["threshold"]) > 0
    assert all(isinstance(v, str) for v in trigger["metadata"].values())


def test_scaling_reads_the_exported_backlog_of_the_workers_queue():
    scaled, worker = one("ScaledObject"), one("Deployment", name="tagger-worker")
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == worker["metadata"]["name"]
    assert "replicas" not in worker["spec"]  # KEDA owns the count; an apply must not reset it
    assert spec["minReplicaCount"] == 0 and spec["maxReplicaCount"] >= spec["fallback"]["replicas"]
    query = spec["triggers"][0]["metadata"]["query"]
    labels = dict(re.findall(r'(\w+)="([^"]*)"', query))
    assert re.match(r"max\(tagger_backlog_images\{", query)  # the exporter's gauge
    assert labels == {"namespace": worker["metadata"]["namespace"],
                      "queue": tagging_queue(load_settings(shared_settings()))}
    # A scrape that fails is an error (fallback), not a zero backlog that scales to 0.
    assert spec["triggers"][0]["metadata"]["ignoreNullValues"] == "false"
    down = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    assert spec["cooldownPeriod"] >= 300 and down["stabilizationWindowSeconds"] >= 300


def test_no_secret_is_inlined():
    assert not [o for o in objects() if o["kind"] == "Secret"]
    credential = re.compile(r"URL|PASSWORD|SECRET|AUTH|TOKEN|KEY_ID")
    for name, spec in pod_specs().items():
        for container in containers(spec):
            for var, entry in env_of(container).items():
                if credential.search(var):
                    assert "secretKeyRef" in entry.get("valueFrom", {}), f"{name}: {var}"
                assert "@" not in str(entry.get("value", "")), f"{name}: {var}"
            assert not [a for a in container.get("command", []) if "@" in a or "auth=" in a]
    for key, value in shared_settings().items():
        assert not credential.search(key) and "@" not in value, key


def test_pods_run_restricted_with_only_their_volumes_writable():
    assert one("Namespace")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == (
        "restricted")
    config = shared_settings()
    for name, spec in pod_specs().items():
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] and pod["runAsUser"] > 0, name
        assert pod["seccompProfile"]["type"] == "RuntimeDefault"
        for container in containers(spec):
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] and not context["allowPrivilegeEscalation"]
            assert context["capabilities"]["drop"] == ["ALL"], name
            mounted = [m["mountPath"] for m in container.get("volumeMounts", [])]
            for var in ("HOME", "TAGGER_HOME"):  # where anything is written
                assert any(config[var].startswith(m) for m in mounted), (name, var)
            assert container["resources"]["limits"]["memory"], name


def test_the_gpu_worker():
    from tests.unit.deploy.test_compose import pool_of, services

    spec = pod_specs()["tagger-worker"]
    worker = spec["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pool_of(worker["command"]) == pool_of(services()["worker"]["command"])
    assert "--disable-prefetch" in worker["command"]
    env = env_of(worker)
    assert env["TAGGER_DEVICE"]["value"] == "cuda"
    decoders = int(env["TAGGER_DECODE_PROCESSES"]["value"])
    assert decoders <= 2 * int(worker["resources"]["requests"]["cpu"])
    # Ready = model loaded: the worker serves /metrics only once it is warmed up.
    port = next(p for p in worker["ports"] if p["name"] == worker["readinessProbe"][
        "httpGet"]["port"])
    assert port["containerPort"] == int(env["TAGGER_METRICS_PORT"]["value"])
    assert "livenessProbe" not in worker
    # A scale-in or a roll lets the chunks in hand finish before the pod is killed.
    limit = load_settings(shared_settings()).task_time_limit
    assert spec["terminationGracePeriodSeconds"] > limit
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])


def test_a_version_runs_only_on_its_own_schema():
    version = one("Deployment", name="tagger-worker")["metadata"]["labels"][
        "app.kubernetes.io/version"]
    job = one("Job")
    assert job["metadata"]["name"] == f"tagger-db-upgrade-{version}"
    assert pod_specs()[job["metadata"]["name"]]["containers"][0]["command"] == [
        "producer", "db", "upgrade"]
    for name, spec in pod_specs().items():
        images = {c["image"] for c in containers(spec)}
        assert {image.rpartition(":")[2] for image in images} == {version}, name
        uses_database = any("DATABASE_URL" in env_of(c) for c in spec["containers"])
        if name == job["metadata"]["name"] or not uses_database:
            continue
        first = spec["initContainers"][0]
        assert first["command"][:3] == ["producer", "db", "wait"], name
        assert {first["image"]} == {c["image"] for c in spec["containers"]}, name


def test_every_command_is_a_real_one(tmp_path):
    commands = [c["command"] for spec in pod_specs().values() for c in containers(spec)]
    assert ["producer", "db", "upgrade"] in commands
    assert any(c[:2] == ["producer", "enqueue"] for c in commands)
    assert any(c[:2] == ["producer", "serve-metrics"] for c in commands)
    for command in commands:
        check_command(command, tmp_path)


def test_flower_is_behind_auth_inside_the_cluster():
    flower = pod_specs()["tagger-flower"]["containers"][0]
    assert "secretKeyRef" in env_of(flower)["FLOWER_BASIC_AUTH"]["valueFrom"]
    assert one("Service", name="tagger-flower")["spec"]["type"] == "ClusterIP"
    assert not [o for o in objects() if o["kind"] in {"Ingress", "Route"}]


def test_the_scrape_reaches_the_workers_and_the_exporter():
    monitor = one("PodMonitor")["spec"]
    wanted = monitor["selector"]["matchLabels"]
    ports = {p["port"] for p in monitor["podMetricsEndpoints"]}
    for name in ("tagger-worker", "tagger-exporter"):
        deployment = one("Deployment", name=name)
        assert wanted.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert ports & {p["name"] for p in container["ports"]}, name
