"""KubernetesJob without a cluster: manifests and pod discovery against the kubernetes client's models."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

kubernetes = pytest.importorskip("kubernetes")
from kubernetes.client import V1ObjectMeta, V1Pod, V1PodCondition, V1PodStatus  # noqa: E402
from monarch.job import JobError, KubernetesJob  # noqa: E402
from monarch.job.kubernetes import MESH_LABEL, RANK_LABEL, agent_manifests, pod_addresses  # noqa: E402


def _pod(rank: int | None, ip: str | None, ready: bool = True, deleting: bool = False) -> V1Pod:
    labels = {"app.kubernetes.io/name": "monarch-agent", MESH_LABEL: "trainers"}
    if rank is not None:
        labels[RANK_LABEL] = str(rank)
    return V1Pod(
        metadata=V1ObjectMeta(
            name=f"trainers-{rank}",
            labels=labels,
            deletion_timestamp="2026-01-01T00:00:00Z" if deleting else None,
        ),
        status=V1PodStatus(
            pod_ip=ip,
            conditions=[V1PodCondition(type="Ready", status="True" if ready else "False")],
        ),
    )


def test_pod_addresses_are_in_rank_order_once_every_rank_is_ready() -> None:
    pods = [_pod(1, "10.0.0.11"), _pod(0, "10.0.0.10"), _pod(None, "10.0.0.99")]
    assert pod_addresses(pods, 2, 26600) == ["tcp://10.0.0.10:26600", "tcp://10.0.0.11:26600"]


@pytest.mark.parametrize(
    "pods",
    [
        [_pod(0, "10.0.0.10"), _pod(1, "10.0.0.11", ready=False)],
        [_pod(0, "10.0.0.10"), _pod(1, None)],
        [_pod(0, "10.0.0.10"), _pod(1, "10.0.0.11", deleting=True)],
        [_pod(0, "10.0.0.10"), _pod(2, "10.0.0.12")],
    ],
)
def test_pod_addresses_wait_while_a_rank_is_missing_or_not_ready(pods: list[V1Pod]) -> None:
    assert pod_addresses(pods, 2) is None


def test_manifests_are_a_headless_service_and_a_statefulset_of_agents() -> None:
    svc, sts = agent_manifests(
        "trainers", 4, "example.com/monarch:1", namespace="ml", gpus_per_pod=8
    )
    assert svc["kind"] == "Service" and svc["spec"]["clusterIP"] == "None"
    assert svc["metadata"]["namespace"] == "ml" and svc["spec"]["ports"][0]["port"] == 26600
    assert (
        sts["kind"] == "StatefulSet"
        and sts["spec"]["replicas"] == 4
        and sts["spec"]["serviceName"] == "trainers"
    )
    pod = sts["spec"]["template"]
    assert pod["metadata"]["labels"][MESH_LABEL] == "trainers"
    assert (
        sts["spec"]["selector"]["matchLabels"]
        == pod["metadata"]["labels"]
        == svc["spec"]["selector"]
    )
    (c,) = pod["spec"]["containers"]
    assert (
        c["command"][:3] == ["python3", "-m", "monarch.job._agent"] and "$(POD_IP)" in c["command"]
    )
    env = {e["name"]: e["valueFrom"] for e in c["env"]}
    assert env["MONARCH_CLUSTER_TOKEN"]["secretKeyRef"] == {
        "name": "monarch-cluster-token",
        "key": "token",
    }
    assert c["resources"]["limits"] == {"nvidia.com/gpu": "8"}
    assert c["readinessProbe"]["tcpSocket"]["port"] == 26600
    json.dumps([svc, sts])  # plain JSON data


def test_cli_k8s_manifest_prints_a_json_list() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "monarch.cli", "job", "k8s-manifest", "--name", "trainers", "--replicas", "2", "--image", "img:1"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    doc = json.loads(out.stdout)
    assert doc["kind"] == "List" and [o["kind"] for o in doc["items"]] == ["Service", "StatefulSet"]


@pytest.mark.parametrize(
    ("name", "replicas", "match"),
    [("Trainers", 1, "RFC 1123"), ("t_x", 1, "RFC 1123"), ("t", 0, "positive")],
)
def test_bad_manifest_input_is_refused(name: str, replicas: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        agent_manifests(name, replicas, "img")


def test_kubernetes_job_refuses_selectors_for_unknown_meshes() -> None:
    with pytest.raises(ValueError, match=r"label_selectors for unknown meshes: \['workers'\]"):
        KubernetesJob("ml", {"trainers": 2}, label_selectors={"workers": "a=b"})


def test_missing_kubernetes_client_gives_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "kubernetes", None)
    with pytest.raises(JobError, match=r"pip install 'monarch-idl\[k8s\]'"):
        agent_manifests("t", 1, "img")
