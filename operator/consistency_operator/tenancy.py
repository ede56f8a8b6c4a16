"""What a tenant (anyone allowed to create a ConsistencyTraining) may ask the operator for (pure).

The operator creates Jobs with its own rights, so every CR field that reaches a pod is a request made
on the tenant's behalf. These rules keep that from becoming a confused deputy; the chart's
ValidatingAdmissionPolicy applies the same rules at admission, and the operator checks them again on
every pass so clusters without admission policies are covered too:

* `spec.resources.workerImage` must start with one of the allowed registry prefixes (default: the
  operator's own worker image repository);
* `spec.resources.serviceAccountName` and `runtimeClassName` may only be set where the operator allows
  overrides (a ServiceAccount could carry API rights, a RuntimeClass could drop the sandbox);
* a toleration with operator Exists needs a key (refused by the spec model itself);
* the operator's default store credentials are lent only to a store URI under `allowedPrefix`
  (`<namespace>` replaced by the campaign's namespace) and with the operator's own endpoint; a CR
  elsewhere must name its own credentials Secret.
"""

from __future__ import annotations

from consistency_core.spec import CampaignSpec

from consistency_operator.config import OperatorConfig

NAMESPACE_PLACEHOLDER = "<namespace>"


def image_repository(image: str) -> str:
    """`registry/path` of an image reference, without tag or digest."""
    name = image.split("@", 1)[0]
    head, _, last = name.rpartition("/")
    return f"{head}/{last.split(':', 1)[0]}" if head else last.split(":", 1)[0]


def allowed_registries(settings: OperatorConfig) -> tuple[str, ...]:
    """The configured prefixes, else the default worker image's repository itself (with its ':' or '@', so
    `repo-evil` does not pass for `repo`)."""
    repo = image_repository(settings.worker_image)
    return settings.allowed_registries or (f"{repo}:", f"{repo}@")


def store_prefix(settings: OperatorConfig, namespace: str) -> str | None:
    if not settings.store_allowed_prefix:
        return None
    return settings.store_allowed_prefix.replace(NAMESPACE_PLACEHOLDER, namespace)


def lends_default_credentials(spec: CampaignSpec, settings: OperatorConfig, namespace: str) -> bool:
    """Whether stage pods of this campaign get the operator's default store Secret."""
    if spec.store.credentials_secret or not settings.store_secret:
        return False
    prefix = store_prefix(settings, namespace)
    same_endpoint = spec.store.endpoint in (None, settings.store_endpoint)
    return prefix is not None and spec.store.uri.startswith(prefix) and same_endpoint


def violations(spec: CampaignSpec, settings: OperatorConfig, namespace: str) -> list[str]:
    """Each rule the spec breaks, naming the field (empty: the campaign may run)."""
    found: list[str] = []
    res = spec.resources
    if res.worker_image is not None:
        allowed = allowed_registries(settings)
        if not any(res.worker_image.startswith(prefix) for prefix in allowed):
            found.append(f"spec.resources.workerImage: {res.worker_image!r} is not from an allowed registry "
                         f"({', '.join(allowed)})")
    if res.service_account_name is not None and not settings.allow_service_account_override:
        found.append("spec.resources.serviceAccountName: this operator does not allow overriding the stage "
                     "pods' ServiceAccount")
    if res.runtime_class_name is not None and not settings.allow_runtime_class_override:
        found.append("spec.resources.runtimeClassName: this operator does not allow overriding the stage "
                     "pods' RuntimeClass")
    if not spec.store.credentials_secret and settings.store_secret and \
            not lends_default_credentials(spec, settings, namespace):
        prefix = store_prefix(settings, namespace)
        where = f"under {prefix}" if prefix else "anywhere (store.allowedPrefix is not set)"
        found.append(f"spec.store.credentialsSecret: required, since the operator's default store credentials "
                     f"are only lent {where} with the operator's endpoint; got uri {spec.store.uri!r}"
                     + (f" and endpoint {spec.store.endpoint!r}" if spec.store.endpoint else ""))
    return found
