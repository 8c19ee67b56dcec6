"""The cluster deployment files validate offline, the way their tools will check them.

KubeRay manifests against the real CRD schemas with kubectl's strict field validation, the AWS
launcher config through Ray's own validator, the MLflow manifests against what the Ray Pods and
the README expect of them; deliberately broken copies must be refused.
"""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml
from cluster_schema import (
    CrdValidators,
    check_launcher_config,
    check_no_credentials,
    crd_validators,
    credential_findings,
    load_documents,
    strict_schema,
)
from mlflow.cli import server as mlflow_server_command
from mlflow.server.security_utils import get_default_allowed_hosts, is_allowed_host_header

import ntng_ray
from ntng_ray.errors import NtngError

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
AWS = CLUSTER / "aws.yaml"
KUBERAY = CLUSTER / "kuberay"
RAY_KINDS = ("RayCluster", "RayJob")
WHEEL = f"ntng_ray-{ntng_ray.__version__}-py3-none-any.whl"
# Ray's image for the Ray the project pins, on the project's Python.
RAY_IMAGE = f"rayproject/ray:{ray.__version__}-py311"


def cluster_documents() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in sorted(CLUSTER.rglob("*.yaml")) for doc in load_documents(path)]


def ray_manifests() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path, doc in cluster_documents() if doc.get("kind") in RAY_KINDS]


def only(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        doc
        for _, doc in cluster_documents()
        if doc.get("kind") == kind and name in (None, doc["metadata"]["name"])
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''} under cluster/, found {len(found)}"
    return found[0]


def cluster_spec(doc: dict[str, Any]) -> dict[str, Any]:
    """The RayCluster spec of a RayCluster, or the one a RayJob creates."""
    return doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]


def pod_specs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = cluster_spec(doc)
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [group["template"]["spec"] for group in groups]


@pytest.fixture
def crds(shared_data: Path) -> CrdValidators:
    return crd_validators(shared_data / "kuberay-crds")


# --- KubeRay: the real manifests ------------------------------------------------------------


def test_cluster_folder_has_a_raycluster_and_a_rayjob() -> None:
    kinds = sorted(doc["kind"] for _, doc in ray_manifests())
    assert kinds == ["RayCluster", "RayJob"]


RAY_MANIFESTS = {f"{path.name}:{doc['kind']}": doc for path, doc in ray_manifests()}


@pytest.mark.parametrize("name", RAY_MANIFESTS)
def test_ray_manifest_validates_strictly(crds: CrdValidators, name: str) -> None:
    assert crds.errors(RAY_MANIFESTS[name]) == []


@pytest.mark.parametrize("name", RAY_MANIFESTS)
def test_ray_manifest_has_a_gpu_worker_group(name: str) -> None:
    """Requests and limits of nvidia.com/gpu, equal (Kubernetes refuses extended resources that
    are overcommitted), in a worker group."""
    doc = RAY_MANIFESTS[name]
    gpu_groups = []
    for group in cluster_spec(doc)["workerGroupSpecs"]:
        for container in group["template"]["spec"]["containers"]:
            requests = container["resources"].get("requests", {})
            limits = container["resources"].get("limits", {})
            if "nvidia.com/gpu" in limits:
                assert requests.get("nvidia.com/gpu") == limits["nvidia.com/gpu"]
                assert int(limits["nvidia.com/gpu"]) >= 1
                assert {"cpu", "memory"} <= set(requests) & set(limits)
                gpu_groups.append(group["groupName"])
    assert gpu_groups, f"{name}: no worker group requests nvidia.com/gpu"


def test_rayjob_creates_the_raycluster() -> None:
    """The two manifests describe one cluster; this keeps the copy in rayjob.yaml from drifting."""
    raycluster, rayjob = only("RayCluster"), only("RayJob")
    assert rayjob["spec"]["rayClusterSpec"] == raycluster["spec"]
    assert rayjob["metadata"]["annotations"] == raycluster["metadata"]["annotations"]


