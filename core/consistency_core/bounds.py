"""Bounds every campaign field is held to, shared by the spec model and (through its JSON Schema) the CRD.

Each bound is a pattern or a limit the API server can check too, so a bad value is refused by
`kubectl apply` where the CRD is installed, and by the operator and `consistency run` everywhere else;
the error names the field either way. The limits are generous for real campaigns and small enough
that no value can make a Job, a label or an allocation blow up.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Annotated

from pydantic import AfterValidator, Field

URI_MAX = 2048
MAX_SEED = 2**32 - 1  # torch.manual_seed, numpy and vLLM take seeds in [0, 2^32)
MAX_NEW_TOKENS = 131_072
MAX_PROBLEMS = 10_000_000
MAX_DATASETS = 64
MAX_SECONDS = 30 * 24 * 3600  # 30 days: longer deadlines or TTLs are mistakes, not plans

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-.a-z0-9]*[a-z0-9])?$"
# A label key / taint key / extended resource name: an optional DNS-subdomain prefix and a name.
QUALIFIED_NAME = r"^([a-z0-9]([-.a-z0-9]*[a-z0-9])?/)?[A-Za-z0-9]([-_.A-Za-z0-9]*[A-Za-z0-9])?$"
LABEL_VALUE = r"^(([A-Za-z0-9][-_.A-Za-z0-9]*)?[A-Za-z0-9])?$"
HTTP_URL = r"^https?://[^\s]+$"
# registry/path[:tag][@sha256:digest], no whitespace; the registry allow-list is the operator's business.
IMAGE_REF = (r"^[a-z0-9]([-._a-z0-9]*[a-z0-9])?(:[0-9]+)?(/[a-z0-9]([-._a-z0-9]*[a-z0-9])?)*"
             r"(:[\w][\w.-]{0,127})?(@sha256:[a-f0-9]{64})?$")
# Where artifacts may live: S3, file:// or a plain path. Any other scheme (gopher://, http://) is refused
# here, before a stage finds out the hard way.
STORE_URI = r"^(s3://[^/\s]+(/.*)?|file://.+|[^:]+)$"
# A Kubernetes quantity without sign: digits, an optional fraction, an optional suffix.
_QUANTITY = r"^([0-9]+(\.[0-9]+)?|\.[0-9]+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei|[eE][0-9]{1,2})?$"
_SUFFIX = re.compile(r"(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei|[eE][0-9]{1,2})$")


# What each pattern means, for error messages ("should match pattern '^([0-9]+...'" helps nobody).
PATTERN_HINTS = {
    _QUANTITY: "must be a Kubernetes quantity such as 4, 500m, 1.5 or 16Gi",
    STORE_URI: "must be s3://bucket/prefix, file:///path or a plain path (no other URI scheme)",
    DNS_LABEL: "must be a DNS label (lowercase letters, digits, '-'; at most 63)",
    DNS_SUBDOMAIN: "must be a DNS subdomain (lowercase letters, digits, '-', '.')",
    QUALIFIED_NAME: "must be a label key: an optional DNS-subdomain prefix and '/', then a name",
    LABEL_VALUE: "must be a label value (letters, digits, '-', '_', '.'; at most 63)",
    HTTP_URL: "must be an http:// or https:// URL",
    IMAGE_REF: "must be an image reference such as registry.example.com/team/worker:1.2",
}


def pattern_hint(pattern: str | None) -> str | None:
    return PATTERN_HINTS.get(pattern or "")


def _positive_quantity(value: str) -> str:
    number = _SUFFIX.sub("", value)
    try:
        positive = Decimal(number) > 0
    except InvalidOperation:
        positive = False
    if not positive:
        raise ValueError(f"must be a positive Kubernetes quantity, got {value!r}")
    return value


ShortText = Annotated[str, Field(min_length=1, max_length=256)]
UriText = Annotated[str, Field(min_length=1, max_length=URI_MAX)]
StoreUri = Annotated[str, Field(min_length=1, max_length=URI_MAX, pattern=STORE_URI)]
DnsLabel = Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL)]
DnsSubdomain = Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)]
CpuQuantity = Annotated[str, Field(min_length=1, max_length=32, pattern=_QUANTITY),
                        AfterValidator(_positive_quantity)]
MemoryQuantity = Annotated[str, Field(min_length=1, max_length=32, pattern=_QUANTITY),
                           AfterValidator(_positive_quantity)]
LabelKey = Annotated[str, Field(min_length=1, max_length=316, pattern=QUALIFIED_NAME)]
LabelValue = Annotated[str, Field(max_length=63, pattern=LABEL_VALUE)]
LabelMap = Annotated[dict[LabelKey, LabelValue], Field(max_length=32)]
