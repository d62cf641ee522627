"""A REFERENCE REPRODUCTION of AWX's websocket layer, for load comparisons only.

This is not AWX. It reproduces what wsrelay's SPEC (section 2) says AWX's
EventConsumer (awx/main/consumers.py) does, on the stack AWX runs: daphne +
django-channels + channels_redis, with AWX's CHANNEL_LAYERS settings
(capacity 10000, group_expiry 157784760). It leaves out AWX's Django session
authentication and per-object access checks: every client is accepted as
user 0. Run it with daphne (one process, as AWX's supervisord does):

    AWX_REF_REDIS=redis://127.0.0.1:6379/ PYTHONPATH=loadtest/awx_reference \
        daphne -b 127.0.0.1 -p 8052 awx_reference:application
"""
import os

import django
from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="reference-reproduction-only",
    ALLOWED_HOSTS=["*"],
    INSTALLED_APPS=["channels"],
    CHANNEL_LAYERS={
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [os.environ["AWX_REF_REDIS"]],
                "capacity": 10000,
                "group_expiry": 157784760,
            },
        }
    },
)
django.setup()

from channels.generic.websocket import AsyncJsonWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import re_path  # noqa: E402


class EventConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        self.held = set()
        await self.accept()
        await self.send_json({"accept": True, "user": 0})

    async def disconnect(self, code):
        for group in self.held:
            await self.channel_layer.group_discard(group, self.channel_name)

    async def receive_json(self, data):
        if "groups" not in data:
            return
        new = set()
        for kind, ids in data["groups"].items():
            if type(ids) is not list:
                await self.send_json({"error": "access denied to channel"})
                return
            for oid in ids:
                new.add("{}-{}".format(kind, oid))
        left = self.held - new
        for group in left:
            await self.channel_layer.group_discard(group, self.channel_name)
        joined = new - self.held
        for group in joined:
            await self.channel_layer.group_add(group, self.channel_name)
        self.held = new
        await self.send_json(
            {"groups_current": list(new), "groups_left": list(left), "groups_joined": list(joined)}
        )

    async def internal_message(self, event):
        await self.send(text_data=event["text"])


application = ProtocolTypeRouter(
    {
        "websocket": URLRouter(
            [
                re_path(r"^websocket/$", EventConsumer.as_asgi()),
                re_path(r"^api/websocket/$", EventConsumer.as_asgi()),
            ]
        )
    }
)