def test_ray_pods_install_torch_then_the_pinned_project_then_start_ray() -> None:
    for _, doc in ray_manifests():
        for pod in pod_specs(doc):
            container = pod["containers"][0]
            script = " ".join(container["args"])
            torch_at = script.index("pip install torch==2.13.0")
            wheel_at = script.index(f"pip install /opt/ntng/{WHEEL}")
            assert torch_at < wheel_at < script.index("$KUBERAY_GEN_RAY_START_CMD")
            assert container["image"].startswith(RAY_IMAGE)
        assert doc["metadata"]["annotations"]["ray.io/overwrite-container-cmd"] == "true"
        assert cluster_spec(doc)["rayVersion"] == ray.__version__


def test_ray_pods_mount_the_shared_volume_configmap_and_reach_mlflow() -> None:
    shared_pvc = only("PersistentVolumeClaim", "ntng-shared")
    assert shared_pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    service = only("Service", "mlflow")
    port = service["spec"]["ports"][0]["port"]
    for _, doc in ray_manifests():
        for pod in pod_specs(doc):
            volumes = {v["name"]: v for v in pod["volumes"]}
            mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
            shared_mount = next(
                mounts[name]
                for name, volume in volumes.items()
                if volume.get("persistentVolumeClaim", {}).get("claimName") == "ntng-shared"
            )
            assert mounts["ntng"] == "/opt/ntng"
            assert volumes["ntng"]["configMap"]["name"] == "ntng-ray"
            env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
            assert env["MLFLOW_TRACKING_URI"] == f"http://{service['metadata']['name']}:{port}"
            assert env["NTNG_CACHE_DIR"].startswith(shared_mount + "/")
    rayjob = only("RayJob")["spec"]["entrypoint"].split()
    assert rayjob[:3] == ["ntng", "sweep", "/opt/ntng/debug.yaml"]
    assert "storage_path=/mnt/shared/ray" in rayjob and "output_dir=/mnt/shared/sweeps" in rayjob


# --- KubeRay: broken copies are refused -------------------------------------------------------


def _set(doc: dict, path: str, value: Any) -> None:
    """Set ``a.b[0].c`` in ``doc``."""
    parts = [int(p) if p.isdigit() else p for p in re.findall(r"[^.\[\]]+", path)]
    node: Any = doc
    for part in parts[:-1]:
        node = node[part]
    node[parts[-1]] = value


def _rename(doc: dict, path: str, new_key: str) -> None:
    parent, _, key = path.rpartition(".")
    node: Any = doc
    for part in [int(p) if p.isdigit() else p for p in re.findall(r"[^.\[\]]+", parent)]:
        node = node[part]
    node[new_key] = node.pop(key)


