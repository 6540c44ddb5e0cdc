"""The refund desk's own life: its close ends every settlement it runs."""

import pytest
from nats.aio.client import Client

from services.refund.desk import RefundDesk
from tests.lost_cancel import as_a_reply_comes

pytestmark = pytest.mark.connected


async def test_close_ends_a_settlement_whose_cancel_was_lost(nc: Client) -> None:
    """A settlement retries its NATS requests until they go through; one cancelled as a reply came in
    went on (Python 3.11's wait_for: libs/cancelling.py), and the refund service's close waited for it
    for ever. Nothing but the task is used: the desk's pool, publisher and provider stay unset."""
    desk = RefundDesk(
        None, "refund", nc, None, None, None, None, stream="ANY", request_timeout_s=1.0, barrier_wait_s=1.0
    )  # type: ignore[arg-type]
    settling = await as_a_reply_comes()
    desk._settling["rf_lost"] = settling  # as settle_in_background keeps it
    await desk.close()
    assert settling.cancelled()
