"""Prints, as JSON, what the Kubernetes manifests in a directory say about
the node: the node.toml of the ConfigMap, and for each workload its grace
period, preStop sleep and probe paths."""

import json
import pathlib
import sys

import yaml

facts = {"node_toml": None, "workloads": []}
for path in sorted(pathlib.Path(sys.argv[1]).glob("*.yaml")):
    for doc in yaml.safe_load_all(path.read_text()):
        if not doc:
            continue
        if doc["kind"] == "ConfigMap" and "node.toml" in doc.get("data", {}):
            facts["node_toml"] = doc["data"]["node.toml"]
        if doc["kind"] in ("Deployment", "DaemonSet"):
            pod = doc["spec"]["template"]["spec"]
            container = pod["containers"][0]
            facts["workloads"].append({
                "kind": doc["kind"],
                "grace_seconds": pod["terminationGracePeriodSeconds"],
                "pre_stop_seconds": container["lifecycle"]["preStop"]["sleep"]["seconds"],
                "readiness": container["readinessProbe"]["httpGet"]["path"],
                "liveness": container["livenessProbe"]["httpGet"]["path"],
                "security": container["securityContext"],
                "pod_security": pod["securityContext"],
            })
json.dump(facts, sys.stdout)