WORKER = "spec.workerGroupSpecs[0]"
WORKER_CONTAINER = f"{WORKER}.template.spec.containers[0]"
BROKEN_RAYCLUSTERS = {
    "replicas as a string": (
        lambda d: _set(d, f"{WORKER}.replicas", "2"),
        "spec.workerGroupSpecs[0].replicas: '2' is not of type 'integer'",
    ),
    "misspelled worker group field": (
        lambda d: _rename(d, f"{WORKER}.maxReplicas", "maxReplica"),
        "spec.workerGroupSpecs[0]: unknown field(s) ['maxReplica']",
    ),
    "misspelled container field, deep in the pod template": (
        lambda d: _rename(d, f"{WORKER_CONTAINER}.resources.limits", "limit"),
        "resources: unknown field(s) ['limit']; allowed here: claims, limits, requests",
    ),
    "a float quantity (int-or-string)": (
        lambda d: _set(d, f"{WORKER_CONTAINER}.resources.limits.cpu", 1.5),
        "resources.limits.cpu = 1.5: must be an integer or a string",
    ),
    "misspelled top-level spec field": (
        lambda d: _rename(d, "spec.enableInTreeAutoscaling", "enableAutoscaling"),
        "spec: unknown field(s) ['enableAutoscaling']",
    ),
    "an enum value out of range": (
        lambda d: _set(d, "spec.authOptions.mode", "password"),
        "spec.authOptions.mode: 'password' is not one of ['disabled', 'token']",
    ),
    "a required field missing": (
        lambda d: d["spec"]["workerGroupSpecs"][0].pop("groupName"),
        "spec.workerGroupSpecs[0]: 'groupName' is a required property",
    ),
    "misspelled metadata field": (
        lambda d: _rename(d, "metadata.labels", "label"),
        "metadata: unknown field(s) ['label']",
    ),
    "a label value that is not a string": (
        lambda d: _set(d, "metadata.labels.gpu", True),
        "metadata.labels.gpu: True is not of type 'string'",
    ),
    "an uppercase name (not a DNS-1035 label)": (
        lambda d: _set(d, "metadata.name", "NTNG"),
        "metadata.name = 'NTNG': KubeRay needs a DNS-1035 label",
    ),
    "a name longer than KubeRay allows": (
        lambda d: _set(d, "metadata.name", "n" * 54),
        "of at most 53 characters",
    ),
    "a server-filled metadata field": (
        lambda d: _set(d, "metadata.uid", "1234"),
        "metadata: unknown field(s) ['uid']",
    ),
    "an unknown apiVersion": (
        lambda d: _set(d, "apiVersion", "ray.io/v2"),
        "apiVersion/kind 'ray.io/v2'/'RayCluster' is not one of",
    ),
    "the deprecated v1alpha1 API": (
        lambda d: _set(d, "apiVersion", "ray.io/v1alpha1"),
        "apiVersion 'ray.io/v1alpha1' of RayCluster is deprecated",
    ),
}


@pytest.mark.parametrize("case", BROKEN_RAYCLUSTERS, ids=list(BROKEN_RAYCLUSTERS))
def test_broken_raycluster_is_refused(crds: CrdValidators, case: str) -> None:
    doc = copy.deepcopy(only("RayCluster"))
    breaker, expected = BROKEN_RAYCLUSTERS[case]
    breaker(doc)
    errors = crds.errors(doc)
    assert any(expected in error for error in errors), errors
    with pytest.raises(NtngError, match="RayCluster"):
        crds.check(doc, "raycluster.yaml")


@pytest.mark.parametrize(
    ("breaker", "expected"),
    [
        (lambda d: _rename(d, "spec.entrypoint", "entryPoint"), "spec: unknown field(s)"),
        (lambda d: _set(d, "spec.backoffLimit", "0"), "'0' is not of type 'integer'"),
        (lambda d: _set(d, "metadata.name", "j" * 48), "of at most 47 characters"),
        (lambda d: _set(d, "kind", "RayJobs"), "is not one of"),
        (
            lambda d: _rename(d, "spec.rayClusterSpec.workerGroupSpecs[0].replicas", "replica"),
            "spec.rayClusterSpec.workerGroupSpecs[0]: unknown field(s) ['replica']",
        ),
    ],
    ids=["misspelled", "wrong type", "name too long", "wrong kind", "nested cluster spec"],
)
def test_broken_rayjob_is_refused(crds: CrdValidators, breaker: Any, expected: str) -> None:
    doc = copy.deepcopy(only("RayJob"))
    breaker(doc)
    errors = crds.errors(doc)
    assert any(expected in error for error in errors), errors


def test_repeated_yaml_key_is_refused(tmp_path: Path) -> None:
    """PyYAML keeps the last of two equal keys; kubectl's strict decoding refuses them."""
    text = (KUBERAY / "raycluster.yaml").read_text()
    broken = tmp_path / "dup.yaml"
    broken.write_text(text.replace("  rayVersion:", "  rayVersion: '2.0.0'\n  rayVersion:", 1))
    with pytest.raises(NtngError, match="duplicate key 'rayVersion'"):
        load_documents(broken)


# --- the strict schema itself, on small schemas -----------------------------------------------


