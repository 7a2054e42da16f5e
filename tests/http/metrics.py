"""Parses a Prometheus text exposition (stdin) with the Prometheus project's
own Python parser and prints its samples as JSON lines: name, labels, value.
A malformed exposition fails here, not in the Rust test's own reading."""
import json
import sys

from prometheus_client.parser import text_string_to_metric_families

for family in text_string_to_metric_families(sys.stdin.read()):
    for sample in family.samples:
        print(json.dumps({"family": family.name, "type": family.type, "name": sample.name,
                          "labels": sample.labels, "value": sample.value}))
