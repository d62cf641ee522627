"""Emit events exactly as AWX's emit_channel_notification does, through the
real channels_redis package (no imitation of its storage format).

usage: awx_emit.py ERA URL [URL ...] < events.json
  (with AWX_EMIT_SIGNAL_READY set, prints "ready" once its imports are done)
  ERA     2020 (group send plus the wrapped copy to broadcast-group_send)
          or 2022 (one send with needs_relay)
  events  a JSON list of [group, payload] pairs
Prints the JSON list of the payload texts it sent, in order.
"""
import asyncio
import json
import os
import sys

from channels_redis.core import RedisChannelLayer


async def main():
    era, urls = sys.argv[1], sys.argv[2:]
    if os.environ.get("AWX_EMIT_SIGNAL_READY"):
        # Imports are done: the caller may now time its events closely.
        print("ready", flush=True)
    events = json.loads(sys.stdin.read())
    # AWX's CHANNEL_LAYERS settings (awx/settings/defaults.py).
    layer = RedisChannelLayer(hosts=urls, capacity=10000, group_expiry=157784760)
    sent = []
    for group, payload in events:
        payload_dumped = json.dumps(payload)
        if era == "2020":
            await layer.group_send(group, {"type": "internal.message", "text": payload_dumped})
            await layer.group_send(
                "broadcast-group_send",
                {"type": "internal.message", "text": json.dumps({"group": group, "message": payload_dumped})},
            )
        elif era == "2022":
            await layer.group_send(
                group, {"type": "internal.message", "text": payload_dumped, "needs_relay": True}
            )
        else:
            raise SystemExit(f"unknown era {era}")
        sent.append(payload_dumped)
    await layer.close_pools()
    print(json.dumps(sent))


asyncio.run(main())