def _validator(schema: dict) -> CrdValidators:
    crd = {
        "spec": {
            "group": "example.com",
            "names": {"kind": "Thing"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {"spec": schema},
                        }
                    },
                }
            ],
        }
    }
    return CrdValidators([crd])


def _thing(spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "example.com/v1",
        "kind": "Thing",
        "metadata": {"name": "t"},
        "spec": spec,
    }


def test_preserve_unknown_fields_keeps_the_object_open() -> None:
    crds = _validator(
        {
            "type": "object",
            "properties": {
                "open": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                "closed": {"type": "object", "properties": {"a": {"type": "string"}}},
                "bare": {"type": "object"},
            },
        }
    )
    assert crds.errors(_thing({"open": {"anything": 1}, "closed": {"a": "x"}, "bare": {}})) == []
    assert crds.errors(_thing({"closed": {"b": 1}})) == [
        "spec.closed: unknown field(s) ['b']; allowed here: a"
    ]
    # An object that declares nothing keeps nothing (the server would prune it).
    assert crds.errors(_thing({"bare": {"x": 1}})) == [
        "spec.bare: unknown field(s) ['x']; allowed here: no fields"
    ]


def test_embedded_resource_accepts_type_and_object_metadata_only() -> None:
    crds = _validator(
        {
            "type": "object",
            "x-kubernetes-embedded-resource": True,
            "properties": {"size": {"type": "integer"}},
        }
    )
    embedded = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "size": 1}
    assert crds.errors(_thing(embedded)) == []
    errors = crds.errors(_thing({**embedded, "extra": 1}))
    assert errors == [
        "spec: unknown field(s) ['extra']; allowed here: apiVersion, kind, metadata, size"
    ]


@pytest.mark.parametrize(
    ("value", "ok"), [(1, True), ("500m", True), (1.5, False), (True, False), (None, False)]
)
def test_int_or_string(value: Any, ok: bool) -> None:
    crds = _validator({"type": "object", "properties": {"q": {"x-kubernetes-int-or-string": True}}})
    assert (crds.errors(_thing({"q": value})) == []) is ok


def test_nullable_admits_null_only_where_declared() -> None:
    crds = _validator(
        {
            "type": "object",
            "properties": {
                "maybe": {"type": "string", "nullable": True},
                "never": {"type": "string"},
            },
        }
    )
    assert crds.errors(_thing({"maybe": None})) == []
    assert crds.errors(_thing({"never": None})) == ["spec.never: None is not of type 'string'"]


def test_strict_schema_leaves_the_input_alone() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "object", "properties": {}}}}
    before = copy.deepcopy(schema)
    strict_schema(schema)
    assert schema == before


# --- AWS cluster launcher ---------------------------------------------------------------------


def aws_config() -> dict[str, Any]:
    (doc,) = load_documents(AWS)
    return doc


def test_aws_config_passes_rays_prepare_and_validate() -> None:
    prepared = check_launcher_config(AWS)
    types = prepared["available_node_types"]
    head = prepared["head_node_type"]
    assert types[head]["max_workers"] == 0
    workers = {name: t for name, t in types.items() if name != head}
    assert workers and all(t["resources"]["GPU"] >= 1 for t in workers.values())
    assert all(0 <= t["min_workers"] <= t["max_workers"] for t in workers.values())
    assert sum(t["min_workers"] for t in workers.values()) <= prepared["max_workers"]
    assert prepared["provider"]["type"] == "aws"


def test_aws_nodes_install_torch_then_the_pinned_project() -> None:
    prepared = check_launcher_config(AWS)
    mounts = {remote: local for remote, local in prepared["file_mounts"].items()}
    for commands in (prepared["head_setup_commands"], prepared["worker_setup_commands"]):
        torch_at = commands.index("pip install torch==2.13.0")
        wheel = next(i for i, c in enumerate(commands) if WHEEL in c)
        assert torch_at < wheel
        wheel_dir = shlex.split(commands[wheel])[-1].rsplit("/", 1)[0]
        assert mounts[wheel_dir] == "./dist"
    assert prepared["docker"]["image"].startswith(RAY_IMAGE)
    assert "--volume=/mnt/ntng:/mnt/ntng" in prepared["docker"]["run_options"]


