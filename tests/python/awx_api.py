"""A real Django + Django REST framework app shaped like AWX's API, for the
introspection authenticator's tests: real users, real session logins over
HTTP, real DRF tokens (sent as `Authorization: Bearer`, as AWX's are), and
per-user object permissions.

usage: awx_api.py DATA_DIR
Serves on a free loopback port and prints one JSON line:
  {"url": "http://127.0.0.1:PORT", "users": {"alice": {"id", "token",
   "sessionid", "csrftoken"}, "bob": {...}}}

Endpoints (AWX's shapes):
  GET  /api/v2/me/                  {"count": 1, ..., "results": [{"id", "type", "username"}]}; 401/403 without a user
  GET  /api/v2/jobs/<id>/           200 if the user may see it, 403 if not, 404 if no such object
  GET  /api/v2/workflow_jobs/<id>/  (same)
  GET  /api/v2/ad_hoc_commands/<id>/ (same)
  GET  /api/login/ sets csrftoken; POST /api/login/ (username, password) logs in
  POST /api/logout/
Test controls:
  GET /_test/calls/[?reset=1]       requests per path since the last reset
  GET /_test/sessions/?user=U&n=N   N fresh sessions of user U (as a login makes them)
  GET /_test/delay/?ms=M            every API answer waits M ms first
  GET /_test/expire/?session=KEY    the session ends (as when it expires)
Objects: jobs 1 and 2 exist; alice may see job 1, bob job 2; workflow job 5
and ad hoc command 6 are alice's.
"""
import http.cookiejar
import json
import os
import socketserver
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from wsgiref.simple_server import WSGIRequestHandler

import django
from django.conf import settings

DATA_DIR = sys.argv[1]
os.makedirs(DATA_DIR, exist_ok=True)

settings.configure(
    DEBUG=False,
    SECRET_KEY="awx-api-test-only",
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=[
        "django.contrib.contenttypes",
        "django.contrib.auth",
        "django.contrib.sessions",
        "rest_framework",
        "rest_framework.authtoken",
    ],
    MIDDLEWARE=[
        __name__ + ".CountCalls",
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.middleware.csrf.CsrfViewMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
    ],
    DATABASES={
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.path.join(DATA_DIR, "awx.sqlite3"),
            "OPTIONS": {"timeout": 30},
        }
    },
    # Test-only: logins need not be slow.
    PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],
    SESSION_ENGINE="django.contrib.sessions.backends.db",
    REST_FRAMEWORK={"UNAUTHENTICATED_USER": None},
    USE_TZ=True,
)
django.setup()

from django.contrib.auth import authenticate, get_user_model, login, logout  # noqa: E402
from django.contrib.auth.models import Group  # noqa: E402
from django.contrib.sessions.backends.db import SessionStore  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.http import JsonResponse  # noqa: E402
from django.urls import path  # noqa: E402
from django.views.decorators.csrf import csrf_protect, ensure_csrf_cookie  # noqa: E402
from rest_framework.authentication import SessionAuthentication, TokenAuthentication  # noqa: E402
from rest_framework.authtoken.models import Token  # noqa: E402
from rest_framework.permissions import IsAuthenticated  # noqa: E402
from rest_framework.response import Response  # noqa: E402
from rest_framework.views import APIView  # noqa: E402

CALLS = Counter()
CALLS_LOCK = threading.Lock()
DELAY = {"ms": 0}


