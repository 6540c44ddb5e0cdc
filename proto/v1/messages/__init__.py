"""Request/reply messages: commands are imperative, replies are answers. One module per context
(quota, keys, billing, inflight, refund, ops, console; common: Text and the refusal codes), each
exported whole from here, as before the split."""

from proto.v1.messages.billing import *  # noqa: F403
from proto.v1.messages.common import *  # noqa: F403
from proto.v1.messages.console import *  # noqa: F403
from proto.v1.messages.inflight import *  # noqa: F403
from proto.v1.messages.keys import *  # noqa: F403
from proto.v1.messages.ops import *  # noqa: F403
from proto.v1.messages.quota import *  # noqa: F403
from proto.v1.messages.refund import *  # noqa: F403