def test_aws_worker_types_mount_the_heads_shared_folder() -> None:
    config = aws_config()
    head_exports = " ".join(config["initialization_commands"])
    assert "/srv/ntng" in head_exports and "mount --bind /srv/ntng /mnt/ntng" in head_exports
    for name, node_type in config["available_node_types"].items():
        if name == config["head_node_type"]:
            continue
        commands = " ".join(node_type["initialization_commands"])
        assert "mount -t nfs4 $RAY_HEAD_IP:/srv/ntng /mnt/ntng" in commands


def test_aws_head_runs_mlflow_on_the_shared_disk_for_the_vpc() -> None:
    """The head's MLflow server: real `mlflow server` flags, its store on the shared folder, and
    MLflow's default Host check admits the private address the workers use."""
    config = aws_config()
    (command,) = [c for c in config["head_start_ray_commands"] if "mlflow server" in c]
    argv = shlex.split(command.split(">>")[0])
    assert argv[:3] == ["nohup", "mlflow", "server"]
    params = mlflow_server_command.make_context("mlflow server", argv[3:]).params
    assert params["backend_store_uri"] == "sqlite:////mnt/ntng/mlflow/mlflow.db"
    assert params["host"] == "0.0.0.0" and params["allowed_hosts"] is None
    assert is_allowed_host_header(get_default_allowed_hosts(), f"172.31.7.9:{params['port']}")
    exported = " ".join(config["head_setup_commands"])
    assert f'MLFLOW_TRACKING_URI=http://$(hostname -I | cut -d " " -f 1):{params["port"]}' in (
        exported
    )


BROKEN_AWS = {
    "misspelled top-level key": (
        lambda c: c.__setitem__("setup_comands", c.pop("setup_commands")),
        "(top level): unknown field(s) ['setup_comands']; allowed here: auth, available_node_types",
    ),
    "wrong type": (lambda c: c.__setitem__("max_workers", "ten"), "'ten' is not of type"),
    "misspelled node-type field": (
        lambda c: c["available_node_types"]["gpu_a10g"].__setitem__("min_worker", 1),
        "available_node_types.gpu_a10g: unknown field(s) ['min_worker']",
    ),
    "more minimum workers than the cluster may hold": (
        lambda c: c.__setitem__("max_workers", 0),
        "smaller than the sum of `min_workers`",
    ),
    "head type not among the node types": (
        lambda c: c.__setitem__("head_node_type", "ray.head.default"),
        "`head_node_type` must be one of `available_node_types`",
    ),
}


@pytest.mark.parametrize("case", BROKEN_AWS, ids=list(BROKEN_AWS))
def test_broken_aws_config_is_refused(tmp_path: Path, case: str) -> None:
    config = aws_config()
    breaker, expected = BROKEN_AWS[case]
    breaker(config)
    broken = tmp_path / "aws.yaml"
    broken.write_text(yaml.safe_dump(config))
    with pytest.raises(NtngError) as raised:
        check_launcher_config(broken)
    assert expected in str(raised.value)


# --- credentials --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(CLUSTER.rglob("*.yaml")), ids=lambda p: p.name)
def test_cluster_files_hold_no_credentials(path: Path) -> None:
    for doc in load_documents(path):
        assert list(credential_findings(doc)) == []
        check_no_credentials(doc, str(path))


