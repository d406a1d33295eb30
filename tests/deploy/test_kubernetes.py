"""The Kubernetes manifests: valid for several Kubernetes versions, and consistent with the server.

No cluster runs here. Every resource of the base, of the example overlay (rendered here with
the kustomize features it uses: namespace, images, replicas, a merge patch) is validated
offline against the Kubernetes JSON schemas of several versions, in strict mode (unknown
fields are errors). What schemas cannot see is checked against the code: ports and probe
services against the server's settings, the grace period against the drain, image names
and the user id against the Dockerfiles and compose.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import ROOT, ServerProcess

KUBE = ROOT / "deploy" / "kubernetes"
VERSIONS = ["1.29", "1.31", "1.33", "1.35", "1.37"]
NAMESPACED = {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "Job",
              "PersistentVolumeClaim"}


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _merge(base: Any, patch: Any) -> Any:
    """A JSON merge of `patch` into `base` (lists replaced), as kustomize applies these patches."""
    if not isinstance(base, dict) or not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(base)
    for key, value in patch.items():
        out[key] = _merge(out.get(key), value) if key in out else copy.deepcopy(value)
    return out


def render(folder: Path) -> list[dict[str, Any]]:
    """The resources of a kustomization folder, with the transformations the repository's overlays use."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    known = {"apiVersion", "kind", "labels", "resources", "namespace", "images", "replicas", "patches"}
    assert set(kustomization) <= known, f"render() does not know {set(kustomization) - known}"
    resources: list[dict[str, Any]] = []
    for entry in kustomization["resources"]:
        path = folder / entry
        resources += render(path) if path.is_dir() else _documents(path)
    for patch_entry in kustomization.get("patches", []):
        patch = _documents(folder / patch_entry["path"])[0]
        matches = [i for i, r in enumerate(resources)
                   if (r["kind"], r["metadata"]["name"]) == (patch["kind"], patch["metadata"]["name"])]
        assert len(matches) == 1, f"patch {patch_entry['path']} matches {len(matches)} resources"
        resources[matches[0]] = _merge(resources[matches[0]], patch)
    for label in kustomization.get("labels", []):
        for resource in resources:
            resource["metadata"].setdefault("labels", {}).update(label["pairs"])
    for resource in resources:
        if "namespace" in kustomization and resource["kind"] in NAMESPACED:
            resource["metadata"]["namespace"] = kustomization["namespace"]
        for container in _containers(resource):
            for image in kustomization.get("images", []):
                if container["image"].split(":")[0] == image["name"]:
                    container["image"] = f"{image.get('newName', image['name'])}:{image.get('newTag', 'latest')}"
        for replicas in kustomization.get("replicas", []):
            if resource["kind"] == "Deployment" and resource["metadata"]["name"] == replicas["name"]:
                resource["spec"]["replicas"] = replicas["count"]
    return resources


def _containers(resource: dict[str, Any]) -> list[dict[str, Any]]:
    if resource["kind"] in ("Deployment", "Job"):
        return list(resource["spec"]["template"]["spec"]["containers"])
    if resource["kind"] == "InferenceService":
        return list(resource["spec"]["predictor"]["containers"])
    return []


def _one(resources: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [r for r in resources if r["kind"] == kind and (name is None or r["metadata"]["name"] == name)]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''}"
    return found[0]


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container.get("env", [])}


BASE = render(KUBE / "base")
EXAMPLE = render(KUBE / "overlays" / "example")


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("variant", ["base", "example"])
def test_every_resource_is_valid_for_the_version_in_strict_mode(variant: str, version: str) -> None:
    import kubernetes_validate

    resources = BASE if variant == "base" else EXAMPLE
    assert {r["kind"] for r in resources} >= {"Deployment", "Service", "PodDisruptionBudget",
                                              "HorizontalPodAutoscaler", "Job", "PersistentVolumeClaim"}
    for resource in resources:
        kubernetes_validate.validate(resource, version, strict=True)  # raises on any error


