#!/usr/bin/env python3
"""bench/cost_client.py: send N requests, one after another, on one
keep-alive connection (what a pooled client does), reading each response
whole. Used by bench/proxy_cost.sh to drive a fixed amount of work through a
process running under valgrind/strace. Exits non-zero on any non-200.

Usage: cost_client.py PORT PATH BODY N
"""
import http.client
import sys

port, path, body, n = int(sys.argv[1]), sys.argv[2], sys.argv[3].encode(), int(sys.argv[4])
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
hdrs = {"Content-Type": "application/json"}
for i in range(n):
    conn.request("POST", path, body, hdrs)
    r = conn.getresponse()
    data = r.read()
    if r.status != 200:
        sys.stderr.write("request %d: status %d: %r\n" % (i, r.status, data[:200]))
        sys.exit(1)
