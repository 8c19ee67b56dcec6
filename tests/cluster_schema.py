"""Offline checks of the cluster deployment files, so a broken one fails here, not on a cluster.

KubeRay manifests are validated against the CRDs' ``openAPIV3Schema`` the way ``kubectl``'s strict
field validation does. A CRD schema is *structural*: a field it does not declare is silently
pruned by the API server, and strict validation turns that pruning into an error. Plain JSON
Schema says nothing about undeclared fields, so ``strict_schema`` writes the rule out
(``additionalProperties: false``) and translates the ``x-kubernetes-*`` extensions that change
what a value may be. ``metadata`` is checked as the ObjectMeta a manifest may set, with the name
rules the KubeRay operator enforces. The cluster-launcher YAML goes through Ray's own
``prepare_config`` + ``validate_config`` (no cloud calls: they only merge the provider's defaults
file and check Ray's schema), and every file is scanned for credentials.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Iterator, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from ntng_ray.errors import NtngError

# Keywords whose values are schemas (or maps / lists of schemas) in the CRDs' OpenAPI v3 subset.
SCHEMA_MAPS = ("properties", "patternProperties")
SCHEMA_LISTS = ("allOf", "anyOf", "oneOf")
SCHEMA_VALUES = ("items", "not", "additionalProperties")
EMBEDDED_FIELDS = {
    "apiVersion": {"type": "string"},
    "kind": {"type": "string"},
    "metadata": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
}

# KubeRay names a cluster's Services and Pods after the resource, so the operator refuses names
# that are not DNS-1035 labels, and shortens the limit by the suffix it appends
# (ray-operator/controllers/ray/utils: MaxRayClusterNameLength 53, MaxRayJobNameLength 47).
DNS1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
NAME_LIMITS = {"RayCluster": 53, "RayJob": 47}
LABEL_KEY = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$"

# Names of settings and shapes of values that mean a secret was written into a file.
CREDENTIAL_KEY = re.compile(
    r"access[_-]?key|secret|token|passw(or)?d|credential|private[_-]?key|api[_-]?key", re.I
)
CREDENTIAL_VALUES = {
    "an AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "a PEM private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "a credential environment variable": re.compile(
        r"\b(AWS_SECRET_ACCESS_KEY|AWS_SESSION_TOKEN|AWS_ACCESS_KEY_ID|RAY_AUTH_TOKEN|HF_TOKEN|"
        r"MLFLOW_TRACKING_PASSWORD|MLFLOW_TRACKING_TOKEN)\s*="
    ),
    "a URL with a password": re.compile(r"://[^/\s:@]+:[^/\s@]+@"),
}


class _UniqueKeyLoader(yaml.CSafeLoader):
    """A YAML loader that refuses a key repeated in one mapping, as strict validation does
    (PyYAML would keep the last value silently, hiding a typo's twin)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise NtngError(f"duplicate key {key!r} at line {key_node.start_mark.line + 1}")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_documents(path: Path) -> list[dict[str, Any]]:
    """The YAML documents of ``path`` (empty ones skipped); each must be a mapping."""
    try:
        docs = list(yaml.load_all(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader))
    except yaml.YAMLError as exc:
        raise NtngError(f"{path} is not valid YAML: {exc}") from None
    except NtngError as exc:
        raise NtngError(f"{path}: {exc}") from None
    for index, doc in enumerate(docs):
        if doc is not None and not isinstance(doc, dict):
            raise NtngError(f"{path}: document {index} is a {type(doc).__name__}, not a mapping")
    return [doc for doc in docs if doc is not None]


# --- KubeRay manifests ------------------------------------------------------------------------


def strict_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a structural schema in which undeclared fields are errors, as under kubectl.

    - an object that declares ``properties`` (or none at all) gets ``additionalProperties:
      false`` unless it already says what extra fields may be, or carries
      ``x-kubernetes-preserve-unknown-fields`` (then anything goes, as on the server);
    - ``x-kubernetes-embedded-resource`` objects also accept ``apiVersion``, ``kind``, ``metadata``;
    - ``x-kubernetes-int-or-string`` without an ``anyOf`` becomes "an integer or a string";
    - ``nullable: true`` admits ``null``.

    Structural schemas keep every field at the node itself (never only inside ``anyOf``), so
    closing the node cannot reject a field declared in a branch.
    """
    node = dict(schema)
    for key in SCHEMA_MAPS:
        if key in node:
            node[key] = {name: strict_schema(sub) for name, sub in node[key].items()}
    for key in SCHEMA_LISTS:
        if key in node:
            node[key] = [strict_schema(sub) for sub in node[key]]
    for key in SCHEMA_VALUES:
        if isinstance(node.get(key), Mapping):
            node[key] = strict_schema(node[key])
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in node:
        node.pop("type", None)
        node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and isinstance(node.get("type"), str):
        node["type"] = [node["type"], "null"]
    if node.get("x-kubernetes-embedded-resource"):
        node["properties"] = {**EMBEDDED_FIELDS, **node.get("properties", {})}
    is_object = node.get("type") == "object" or "properties" in node
    open_ended = "additionalProperties" in node or node.get("x-kubernetes-preserve-unknown-fields")
    if is_object and not open_ended:
        node["additionalProperties"] = False
    return node


def object_meta_schema(kind: str) -> dict[str, Any]:
    """The ObjectMeta fields a manifest sets, typed; fields the server fills in are refused."""
    string_map = {"type": "object", "additionalProperties": {"type": "string"}}
    return {
        "type": "object",
        "required": ["name"],
        "additionalProperties": False,
        "properties": {
            "name": {
                "type": "string",
                "pattern": DNS1035_LABEL,
                "maxLength": NAME_LIMITS.get(kind, 253),
            },
            "namespace": {"type": "string", "pattern": DNS1123_LABEL, "maxLength": 63},
            "labels": {
                "type": "object",
                "propertyNames": {"pattern": LABEL_KEY},
                "additionalProperties": {"type": "string", "pattern": LABEL_VALUE},
            },
            "annotations": string_map,
            "finalizers": {"type": "array", "items": {"type": "string"}},
        },
    }


def document_schema(crd: Mapping[str, Any], version: Mapping[str, Any]) -> dict[str, Any]:
    """The strict schema of a whole manifest of this CRD version: apiVersion, kind, metadata too."""
    kind = crd["spec"]["names"]["kind"]
    schema = strict_schema(version["schema"]["openAPIV3Schema"])
    schema["properties"] = {
        **schema["properties"],
        "apiVersion": {"const": f"{crd['spec']['group']}/{version['name']}"},
        "kind": {"const": kind},
        "metadata": object_meta_schema(kind),
    }
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata"})
    return schema


class CrdValidators:
    """Validators for every served, non-deprecated version of the given CRDs."""

    def __init__(self, crds: Iterable[Mapping[str, Any]]) -> None:
        self.validators: dict[tuple[str, str], jsonschema.Draft7Validator] = {}
        self.deprecated: dict[tuple[str, str], str] = {}
        for crd in crds:
            kind, group = crd["spec"]["names"]["kind"], crd["spec"]["group"]
            for version in crd["spec"]["versions"]:
                key = (f"{group}/{version['name']}", kind)
                if version.get("deprecated"):
                    self.deprecated[key] = version.get("deprecationWarning", "deprecated")
                elif version.get("served"):
                    self.validators[key] = jsonschema.Draft7Validator(document_schema(crd, version))

    @classmethod
    def from_files(cls, paths: Iterable[Path]) -> CrdValidators:
        return cls(doc for path in paths for doc in load_documents(path))

    def errors(self, doc: Mapping[str, Any]) -> list[str]:
        """Every problem of one manifest, each naming the field, the value and what is allowed."""
        key: tuple[Any, Any] = (doc.get("apiVersion"), doc.get("kind"))
        if key in self.deprecated:
            return [f"apiVersion {key[0]!r} of {key[1]} is deprecated: {self.deprecated[key]}"]
        validator = self.validators.get(key)
        if validator is None:
            known = ", ".join(f"{api} {kind}" for api, kind in sorted(self.validators))
            return [f"apiVersion/kind {key[0]!r}/{key[1]!r} is not one of: {known}"]
        found = sorted(validator.iter_errors(doc), key=lambda e: [str(p) for p in e.absolute_path])
        return [describe_error(error) for error in found]

    def check(self, doc: Mapping[str, Any], source: str) -> None:
        """Raise one NtngError listing every problem of ``doc`` (from ``source``)."""
        problems = self.errors(doc)
        if problems:
            meta = doc.get("metadata")
            name = meta.get("name") if isinstance(meta, Mapping) else None
            raise NtngError(
                f"{source}: {doc.get('kind')} {name!r} is invalid:\n  " + "\n  ".join(problems)
            )


@lru_cache(maxsize=4)
def crd_validators(folder: Path) -> CrdValidators:
    """The validators of every CRD file in ``folder`` (loaded once per process: they are large)."""
    files = sorted(folder.glob("*.yaml"))
    if not files:
        raise NtngError(f"no CRD files (*.yaml) in {folder}")
    return CrdValidators.from_files(files)


def field_path(parts: Iterable[Any]) -> str:
    """``spec.workerGroupSpecs[0].template`` from a jsonschema error path."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text.lstrip(".") or "(top level)"


def describe_error(error: jsonschema.ValidationError) -> str:
    """One line: where, what was given, what is allowed there."""
    where = field_path(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, Mapping):
        declared = error.schema.get("properties", {})
        unknown = sorted(set(error.instance) - set(declared))
        allowed = ", ".join(sorted(declared)) or "no fields"
        return f"{where}: unknown field(s) {unknown}; allowed here: {allowed}"
    if error.validator == "anyOf" and error.schema.get("x-kubernetes-int-or-string"):
        return f"{where} = {error.instance!r}: must be an integer or a string"
    if where == "metadata.name" and error.validator in ("pattern", "maxLength"):
        return (
            f"{where} = {error.instance!r}: KubeRay needs a DNS-1035 label (lowercase letters, "
            f"digits and '-', starting with a letter) of at most {error.schema['maxLength']} "
            "characters"
        )
    return f"{where}: {error.message}"


# --- Ray cluster launcher ---------------------------------------------------------------------


def check_launcher_config(path: Path) -> dict[str, Any]:
    """Ray's own preparation and validation of a cluster-launcher YAML; returns the prepared config.

    ``prepare_config`` merges the provider's bundled defaults file and fills per-node-type worker
    bounds; ``validate_config`` checks Ray's ``ray-schema.json`` and the bounds. Neither talks to
    the cloud (that is ``bootstrap_config``, which ``ray up`` runs next).
    """
    from ray.autoscaler._private.util import prepare_config, validate_config

    docs = load_documents(path)
    if len(docs) != 1:
        raise NtngError(f"{path}: a cluster-launcher config is one YAML mapping, got {len(docs)}")
    try:
        prepared = prepare_config(copy.deepcopy(docs[0]))
        validate_config(prepared)
    except jsonschema.ValidationError as exc:
        raise NtngError(f"{path}: {describe_error(exc)}") from None
    except (ValueError, RuntimeError, AssertionError, KeyError) as exc:
        raise NtngError(f"{path}: Ray refuses the config: {exc}") from None
    check_no_credentials(docs[0], str(path))
    return prepared


# --- credentials --------------------------------------------------------------------------------


def credential_findings(data: Any, where: str = "") -> Iterator[str]:
    """Settings named like a secret, and strings shaped like one, anywhere in ``data``."""
    if isinstance(data, Mapping):
        for key, value in data.items():
            path = f"{where}.{key}" if where else str(key)
            if CREDENTIAL_KEY.search(str(key)):
                yield f"{path}: a setting named like a credential"
            yield from credential_findings(value, path)
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield from credential_findings(value, f"{where}[{index}]")
    elif isinstance(data, str):
        for what, pattern in CREDENTIAL_VALUES.items():
            if pattern.search(data):
                yield f"{where or '(value)'}: holds {what}"


def check_no_credentials(data: Any, source: str) -> None:
    """Refuse a deployment file that carries credentials: they belong to the cloud's identity
    (instance profiles, service accounts) or to Secrets, never to a file in the repository."""
    found = list(credential_findings(data))
    if found:
        raise NtngError(
            f"{source} holds credentials; use an instance profile / service account or a "
            "Kubernetes Secret instead:\n  " + "\n  ".join(found)
        )
