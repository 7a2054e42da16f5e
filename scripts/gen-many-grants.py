#!/usr/bin/env python3
"""One start-up with many grants and as many usage events: the workload of
the `make bench-fold` row that shows a start-up's cost per event does not
grow with its history (grants, deals). Deterministic.

    gen-many-grants.py OUT_DIR [GRANTS]      (default 20000)
"""
import json
import os
import sys

out = sys.argv[1]
grants = int(sys.argv[2]) if len(sys.argv) > 2 else 20_000
os.makedirs(out, exist_ok=True)
BASE = 1_735_689_600  # 2025-01-01T00:00:00Z


def ts(seconds):
    import datetime
    return datetime.datetime.fromtimestamp(BASE + seconds, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def event(kind, id_, time, data, subject="whale"):
    value = {"specversion": "1.0", "id": id_, "source": "bench", "type": kind, "time": time, "data": data}
    if subject:
        value["subject"] = subject
    return json.dumps(value, separators=(",", ":"))


with open(os.path.join(out, "rates.jsonl"), "w") as rates:
    rates.write(event("gpuledger.rate.published", "rate", ts(0), {
        "gpu_model": "H800", "region": "r", "tier": "spot", "currency": "USD",
        "price_per_gpu_hour": 3_600_000, "effective_from": ts(0)}, subject=None) + "\n")
with open(os.path.join(out, "deals.jsonl"), "w") as deals:
    # One equity deal covering half the grants; the rest cash grants.
    deals.write(event("gpuledger.deal.signed", "deal", ts(0), {
        "deal_id": "d", "investor": "fund", "cash_amount": 0,
        "credit_face_amount": grants * 1_000_000, "currency": "USD",
        "equity_fair_value": grants * 900_000}) + "\n")
    for number in range(grants):
        data = {"grant_id": f"g{number:06d}", "face_amount": 1_000_000, "currency": "USD",
                "effective_at": ts(0), "priority": number % 7 * 10}
        if number % 2 == 0:
            data["deal_id"] = "d"
        else:
            data["consideration"] = "cash"
        if number % 3 == 0:
            data["expires_at"] = ts(400 * 86_400 + number * 60)
        deals.write(event("gpuledger.credit.granted", f"grant-{number}", ts(1 + number), data) + "\n")
with open(os.path.join(out, "metering.jsonl"), "w") as metering:
    # Each usage: 1 GPU for 15 minutes at $3.60/h = 0.90 of a 1.00 grant.
    start = grants + 10
    for number in range(grants):
        begin, end = start + number * 900, start + number * 900 + 900
        metering.write(event("gpuledger.gpu.usage", f"u{number}", ts(end), {
            "cluster_id": "c", "region": "r", "gpu_model": "H800", "tier": "spot", "gpu_count": 1,
            "started_at": ts(begin), "ended_at": ts(end)}) + "\n")
