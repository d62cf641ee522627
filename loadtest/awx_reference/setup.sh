#!/usr/bin/env bash
# Installs the AWX reference reproduction's stack (daphne, channels,
# channels-redis, Django) from PyPI into target/awx-venv. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=target/awx-venv
if ! "$venv/bin/python" -c 'import daphne, channels, channels_redis' >/dev/null 2>&1; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check \
        "django>=4.2,<5.3" "channels>=4,<5" "channels-redis==4.3.0" "daphne>=4,<5"
fi
echo "$PWD/$venv"
