"""The mutating webhook's decision: an AdmissionReview v1 in, the AdmissionReview to answer out.

Sans-IO: bytes in, a ``Decision`` (HTTP status + JSON body) out; server.py only moves bytes.

- A Pod CREATE whose pod is labelled ``ccr-gateway.io/inject: "true"`` (or, on the namespace
  path, any pod not labelled otherwise: the webhook's namespaceSelector chose the namespace) is
  allowed with a JSONPatch adding the sidecars (sidecar.py) and ``ccr-gateway.io/status: injected``.
- A pod already marked injected, or not labelled, or any other operation: allowed, no patch.
- A review that names a uid but is wrong (not a Pod, no pod, a bad annotation, a name taken):
  ``allowed: false`` with code 400 and a message the API server shows to whoever created the pod.
- A body that is no AdmissionReview at all (not JSON, no ``request.uid``): there is no review to
  answer, so HTTP 400 with a Status naming the problem.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from control_plane.injector.config import InjectorConfig
from control_plane.injector.sidecar import (
    INJECT_LABEL,
    INJECTED,
    STATUS_ANNOTATION,
    AnnotationError,
    PodSettings,
    SidecarParts,
    sidecar_parts,
)

API_VERSION = "admission.k8s.io/v1"
KIND = "AdmissionReview"


@dataclass(frozen=True, slots=True)
class Decision:
    http_status: int  # 200 with an AdmissionReview; 400 when there is no review to answer
    body: dict
    outcome: str  # injected | skipped | refused | bad_request: for the log and the metric
    detail: str  # one line for the log: which pod, why

    def encode(self) -> bytes:
        return json.dumps(self.body, separators=(",", ":")).encode()


class _Refused(ValueError):
    """The review names a uid but cannot be honoured: answered allowed=false, code 400."""


def decide(body: bytes, config: InjectorConfig, *, namespace_opted_in: bool = False) -> Decision:
    """``namespace_opted_in``: the request came on the namespace-wide path (the pod's namespace is
    labelled); a pod then is injected unless it is labelled ``ccr-gateway.io/inject: "false"``."""
    try:
        review = json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        return _bad_request(f"the body is not JSON: {exc}")
    request = review.get("request") if isinstance(review, dict) else None
    uid = request.get("uid") if isinstance(request, dict) else None
    if not isinstance(uid, str) or not uid:
        return _bad_request("not an AdmissionReview: no request.uid to answer")
    assert isinstance(request, dict)
    try:
        return _review(review, request, uid, config, namespace_opted_in)
    except (_Refused, AnnotationError) as exc:
        response = {
            "uid": uid,
            "allowed": False,
            "status": {"status": "Failure", "code": 400, "reason": "BadRequest", "message": f"ccr-gateway: {exc}"},
        }
        return Decision(200, _answer(response), "refused", f"uid {uid}: {exc}")


def _review(review: dict, request: dict, uid: str, config: InjectorConfig, namespace_opted_in: bool) -> Decision:
    if review.get("apiVersion") != API_VERSION or review.get("kind") != KIND:
        raise _Refused(
            f"not an {API_VERSION} {KIND} (apiVersion {review.get('apiVersion')!r}, kind {review.get('kind')!r})"
        )
    kind = request.get("kind")
    if not isinstance(kind, dict) or (kind.get("group"), kind.get("kind")) != ("", "Pod"):
        raise _Refused(f"only Pods are injected, this is {kind!r}: check the webhook's rules")
    operation = request.get("operation")
    if operation != "CREATE" or request.get("subResource"):
        return _allowed(uid, f"{operation} {request.get('subResource') or 'pod'}: nothing to inject")
    pod = request.get("object")
    if not isinstance(pod, dict):
        raise _Refused("the review holds no pod (request.object)")
    metadata = pod.get("metadata") if pod.get("metadata") is not None else {}
    spec = pod.get("spec")
    if not isinstance(metadata, dict) or not isinstance(spec, dict):
        raise _Refused("the pod has no spec (or its metadata is not a mapping)")
    who = _pod_name(metadata, request)
    labels = _string_map(metadata, "labels")
    annotations = _string_map(metadata, "annotations")
    label = labels.get(INJECT_LABEL)
    if label != "true" and not (namespace_opted_in and label is None):
        return _allowed(uid, f"{who}: not labelled {INJECT_LABEL}=true")
    if annotations.get(STATUS_ANNOTATION) == INJECTED:
        return _allowed(uid, f"{who}: already injected")
    settings = PodSettings.of(config, annotations)
    parts = sidecar_parts(settings)
    taken = sorted(set(parts.names) & _names(spec, "initContainers", "containers", "ephemeralContainers"))
    if taken:
        raise _Refused(f"{who}: container name(s) {', '.join(taken)} already taken; the injector adds them")
    taken = sorted({volume["name"] for volume in parts.volumes} & _names(spec, "volumes"))
    if taken:
        raise _Refused(f"{who}: volume name(s) {', '.join(taken)} already taken; the injector adds them")
    patch = json_patch(pod, parts)
    response = {
        "uid": uid,
        "allowed": True,
        "patchType": "JSONPatch",
        "patch": base64.b64encode(json.dumps(patch, separators=(",", ":")).encode()).decode(),
    }
    detail = f"{who}: {settings.workers} worker(s), control plane {settings.control_plane}"
    return Decision(200, _answer(response), "injected", detail)


def json_patch(pod: dict, parts: SidecarParts) -> list[dict]:
    """RFC 6902 operations adding ``parts`` and the status annotation. ``add`` into an array or
    object that is not there fails, so a missing (or null, or empty) one is added whole; keys are
    escaped (``/`` as ``~1``)."""
    spec = pod["spec"]
    ops: list[dict[str, Any]] = []
    ops += _insert(spec, "initContainers", parts.init_containers, front=True)
    ops += _insert(spec, "containers", parts.containers, front=False)
    ops += _insert(spec, "volumes", parts.volumes, front=False)
    metadata = pod.get("metadata")
    if not isinstance(metadata, dict):
        ops.append({"op": "add", "path": "/metadata", "value": {"annotations": {STATUS_ANNOTATION: INJECTED}}})
    elif isinstance(metadata.get("annotations"), dict):
        ops.append({"op": "add", "path": f"/metadata/annotations/{_escape(STATUS_ANNOTATION)}", "value": INJECTED})
    else:
        ops.append({"op": "add", "path": "/metadata/annotations", "value": {STATUS_ANNOTATION: INJECTED}})
    return ops


def _insert(spec: dict, key: str, items: list[dict], *, front: bool) -> list[dict]:
    """Init containers go first (a native sidecar serves the application's init containers too),
    containers and volumes after the pod's own."""
    if not items:
        return []
    existing = spec.get(key)
    if not isinstance(existing, list) or not existing:
        return [{"op": "add", "path": f"/spec/{key}", "value": items}]
    if front:
        return [{"op": "add", "path": f"/spec/{key}/{index}", "value": item} for index, item in enumerate(items)]
    return [{"op": "add", "path": f"/spec/{key}/-", "value": item} for item in items]


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _names(spec: dict, *keys: str) -> set[str]:
    """The names of the pod's containers (or volumes) under ``keys``."""
    names = set()
    for key in keys:
        for item in spec.get(key) or []:
            if isinstance(item, dict) and isinstance(item.get("name"), str):
                names.add(item["name"])
    return names


def _string_map(metadata: dict, key: str) -> dict[str, Any]:
    found = metadata.get(key)
    if found is None:
        return {}
    if not isinstance(found, dict):
        raise _Refused(f"metadata.{key} is not a mapping")
    return found


def _pod_name(metadata: dict, request: dict) -> str:
    name = metadata.get("name") or request.get("name") or f"{metadata.get('generateName') or ''}<new>"
    return f"{request.get('namespace') or metadata.get('namespace') or '<no namespace>'}/{name}"


def _allowed(uid: str, detail: str) -> Decision:
    return Decision(200, _answer({"uid": uid, "allowed": True}), "skipped", detail)


def _answer(response: dict) -> dict:
    return {"apiVersion": API_VERSION, "kind": KIND, "response": response}


def _bad_request(message: str) -> Decision:
    status = {"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": 400, "reason": "BadRequest"}
    return Decision(400, {**status, "message": f"ccr-gateway: {message}"}, "bad_request", message)
