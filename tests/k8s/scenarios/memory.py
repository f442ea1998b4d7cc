#!/usr/bin/env python3
"""Memory of each container of the pvdir pods, from kubelet's summary API (the cgroup's working
set and RSS), and the sum per pod."""
import json
import subprocess

summary = json.loads(subprocess.run(
    ["kubectl", "get", "--raw", "/api/v1/nodes/node-1/proxy/stats/summary"],
    check=True, capture_output=True, timeout=60).stdout)
mib = 1024 * 1024
for pod in summary["pods"]:
    ref = pod["podRef"]
    if ref["namespace"] != "pvdir":
        continue
    total_ws = total_rss = 0
    for c in pod["containers"]:
        ws = c.get("memory", {}).get("workingSetBytes", 0)
        rss = c.get("memory", {}).get("rssBytes", 0)
        total_ws += ws
        total_rss += rss
        print(f"{ref['name']:<24} {c['name']:<18} working set {ws / mib:6.1f} MiB  rss {rss / mib:6.1f} MiB")
    print(f"{ref['name']:<24} {'(pod)':<18} working set {total_ws / mib:6.1f} MiB  rss {total_rss / mib:6.1f} MiB")
