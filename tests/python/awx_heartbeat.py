"""AWX's web-node heartbeat, both ends, as AWX does it (psycopg, json.dumps;
awx/main/management/commands/run_ws_heartbeat.py and awx/main/wsrelay.py).

usage:
  awx_heartbeat.py listen URL CHANNEL
      LISTENs, prints "ready", then each notification's payload, one per line.
  awx_heartbeat.py beat URL CHANNEL HOSTNAME IP ACTION
      One NOTIFY with json.dumps({"hostname", "ip", "action"}); IP "-" is None.
"""
import json
import sys

import psycopg


def main():
    mode, url, channel = sys.argv[1:4]
    conn = psycopg.connect(url, autocommit=True)
    if mode == "listen":
        conn.execute(f"LISTEN {channel}")
        print("ready", flush=True)
        for note in conn.notifies():
            print(note.payload, flush=True)
    elif mode == "beat":
        hostname, ip, action = sys.argv[4:7]
        payload = json.dumps({"hostname": hostname, "ip": None if ip == "-" else ip, "action": action})
        conn.execute("SELECT pg_notify(%s, %s)", (channel, payload))
    else:
        raise SystemExit(f"unknown mode {mode}")


main()