@pytest.mark.parametrize(
    ("where", "value", "expected"),
    [
        ("provider.aws_access_key_id", "x", "provider.aws_access_key_id: a setting named like"),
        ("provider.aws_secret_access_key", "x", "named like a credential"),
        ("auth.ssh_private_key", "~/.ssh/key.pem", "auth.ssh_private_key: a setting named like"),
        ("setup_commands", ["export AWS_SECRET_ACCESS_KEY=abc"], "setup_commands[0]: holds a cred"),
        ("setup_commands", ["echo AKIAABCDEFGHIJKLMNOP"], "holds an AWS access key id"),
        ("setup_commands", ["pip install https://u:pw@host/x.whl"], "holds a URL with a password"),
        ("head_setup_commands", ["-----BEGIN RSA PRIVATE KEY-----"], "holds a PEM private key"),
    ],
)
def test_credentials_in_the_aws_config_are_found(where: str, value: Any, expected: str) -> None:
    config = aws_config()
    section, _, key = where.partition(".")
    if key:
        config.setdefault(section, {})[key] = value
    else:
        config[section] = value
    findings = list(credential_findings(config))
    assert any(expected in finding for finding in findings), findings
    with pytest.raises(NtngError, match="holds credentials"):
        check_no_credentials(config, "aws.yaml")


def test_a_credential_passes_rays_schema_but_not_the_check(tmp_path: Path) -> None:
    """Ray's schema leaves `provider` open, so only the credential scan stops this one."""
    config = aws_config()
    config["provider"]["aws_secret_access_key"] = "not-a-real-key"
    broken = tmp_path / "aws.yaml"
    broken.write_text(yaml.safe_dump(config))
    with pytest.raises(NtngError, match=r"provider\.aws_secret_access_key"):
        check_launcher_config(broken)


# --- MLflow server on Kubernetes -----------------------------------------------------------------


def mlflow_args() -> dict[str, Any]:
    container = only("Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["mlflow", "server"]
    context = mlflow_server_command.make_context("mlflow server", list(container["args"]))
    return context.params


def test_mlflow_deployment_is_one_sqlite_writer_on_its_volume() -> None:
    deployment = only("Deployment", "mlflow")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    pod = deployment["spec"]["template"]["spec"]
    mount = pod["containers"][0]["volumeMounts"][0]["mountPath"]
    claim = pod["volumes"][0]["persistentVolumeClaim"]["claimName"]
    assert only("PersistentVolumeClaim", claim)["spec"]["accessModes"] == ["ReadWriteOnce"]
    params = mlflow_args()
    assert params["backend_store_uri"] == f"sqlite:///{mount}/mlflow.db"
    assert params["artifacts_destination"].startswith(mount + "/")
    assert params["serve_artifacts"] and params["workers"] == "1"


def test_mlflow_service_routes_to_the_server_port() -> None:
    deployment = only("Deployment", "mlflow")
    service = only("Service", "mlflow")
    pod = deployment["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert deployment["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    ports = {p["name"]: p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]}
    service_port = service["spec"]["ports"][0]
    assert ports[service_port["targetPort"]] == mlflow_args()["port"] == service_port["port"]


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("mlflow:5000", True),  # the Ray Pods' MLFLOW_TRACKING_URI
        ("mlflow.ntng.svc.cluster.local:5000", True),
        ("localhost:5000", True),  # kubectl port-forward
        ("127.0.0.1:5000", True),
        ("mlflow.attacker.example:5000", False),
        ("evil.example:5000", False),
    ],
)
def test_mlflow_accepts_the_hosts_clients_use(host: str, allowed: bool) -> None:
    """MLflow's own Host-header check, with the manifest's --allowed-hosts."""
    hosts = [h.strip() for h in mlflow_args()["allowed_hosts"].split(",")]
    assert is_allowed_host_header(hosts, host) is allowed


# --- README ---------------------------------------------------------------------------------


def test_readme_commands_use_the_manifests_names() -> None:
    readme = (CLUSTER / "README.md").read_text()
    raycluster = only("RayCluster")["metadata"]["name"]
    assert f"service/{raycluster}-head-svc 8265:8265" in readme
    assert "service/mlflow 5000:5000" in readme
    assert f"kubectl create configmap ntng-ray --from-file=dist/{WHEEL}" in readme
    for path in sorted(KUBERAY.glob("*.yaml")):
        assert f"kubectl apply -f cluster/kuberay/{path.name}" in readme
    assert "ray up -y cluster/aws.yaml" in readme
    assert "ray get-auth-token" in readme