class CountCalls:
    """Counts requests per path, and applies the test delay to the API."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path.startswith("/api/v2/"):
            with CALLS_LOCK:
                CALLS[request.path] += 1
            if DELAY["ms"]:
                time.sleep(DELAY["ms"] / 1000)
        return self.get_response(request)


class BearerTokenAuthentication(TokenAuthentication):
    # AWX's API tokens travel as "Authorization: Bearer <token>".
    keyword = "Bearer"


class AwxView(APIView):
    # AWX (django-ansible-base) tries the session first, then tokens.
    authentication_classes = [SessionAuthentication, BearerTokenAuthentication]
    permission_classes = [IsAuthenticated]


class Me(AwxView):
    def get(self, request):
        u = request.user
        return Response(
            {
                "count": 1,
                "next": None,
                "previous": None,
                "results": [{"id": u.id, "type": "user", "username": u.username}],
            }
        )


def object_view(kind):
    class ObjectDetail(AwxView):
        def get(self, request, pk):
            # An object exists if its viewer group does; a user may see it if
            # they are in that group (AWX's RBAC, reduced to one role).
            name = f"{kind}-{pk}"
            if not Group.objects.filter(name=name).exists():
                return Response({"detail": "Not found."}, status=404)
            if not request.user.groups.filter(name=name).exists():
                return Response({"detail": "You do not have permission to perform this action."}, status=403)
            return Response({"id": pk, "type": kind})

    return ObjectDetail.as_view()


@ensure_csrf_cookie
@csrf_protect
def login_view(request):
    if request.method == "GET":
        return JsonResponse({"csrf": "set"})
    user = authenticate(request, username=request.POST.get("username"), password=request.POST.get("password"))
    if user is None:
        return JsonResponse({"detail": "bad credentials"}, status=401)
    login(request, user)
    return JsonResponse({"id": user.id})


@csrf_protect
def logout_view(request):
    logout(request)
    return JsonResponse({"ok": True})


def calls_view(request):
    with CALLS_LOCK:
        out = dict(CALLS)
        if request.GET.get("reset"):
            CALLS.clear()
    return JsonResponse(out)


def sessions_view(request):
    user = get_user_model().objects.get(username=request.GET["user"])
    keys = []
    for _ in range(int(request.GET.get("n", "1"))):
        # What django.contrib.auth.login stores in a fresh session.
        s = SessionStore()
        s["_auth_user_id"] = str(user.pk)
        s["_auth_user_backend"] = "django.contrib.auth.backends.ModelBackend"
        s["_auth_user_hash"] = user.get_session_auth_hash()
        s.create()
        keys.append(s.session_key)
    return JsonResponse({"sessions": keys})


def expire_view(request):
    SessionStore(session_key=request.GET["session"]).delete()
    return JsonResponse({"expired": True})


def delay_view(request):
    DELAY["ms"] = int(request.GET.get("ms", "0"))
    return JsonResponse(DELAY)


urlpatterns = [
    path("api/v2/me/", Me.as_view()),
    path("api/v2/jobs/<int:pk>/", object_view("jobs")),
    path("api/v2/workflow_jobs/<int:pk>/", object_view("workflow_jobs")),
    path("api/v2/ad_hoc_commands/<int:pk>/", object_view("ad_hoc_commands")),
    path("api/login/", login_view),
    path("api/logout/", logout_view),
    path("_test/calls/", calls_view),
    path("_test/sessions/", sessions_view),
    path("_test/delay/", delay_view),
    path("_test/expire/", expire_view),
]


def fixtures():
    call_command("migrate", verbosity=0, interactive=False)
    User = get_user_model()
    users = {}
    for name in ["alice", "bob"]:
        u = User.objects.create_user(name, password=f"{name}-pw")
        users[name] = u
    grants = {
        "jobs-1": ["alice"],
        "jobs-2": ["bob"],
        "workflow_jobs-5": ["alice"],
        "ad_hoc_commands-6": ["alice"],
    }
    for group, members in grants.items():
        g = Group.objects.create(name=group)
        for m in members:
            users[m].groups.add(g)
    return {name: {"id": u.id, "token": Token.objects.create(user=u).key} for name, u in users.items()}


class Server(socketserver.ThreadingMixIn, __import__("wsgiref.simple_server").simple_server.WSGIServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):
        pass


def http_login(base, name):
    """A browser's login: GET the form for the CSRF cookie, POST it back."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    opener.open(base + "/api/login/").read()
    csrf = next(c.value for c in jar if c.name == "csrftoken")
    body = urllib.parse.urlencode({"username": name, "password": f"{name}-pw"}).encode()
    req = urllib.request.Request(
        base + "/api/login/", data=body, headers={"X-CSRFToken": csrf, "Referer": base + "/"}
    )
    opener.open(req).read()
    cookies = {c.name: c.value for c in jar}
    return cookies["sessionid"], cookies["csrftoken"]


def main():
    users = fixtures()
    server = Server(("127.0.0.1", 0), QuietHandler)
    server.set_app(get_wsgi_application())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    for name, u in users.items():
        u["sessionid"], u["csrftoken"] = http_login(base, name)
    with CALLS_LOCK:
        CALLS.clear()
    print(json.dumps({"url": base, "users": users}), flush=True)
    # Until stdin closes or the process is killed.
    sys.stdin.read()


main()
