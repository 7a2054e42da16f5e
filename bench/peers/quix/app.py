"""gpuledger's rating, deduplication and burn-down as a Quix Streams
application: the peer `make bench` measures gpuledger against.

Reads the deals and metering topics (concatenated, so Quix aligns them by
the event time the timestamp extractor gives, like gpuledger's merge),
with exactly-once processing and RocksDB state per start-up; the rate
cards are read whole from the rates topic at start (gpuledger's tasks read
the whole rates topic too; a card applies to usage timed at or after it).
Publishes one rated-usage record per accepted usage event to
`<prefix>.usage-rated` and the start-up's figures to `<prefix>.balances`
(keyed by start-up). What it implements of the spec (ledger-rules.md) and
what not: README.md beside this file.

    python app.py --broker HOST:PORT [--group G] [--state-dir DIR] [--prefix quix] [--idle 10]

Prints one JSON line at the end: messages, seconds (first to last message),
wall seconds.
"""

import argparse
import hashlib
import json
import re
import sys
import time
from datetime import datetime

from confluent_kafka import Consumer, KafkaError, TopicPartition
from quixstreams import Application, message_context
from quixstreams.models.topics.manager import TopicManager

# Tansu's DescribeConfigs leaves out retention.ms and retention.bytes; Quix
# 3.28 indexes "retention.ms" when it derives its changelog topics' config
# and raises KeyError. Fill both in as "unlimited" before it looks.
_derive = TopicManager.derive_topic_config.__func__


def _derive_with_retention(cls, topics):
    for topic in topics:
        topic.broker_config.extra_config.setdefault("retention.ms", "-1")
        topic.broker_config.extra_config.setdefault("retention.bytes", "-1")
    return _derive(cls, topics)


TopicManager.derive_topic_config = classmethod(_derive_with_retention)

DEBUG = bool(__import__("os").environ.get("QUIX_PEER_DEBUG"))
HOUR, DAY = 3_600_000, 86_400_000
DEDUP_WINDOW, MAX_FUTURE, EXPIRY_GRACE = 35 * DAY, DAY, HOUR
TIERS = {"on_demand", "reserved", "spot"}
CURRENCY = re.compile(r"^[A-Z]{3}$")