def test_validation_catches_a_wrong_field() -> None:
    """The check above can fail: a misspelt field and a wrong type are refused."""
    import kubernetes_validate

    deployment = copy.deepcopy(_one(BASE, "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, "1.37", strict=True)
    deployment = copy.deepcopy(_one(BASE, "Deployment"))
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, "1.37", strict=True)


def test_the_base_lists_every_manifest_of_its_folder() -> None:
    listed = set(yaml.safe_load((KUBE / "base" / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in (KUBE / "base").glob("*.yaml")} - {"kustomization.yaml"}


def test_ports_and_probes_match_the_server() -> None:
    from tlserve.server.assembly import LIVENESS_SERVICE
    from tlserve.server.settings import ServerSettings

    deployment = _one(BASE, "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = _env(container)
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports["grpc"] == int(env["TLSERVE_PORT"]) == ServerSettings().port
    assert ports["metrics"] == int(env["TLSERVE_METRICS_PORT"]) == ServerSettings().metrics_port
    assert ports["http"] == int(env["TLSERVE_HTTP_PORT"]) == ServerSettings().http_port
    assert env["TLSERVE_HOST"] == env["TLSERVE_METRICS_HOST"] == "0.0.0.0"  # reachable from outside the pod
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == ports["grpc"]
    assert container["startupProbe"]["grpc"]["service"] == container["readinessProbe"]["grpc"]["service"] == ""
    assert container["livenessProbe"]["grpc"]["service"] == LIVENESS_SERVICE
    for name in env:  # every variable is a server setting
        assert name.removeprefix("TLSERVE_").lower() in ServerSettings.__dataclass_fields__, name


def test_services_select_the_pods_and_name_their_ports() -> None:
    deployment = _one(BASE, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    port_names = {p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for service in (r for r in BASE if r["kind"] == "Service"):
        assert service["spec"]["selector"].items() <= labels.items(), service["metadata"]["name"]
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    assert _one(BASE, "Service", "tlserve-headless")["spec"]["clusterIP"] == "None"
    assert _one(BASE, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert _one(BASE, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]


def test_the_grace_period_covers_the_pre_stop_wait_and_the_drain() -> None:
    pod = _one(BASE, "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    drain = float(_env(container)["TLSERVE_GRACE_SECONDS"])
    assert pod["terminationGracePeriodSeconds"] >= float(command[1]) + drain + 10  # + batchers and exit


def test_images_and_user_match_the_dockerfiles_and_compose() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    images = {Path(service["build"]["dockerfile"]).name: service["image"].split(":")[0]
              for service in compose["services"].values() if "build" in service}
    uids = {name: int(re.search(r"useradd[^\n]*--uid (\d+)", (ROOT / "docker" / name).read_text()).group(1))
            for name in images}
    expected = {"Deployment": "server.Dockerfile", "Job": "trainer.Dockerfile"}
    for resource in BASE:
        if resource["kind"] not in expected:
            continue
        dockerfile = expected[resource["kind"]]
        pod = resource["spec"]["template"]["spec"]
        assert pod["containers"][0]["image"].split(":")[0] == images[dockerfile]
        assert pod["securityContext"]["runAsUser"] == uids[dockerfile]
        assert pod["securityContext"]["runAsNonRoot"] is True
        security = pod["containers"][0]["securityContext"]
        assert security["readOnlyRootFilesystem"] and security["capabilities"]["drop"] == ["ALL"]
        assert security["allowPrivilegeEscalation"] is False
        mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        assert "/tmp" in mounts  # the one writable path besides the repository


def test_the_model_repository_is_read_only_for_servers_and_written_by_the_job() -> None:
    server = _one(BASE, "Deployment")["spec"]["template"]["spec"]
    job = _one(BASE, "Job")["spec"]["template"]["spec"]
    claim = _one(BASE, "PersistentVolumeClaim")["metadata"]["name"]
    models = next(v for v in server["volumes"] if v["name"] == "models")
    assert models["persistentVolumeClaim"] == {"claimName": claim, "readOnly": True}
    mount = next(m for m in server["containers"][0]["volumeMounts"] if m["name"] == "models")
    assert mount["readOnly"] and mount["mountPath"] == _env(server["containers"][0])["TLSERVE_REPOSITORY"]
    job_mount = next(m for m in job["containers"][0]["volumeMounts"] if m["name"] == "models")
    assert not job_mount.get("readOnly") and job_mount["mountPath"] == _env(job["containers"][0])["TLSERVE_REPOSITORY"]


def test_the_overlay_pins_images_replicas_namespace_and_scales_on_queue_time() -> None:
    deployment = _one(EXAMPLE, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == \
        "registry.example.com/tlserve-server:0.1.0"
    assert {r["metadata"].get("namespace") for r in EXAMPLE if r["kind"] in NAMESPACED} == {"tlserve-example"}
    metrics = _one(EXAMPLE, "HorizontalPodAutoscaler")["spec"]["metrics"]
    assert {m["type"] for m in metrics} == {"Resource", "Pods"}
    from tlserve.server.core import metrics as server_metrics

    queue_metric = next(m for m in metrics if m["type"] == "Pods")["pods"]["metric"]["name"]
    assert queue_metric.startswith(server_metrics.QUEUE_SECONDS._name)  # a series the server exports


def test_the_kserve_example_runs_the_server_image_on_its_h2c_port() -> None:
    service = _documents(KUBE / "kserve" / "inferenceservice.yaml")[0]
    assert service["apiVersion"] == "serving.kserve.io/v1beta1" and service["kind"] == "InferenceService"
    container = service["spec"]["predictor"]["containers"][0]
    assert container["image"].split(":")[0] == _one(BASE, "Deployment")["spec"]["template"]["spec"]["containers"][0][
        "image"].split(":")[0]
    port = next(p for p in container["ports"] if p["name"] == "h2c")["containerPort"]
    assert int(_env(container)["TLSERVE_PORT"]) == port == container["readinessProbe"]["grpc"]["port"]
    # The container is a core v1 Container: validate it as one inside a Pod.
    import kubernetes_validate

    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "kserve-check"},
           "spec": {"containers": [container], "volumes": service["spec"]["predictor"]["volumes"]}}
    kubernetes_validate.validate(pod, "1.37", strict=True)


def test_the_liveness_service_answers_serving(server: ServerProcess) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from tlserve.server.assembly import LIVENESS_SERVICE

    with grpc.insecure_channel(server.target) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=LIVENESS_SERVICE),
                                                           timeout=10)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
