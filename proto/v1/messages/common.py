"""What every context's messages share: the Text type, the refusal codes and the HTTP status each
means at ingress."""

from collections.abc import Mapping
from typing import Annotated, Literal

import msgspec

Text = Annotated[str, msgspec.Meta(pattern=r"^[^\x00-\x1f\x7f-\x9f]*$")]
"""A name, reference or id a command carries into the log or a query: no control characters
(Postgres refuses NUL in text; none belongs in a name). Refused when the message is decoded."""

KeyRefusalCode = Literal["key_not_found", "key_revoked", "key_limit_reached", "last_management_key",
                         "invalid_request", "internal_error"]  # fmt: skip
BillingRefusalCode = Literal["invalid_request", "ref_conflict", "unavailable", "internal_error"]
RefundRefusalCode = Literal["not_refundable", "not_cancellable", "refund_not_found", "invalid_request",
                            "not_supported", "unavailable", "internal_error"]  # fmt: skip
ConsoleRefusalCode = Literal["email_taken", "invalid_request", "internal_error"]
"""The codes each refusal reply may carry; below, the HTTP status each one means at ingress.
internal_error: the responder failed unexpectedly (libs.rpc answers so rather than not at all);
unavailable: nothing was done, retry."""

# proto/v1/rpc.py names these maps in its descriptors; libs.rpc.refusal_of reads them.

KEY_STATUS: Mapping[KeyRefusalCode, int] = {
    "key_not_found": 404, "key_revoked": 409, "key_limit_reached": 409, "last_management_key": 409,
    "invalid_request": 400, "internal_error": 500,
}  # fmt: skip
BILLING_STATUS: Mapping[BillingRefusalCode, int] = {
    "invalid_request": 400, "ref_conflict": 409, "unavailable": 503, "internal_error": 500,
}  # fmt: skip
REFUND_STATUS: Mapping[RefundRefusalCode, int] = {
    "not_refundable": 409, "not_cancellable": 409, "refund_not_found": 404, "invalid_request": 400,
    "not_supported": 409, "unavailable": 503, "internal_error": 500,
}  # fmt: skip
CONSOLE_STATUS: Mapping[ConsoleRefusalCode, int] = {"email_taken": 409, "invalid_request": 400, "internal_error": 500}