def millis(text):
    """RFC 3339 → ms since the epoch (below the millisecond truncated); None if not one."""
    if not isinstance(text, str):
        return None
    match = re.fullmatch(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(\.\d+)?(Z|[+-]\d{2}:\d{2})", text)
    if not match:
        return None
    try:
        base = datetime.fromisoformat(match.group(1) + ("+00:00" if match.group(3) == "Z" else match.group(3)))
    except ValueError:
        return None
    fraction = (match.group(2) or ".0")[1:4].ljust(3, "0")
    return int(base.timestamp()) * 1000 + int(fraction)


def integer(value):
    return isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63


def text(value):
    return isinstance(value, str) and value != ""


def round_half_even(numerator, denominator):
    quotient, remainder = divmod(numerator, denominator)
    twice = 2 * remainder
    if twice > denominator or (twice == denominator and quotient % 2 == 1):
        quotient += 1
    return quotient


def digest(event):
    return hashlib.sha256(json.dumps(event, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def load_rates(broker, topic):
    """The rates topic, whole: {(model, region, tier): [(time, offset, effective_from, card)]}."""
    consumer = Consumer({"bootstrap.servers": broker, "group.id": "quix-peer-rates", "enable.auto.commit": False,
                         "enable.partition.eof": True, "isolation.level": "read_committed"})
    consumer.assign([TopicPartition(topic, 0, 0)])
    cards, seen = {}, {}
    while True:
        message = consumer.poll(10)
        if message is None:
            raise SystemExit("quix peer: the rates topic gave no record and no end within 10 s")
        if message.error():
            if message.error().code() == KafkaError._PARTITION_EOF:
                break
            raise SystemExit(f"quix peer: reading rates: {message.error()}")
        try:
            event = json.loads(message.value())
        except ValueError:
            continue
        data = event.get("data") if isinstance(event, dict) else None
        when = millis(event.get("time")) if isinstance(event, dict) else None
        if not isinstance(data, dict) or when is None or event.get("type") != "gpuledger.rate.published":
            continue
        effective = millis(data.get("effective_from"))
        price, minimum = data.get("price_per_gpu_hour"), data.get("min_billable_seconds", 0)
        if not (text(data.get("gpu_model")) and text(data.get("region")) and data.get("tier") in TIERS
                and isinstance(data.get("currency"), str) and CURRENCY.match(data["currency"])
                and integer(price) and price >= 0 and integer(minimum) and minimum >= 0 and effective is not None):
            continue
        identity = (event.get("source"), event.get("id"))
        if identity in seen:
            continue  # an equal repeat is dropped, a different one rejected: either way the first stands
        seen[identity] = True
        key = (data["gpu_model"], data["region"], data["tier"])
        card = {"currency": data["currency"], "price": price, "minimum": minimum, "effective": effective,
                "key": "/".join(key)}
        cards.setdefault(key, []).append((when, message.offset(), effective, card))
    consumer.close()
    return cards


def rate_for(cards, key, usage_time, started_at):
    best = None
    for when, offset, effective, card in cards.get(key, ()):
        if when <= usage_time and effective <= started_at:
            rank = (effective, when, offset)
            if best is None or rank >= best[0]:
                best = (rank, card)
    return best[1] if best else None


class Ledger:
    """The per-start-up rules over Quix state (one state namespace per start-up)."""

    def __init__(self, cards, partitions_ticks):
        self.cards = cards
        self.ticks = partitions_ticks  # partition → latest tick time (process memory; see README)

    def clock(self, state):
        return max(state.get("clock", -(2**62)), self.ticks.get(message_context().partition, -(2**62)))

    def figures(self, state, currency):
        figures = state.get("figures", {})
        return figures, figures.setdefault(currency, {"usage_cost": 0, "usage_count": 0, "consumed_face": 0,
                                                      "overage": 0})

    def balances(self, startup, state):
        grants = state.get("grants", {})
        return {"startup": startup, "figures": state.get("figures", {}),
                "duplicates_dropped": state.get("duplicates", 0),
                "grants": {grant_id: {"consumed": grant["consumed"], "state": grant["state"]}
                           for grant_id, grant in sorted(grants.items())}}

    def process(self, value, key, state):
        """One deals or metering record → [rated usage] or [] (dead letters are counted, not published)."""
        try:
            event = json.loads(value)
        except (ValueError, TypeError):
            return None
        if not isinstance(event, dict):
            return None
        kind = event.get("type")
        when = millis(event.get("time"))
        if kind == "gpuledger.clock.tick":
            if when is not None:
                partition = message_context().partition
                self.ticks[partition] = max(self.ticks.get(partition, when), when)
            return None
        if when is None or event.get("specversion") != "1.0" or not text(event.get("id")) \
                or not text(event.get("source")) or not text(event.get("subject")) \
                or not isinstance(event.get("data"), dict) or event["source"].startswith("gpuledger:"):
            return None
        startup = event["subject"]
        clock = self.clock(state)
        if clock > -(2**62) and when > clock + MAX_FUTURE:
            if DEBUG:
                print(f"max_future: {event.get('id')} at {event.get('time')}, clock {clock}", file=sys.stderr)
            return None
        if kind == "gpuledger.gpu.usage":
            return self.usage(event, startup, when, clock, state)
        self.deal(event, kind, when, clock, state)
        return None

    def advance(self, state, when):
        """The start-up's clock moves; grants past expiry and grace expire."""
        clock = max(self.clock(state), when)
        state.set("clock", clock)
        grants = state.get("grants", {})
        changed = False
        for grant in grants.values():
            if grant["state"] == "open" and grant["expires_at"] is not None and clock >= grant["expires_at"] + EXPIRY_GRACE:
                grant["state"] = "expired"
                changed = True
        if changed:
            state.set("grants", grants)

    def remember(self, state, identity, event):
        """Dedup: True when the event is new (and now remembered)."""
        key = "id:" + identity
        seen = state.get(key)
        fingerprint = digest(event)
        if seen is not None:
            if seen == fingerprint:
                state.set("duplicates", state.get("duplicates", 0) + 1)
            return False
        state.set(key, fingerprint)
        return True

    def usage(self, event, startup, when, clock, state):
        data = event["data"]
        started, ended = millis(data.get("started_at")), millis(data.get("ended_at"))
        if not (text(data.get("cluster_id")) and text(data.get("region")) and text(data.get("gpu_model"))
                and data.get("tier") in TIERS and integer(data.get("gpu_count")) and data["gpu_count"] >= 1
                and started is not None and ended is not None and when == ended and ended > started
                and ended - started <= 31 * DAY):
            return None
        if clock > -(2**62) and when < clock - DEDUP_WINDOW:
            return None  # too_old
        if not self.remember(state, f"metering|{event['source']}|{event['id']}", event):
            return None
        self.advance(state, when)
        card = rate_for(self.cards, (data["gpu_model"], data["region"], data["tier"]), when, started)
        if card is None:
            return None  # no_rate
        billable = max(ended - started, 1000 * card["minimum"])
        cost = round_half_even(data["gpu_count"] * billable * card["price"], 3_600_000)
        grants = state.get("grants", {})
        eligible = sorted(
            (grant for grant in grants.values()
             if grant["state"] == "open" and grant["currency"] == card["currency"]
             and grant["effective_at"] <= when and (grant["expires_at"] is None or when < grant["expires_at"])),
            key=lambda grant: (grant["priority"], grant["expires_at"] is None, grant["expires_at"] or 0,
                               grant["effective_at"], grant["id"].encode()),
        )
        owed, draws = cost, []
        for grant in eligible:
            if owed == 0:
                break
            take = min(grant["face"] - grant["consumed"], owed)
            if take > 0:
                grant["consumed"] += take
                owed -= take
                draws.append({"grant_id": grant["id"], "face": take})
        state.set("grants", grants)
        figures, block = self.figures(state, card["currency"])
        block["usage_cost"] += cost
        block["usage_count"] += 1
        block["consumed_face"] += cost - owed
        block["overage"] += owed
        state.set("figures", figures)
        return {"startup": startup, "source": event["source"], "id": event["id"], "time": event["time"],
                "rate": card["key"], "cost": cost, "currency": card["currency"], "draws": draws, "overage": owed}

    def deal(self, event, kind, when, clock, state):
        data = event["data"]
        grants, deals = state.get("grants", {}), state.get("deals", {})
        if kind == "gpuledger.deal.signed":
            if not (text(data.get("deal_id")) and integer(data.get("credit_face_amount"))
                    and data["credit_face_amount"] > 0 and isinstance(data.get("currency"), str)
                    and CURRENCY.match(data["currency"])):
                return
            if not self.remember(state, f"deals|{event['source']}|{event['id']}", event):
                return
            self.advance(state, when)
            if data["deal_id"] in deals:
                return
            deals[data["deal_id"]] = {"face": data["credit_face_amount"], "granted": 0, "currency": data["currency"],
                                      "cancelled": False}
        elif kind == "gpuledger.credit.granted":
            effective, expires = millis(data.get("effective_at")), data.get("expires_at")
            expires = None if expires is None else millis(expires)
            priority = data.get("priority", 50)
            if not (text(data.get("grant_id")) and integer(data.get("face_amount")) and data["face_amount"] > 0
                    and isinstance(data.get("currency"), str) and CURRENCY.match(data["currency"])
                    and effective is not None and (data.get("expires_at") is None or expires is not None)
                    and integer(priority) and 0 <= priority <= 100
                    and (expires is None or expires > effective)):
                return
            if not self.remember(state, f"deals|{event['source']}|{event['id']}", event):
                return
            self.advance(state, when)
            deal_id = data.get("deal_id")
            deal = deals.get(deal_id) if deal_id is not None else None
            if deal_id is not None and deal is None:
                return  # unknown_deal
            if data["grant_id"] in grants:
                return  # duplicate_grant
            if deal is not None:
                if deal["cancelled"] or deal["currency"] != data["currency"] \
                        or deal["granted"] + data["face_amount"] > deal["face"]:
                    return
                deal["granted"] += data["face_amount"]
            grants[data["grant_id"]] = {"id": data["grant_id"], "face": data["face_amount"], "consumed": 0,
                                        "currency": data["currency"], "effective_at": effective,
                                        "expires_at": expires, "priority": priority, "state": "open",
                                        "deal_id": deal_id}
        elif kind in ("gpuledger.grant.extended", "gpuledger.grant.revoked", "gpuledger.deal.cancelled"):
            if not self.remember(state, f"deals|{event['source']}|{event['id']}", event):
                return
            self.advance(state, when)
            grants = state.get("grants", {})
            if kind == "gpuledger.grant.extended":
                grant, expires = grants.get(data.get("grant_id")), millis(data.get("expires_at"))
                if grant and grant["state"] == "open" and grant["expires_at"] is not None and expires is not None \
                        and expires > grant["expires_at"]:
                    grant["expires_at"] = expires
            elif kind == "gpuledger.grant.revoked":
                grant = grants.get(data.get("grant_id"))
                if grant and grant["state"] == "open":
                    grant["state"] = "revoked"
            else:
                deal = deals.get(data.get("deal_id"))
                if deal and not deal["cancelled"]:
                    deal["cancelled"] = True
                    for grant in grants.values():
                        if grant.get("deal_id") == data.get("deal_id") and grant["state"] == "open":
                            grant["state"] = "revoked"
        else:
            return
        state.set("grants", grants)
        state.set("deals", deals)


def event_time(value, headers, timestamp, timestamp_type):
    """Quix's timestamp extractor: the event's `time` (the Kafka timestamp when it has none)."""
    try:
        when = millis(json.loads(value).get("time"))
    except (ValueError, TypeError, AttributeError):
        when = None
    return timestamp if when is None else when


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--broker", required=True)
    parser.add_argument("--group", default="quix-peer")
    parser.add_argument("--state-dir", default="/var/tmp/gpuledger-quix-state")
    parser.add_argument("--prefix", default="quix")
    parser.add_argument("--idle", type=float, default=10.0, help="stop after this many seconds without a message")
    arguments = parser.parse_args()
    started = time.monotonic()
    cards = load_rates(arguments.broker, "gpuledger.rates")
    app = Application(broker_address=arguments.broker, consumer_group=arguments.group,
                      auto_offset_reset="earliest", processing_guarantee="exactly-once",
                      state_dir=arguments.state_dir, loglevel="WARNING")
    deals = app.topic("gpuledger.deals", value_deserializer="bytes", key_deserializer="str",
                      timestamp_extractor=event_time)
    metering = app.topic("gpuledger.metering", value_deserializer="bytes", key_deserializer="str",
                         timestamp_extractor=event_time)
    rated_topic = app.topic(f"{arguments.prefix}.usage-rated", value_serializer="json", key_serializer="str")
    balances_topic = app.topic(f"{arguments.prefix}.balances", value_serializer="json", key_serializer="str")
    ledger = Ledger(cards, {})
    seen = {"messages": 0, "first": None, "last": None}

    def process(value, key, timestamp, headers, state):
        now = time.monotonic()
        seen["messages"] += 1
        seen["first"] = seen["first"] or now
        seen["last"] = now
        if key is None:  # ticks (and unkeyed records) touch no start-up's state
            ledger.process(value, key, None)
            return None
        rated = ledger.process(value, key, state)
        if rated is None:
            return None
        return {"rated": rated, "balances": ledger.balances(key, state)}

    stream = app.dataframe(deals).concat(app.dataframe(metering))
    stream = stream.apply(process, stateful=True, metadata=True).filter(lambda value: value is not None)
    stream.apply(lambda value: value["rated"]).to_topic(rated_topic)
    stream.apply(lambda value: value["balances"]).to_topic(balances_topic)
    app.run(timeout=arguments.idle)
    wall = time.monotonic() - started
    processing = (seen["last"] - seen["first"]) if seen["first"] else 0.0
    print(json.dumps({"messages": seen["messages"], "seconds": round(processing, 3), "wall_seconds": round(wall, 3),
                      "messages_per_second": round(seen["messages"] / processing) if processing else 0}))


if __name__ == "__main__":
    sys.exit(main())
