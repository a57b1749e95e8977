#!/usr/bin/env python3
"""Counts the frames seen on one interface (or all of a namespace's: `--iface all`) and how many
of them contain a marker.

Runs inside the namespace that owns the interface (nsenter --net=...). Prints `listening` once
the raw socket is bound (the caller's readiness signal), captures until stdin is closed, then
prints one JSON line: {"frames": N, "bytes": B, "marker_frames": M}.

    nsenter --net=/run/netns/NODE python3 sniff.py --iface all --marker SECRET-123

Frames switched between two ports of a bridge never reach the bridge device itself: capture on
every interface of the node (each pod's veth is a bridge port) to see pod-to-pod traffic.
"""

import argparse
import json
import select
import socket
import sys

ETH_P_ALL = 0x0003


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iface", required=True)
    ap.add_argument("--marker", required=True)
    a = ap.parse_args()
    marker = a.marker.encode()
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    if a.iface != "all":
        s.bind((a.iface, 0))
    s.setblocking(False)
    print("listening", flush=True)
    frames = total = hits = 0
    stdin = sys.stdin.fileno()
    while True:
        ready, _, _ = select.select([s, stdin], [], [])
        if s in ready:
            while True:
                try:
                    data = s.recv(65535)
                except BlockingIOError:
                    break
                frames += 1
                total += len(data)
                if marker in data:
                    hits += 1
        if stdin in ready:
            if not sys.stdin.buffer.read1(4096):
                break
    print(json.dumps({"frames": frames, "bytes": total, "marker_frames": hits}), flush=True)


if __name__ == "__main__":
    main()
