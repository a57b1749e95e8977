#!/usr/bin/env python3
"""Sends HTTP GETs to a URL in a loop until stdin is closed, then prints "<ok> <failed>".

Prints `started` first (the caller's readiness signal). Used to keep traffic flowing while a
test disturbs the mesh (e.g. kills a ztunnel).

    python3 load.py http://10.244.2.2:8080/
"""

import select
import sys
import time
import urllib.request


def main():
    url = sys.argv[1]
    ok = failed = 0
    print("started", flush=True)
    while True:
        if select.select([sys.stdin], [], [], 0)[0] and not sys.stdin.readline():
            break
        try:
            urllib.request.urlopen(url, timeout=2).read()
            ok += 1
        except Exception:
            failed += 1
        time.sleep(0.02)
    print(ok, failed, flush=True)


if __name__ == "__main__":
    main()
