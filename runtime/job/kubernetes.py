"""``KubernetesJob``: attach to host-agent pods found by label, and their manifests.

Needs the official ``kubernetes`` client (``pip install 'monarch-idl[k8s]'``), imported on use.
NOT run against a real cluster here (none is available): the manifests and the pod discovery
are tested against the client's model objects only.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from ._trait import JobError, JobTrait, validate_meshes

__all__ = ["DEFAULT_PORT", "KubernetesJob", "agent_manifests", "pod_addresses"]

DEFAULT_PORT = 26600
RANK_LABEL = "apps.kubernetes.io/pod-index"
MESH_LABEL = "monarch.pytorch.org/mesh"


def _k8s() -> Any:
    try:
        import kubernetes
    except ImportError:
        raise JobError(
            "KubernetesJob needs the kubernetes client: pip install 'monarch-idl[k8s]' (or 'kubernetes>=29')"
        ) from None
    return kubernetes


def pod_addresses(pods: list[Any], replicas: int, port: int = DEFAULT_PORT) -> list[str] | None:
    """Agent addresses of ready pods in rank order (the StatefulSet pod index label), or None
    while fewer than ``replicas`` ranks are ready.

    Args:
        pods: ``V1Pod`` objects (``list_namespaced_pod(...).items``).
        replicas: the ranks wanted (0 .. replicas-1).
        port: the agents' port.
    """
    by_rank: dict[int, str] = {}
    for pod in pods:
        labels = pod.metadata.labels or {}
        try:
            rank = int(labels[RANK_LABEL])
        except (KeyError, ValueError):
            continue
        if not 0 <= rank < replicas or pod.metadata.deletion_timestamp is not None:
            continue
        conds = (pod.status.conditions if pod.status is not None else None) or []
        ready = any(c.type == "Ready" and c.status == "True" for c in conds)
        if ready and pod.status.pod_ip:
            by_rank[rank] = f"tcp://{pod.status.pod_ip}:{port}"
    if len(by_rank) < replicas:
        return None
    return [by_rank[r] for r in range(replicas)]


def agent_manifests(
    name: str,
    replicas: int,
    image: str,
    *,
    namespace: str = "default",
    port: int = DEFAULT_PORT,
    token_secret: str = "monarch-cluster-token",
    gpus_per_pod: int | None = None,
    python_exe: str = "python3",
) -> list[dict[str, Any]]:
    """The headless Service and StatefulSet of ``replicas`` host-agent pods for mesh ``name``.

    Each pod runs ``python -m monarch.job._agent --listen tcp://0.0.0.0:PORT --advertise
    $(POD_IP)``, with ``MONARCH_CLUSTER_TOKEN`` from the Secret ``token_secret`` (key
    ``token``; create it with ``kubectl create secret generic NAME --from-literal=token=...``),
    and carries the labels :class:`KubernetesJob` selects by.

    Args:
        name: the mesh (and StatefulSet/Service) name, an RFC 1123 label.
        replicas: the number of hosts (pods), positive.
        image: a container image with monarch-idl installed.
        namespace: the Kubernetes namespace.
        port: the agents' port.
        token_secret: the Secret holding the cluster token.
        gpus_per_pod: ``nvidia.com/gpu`` limit per pod; None: none.
        python_exe: the interpreter in the image.

    Returns:
        The two objects as JSON-ready dicts (``kubectl apply -f`` takes them as JSON).

    Raises:
        ValueError: a bad name or a non-positive count.
        JobError: the kubernetes client is not installed.
    """
    import re

    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", name):
        raise ValueError(f"{name!r} is not an RFC 1123 label (lower case letters, digits, '-')")
    if replicas <= 0:
        raise ValueError(f"replicas must be positive, got {replicas}")
    m = _k8s().client
    labels = {"app.kubernetes.io/name": "monarch-agent", MESH_LABEL: name}
    env = [
        m.V1EnvVar(
            name="POD_IP",
            value_from=m.V1EnvVarSource(
                field_ref=m.V1ObjectFieldSelector(field_path="status.podIP")
            ),
        ),
        m.V1EnvVar(
            name="MONARCH_CLUSTER_TOKEN",
            value_from=m.V1EnvVarSource(
                secret_key_ref=m.V1SecretKeySelector(name=token_secret, key="token")
            ),
        ),
    ]
    container = m.V1Container(
        name="agent",
        image=image,
        command=[
            python_exe,
            "-m",
            "monarch.job._agent",
            "--listen",
            f"tcp://0.0.0.0:{port}",
            "--advertise",
            "$(POD_IP)",
        ],
        env=env,
        ports=[m.V1ContainerPort(container_port=port, name="monarch")],
        readiness_probe=m.V1Probe(tcp_socket=m.V1TCPSocketAction(port=port), period_seconds=2),
        resources=m.V1ResourceRequirements(limits={"nvidia.com/gpu": str(gpus_per_pod)})
        if gpus_per_pod
        else None,
    )
    service = m.V1Service(
        api_version="v1",
        kind="Service",
        metadata=m.V1ObjectMeta(name=name, namespace=namespace, labels=labels),
        spec=m.V1ServiceSpec(
            cluster_ip="None", selector=labels, ports=[m.V1ServicePort(name="monarch", port=port)]
        ),
    )
    sts = m.V1StatefulSet(
        api_version="apps/v1",
        kind="StatefulSet",
        metadata=m.V1ObjectMeta(name=name, namespace=namespace, labels=labels),
        spec=m.V1StatefulSetSpec(
            service_name=name,
            replicas=replicas,
            pod_management_policy="Parallel",
            selector=m.V1LabelSelector(match_labels=labels),
            template=m.V1PodTemplateSpec(
                metadata=m.V1ObjectMeta(labels=labels), spec=m.V1PodSpec(containers=[container])
            ),
        ),
    )
    api = _k8s().client.ApiClient()
    return [api.sanitize_for_serialization(service), api.sanitize_for_serialization(sts)]


class KubernetesJob(JobTrait):
    """Attaches to host-agent pods already running (e.g. from :func:`agent_manifests` /
    ``monarch job k8s-manifest``), found by label selector; it launches nothing and
    :meth:`kill` only detaches (delete the StatefulSet to stop the pods).

    Args:
        namespace: the Kubernetes namespace.
        meshes: mesh name -> replicas; the pods of mesh M are selected by
            ``app.kubernetes.io/name=monarch-agent,monarch.pytorch.org/mesh=M`` unless
            ``label_selectors`` names another selector for it.
        label_selectors: mesh name -> label selector.
        port: the agents' port.
        kubeconfig: a kubeconfig file; None: in-cluster config, else ``~/.kube/config``.
        timeout_s: bound on waiting for every pod to be ready.

    Raises:
        ValueError: a bad mesh spec, or a selector for a mesh that is not in ``meshes``.
    """

    def __init__(
        self,
        namespace: str,
        meshes: Mapping[str, int],
        *,
        label_selectors: Mapping[str, str] | None = None,
        port: int = DEFAULT_PORT,
        kubeconfig: str | None = None,
        timeout_s: float = 300.0,
    ) -> None:
        super().__init__()
        self._namespace = namespace
        self._meshes = validate_meshes(meshes)
        unknown = set(label_selectors or {}) - set(self._meshes)
        if unknown:
            raise ValueError(
                f"label_selectors for unknown meshes: {sorted(unknown)}; meshes: {sorted(self._meshes)}"
            )
        self._selectors = {
            m: (label_selectors or {}).get(
                m, f"app.kubernetes.io/name=monarch-agent,{MESH_LABEL}={m}"
            )
            for m in self._meshes
        }
        self._port = port
        self._kubeconfig = kubeconfig
        self._timeout_s = timeout_s

    def _spec(self) -> dict[str, Any]:
        return {"kind": "k8s", "namespace": self._namespace, "meshes": self._meshes, "selectors": self._selectors, "port": self._port}  # fmt: skip

    def _api(self) -> Any:
        k = _k8s()
        if self._kubeconfig is not None:
            k.config.load_kube_config(config_file=self._kubeconfig)
        else:
            try:
                k.config.load_incluster_config()
            except k.config.ConfigException:
                k.config.load_kube_config()
        return k.client.CoreV1Api()

    def _launch(self) -> None:
        api = self._api()
        deadline = time.monotonic() + self._timeout_s
        out: dict[str, list[str]] = {}
        for mesh, replicas in self._meshes.items():
            while True:
                pods = api.list_namespaced_pod(
                    self._namespace, label_selector=self._selectors[mesh]
                ).items
                addrs = pod_addresses(pods, replicas, self._port)
                if addrs is not None:
                    out[mesh] = addrs
                    break
                if time.monotonic() > deadline:
                    raise JobError(
                        f"KubernetesJob: mesh {mesh!r}: fewer than {replicas} ready pods match {self._selectors[mesh]!r} after {self._timeout_s} s"
                    )
                time.sleep(1.0)  # poll interval of a bounded wait for pods to be ready
        self._addresses = out

    def _alive(self) -> bool:
        return True  # the agents' TCP probe (JobTrait.alive) decides

    def _stop(self) -> None:
        pass
