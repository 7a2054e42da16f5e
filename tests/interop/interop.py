#!/usr/bin/env python3
"""gpuledger's Avro against libraries no one here wrote: Python fastavro
(encoding, decoding, Parsing Canonical Form fingerprints) and
confluent-kafka (producing, consuming). Driven by tests/it/interop.rs.

  interop.py produce BOOTSTRAP FRAMING RATES DEALS METERING
      the CloudEvents of schemas/examples/ to the three input topics, as
      JSON, Avro single-object encoding (`single`) or the Confluent wire
      format (`confluent`), encoded by fastavro, in zstd-compressed batches
  interop.py same BOOTSTRAP TOPIC_A TOPIC_B [INPUTS_A INPUTS_B]
      the two topics hold the same record values, in order (with the input
      topic prefixes INPUTS_A and INPUTS_B taken as the same)
  interop.py decode BOOTSTRAP FRAMING SCHEMA AVRO_TOPIC JSON_TOPIC
      every record of AVRO_TOPIC has the framing's header (the fingerprint
      fastavro computes for schemas/SCHEMA.avsc, or its default id), decodes
      with fastavro from the .avsc alone, and equals JSON_TOPIC's record at
      the same position

Prints what it checked; exits 1 with the first difference otherwise.
"""

import datetime
import io
import json
import pathlib
import struct
import sys

import fastavro
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from fastavro.schema import fingerprint as fastavro_fingerprint
from fastavro.schema import parse_schema, to_parsing_canonical_form

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas"
# The default Confluent ids (schemas/README.md).
IDS = {
    name: number
    for number, name in enumerate(
        [
            "deal_signed", "credit_granted", "grant_extended", "grant_revoked", "deal_cancelled",
            "rate_published", "gpu_usage", "clock_tick",
            "usage_rated", "journal_entry", "statement", "alert", "dead_letter", "balances",
        ],
        start=1,
    )
}
TOPIC_OF = {
    "rate_published": "rates",
    "deal_signed": "deals", "credit_granted": "deals", "grant_extended": "deals",
    "grant_revoked": "deals", "deal_cancelled": "deals",
    "gpu_usage": "metering", "clock_tick": "metering",
}


def fail(message):
    print(f"interop: {message}", file=sys.stderr)
    sys.exit(1)


def schema_json(name):
    return json.loads((SCHEMAS / f"{name}.avsc").read_text())


def fingerprint(name):
    """fastavro's CRC-64-AVRO of the Parsing Canonical Form, as the
    single-object header carries it."""
    form = to_parsing_canonical_form(schema_json(name))
    return bytes.fromhex(fastavro_fingerprint(form, "CRC-64-AVRO"))


def instant(text):
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def is_timestamp(kind):
    return isinstance(kind, dict) and kind.get("logicalType") == "timestamp-millis"


def to_avro(kind, value):
    """A JSON value shaped for fastavro by the schema `kind`."""
    if value is None:
        return None
    if isinstance(kind, list):
        branch = next(branch for branch in kind if branch != "null")
        return to_avro(branch, value)
    if is_timestamp(kind):
        return instant(value)
    if isinstance(kind, dict) and kind.get("type") == "record":
        return record_to_avro(kind, value)
    return value


def record_to_avro(schema, event):
    names = {field["name"] for field in schema["fields"]}
    record = {}
    for field in schema["fields"]:
        name = field["name"]
        if name == "extensions":
            record[name] = {key: value for key, value in event.items() if key not in names}
        elif name in event:
            record[name] = to_avro(field["type"], event[name])
        elif "default" in field:
            record[name] = field["default"]
    return record


def encode(name, event, framing):
    schema = schema_json(name)
    body = io.BytesIO()
    fastavro.schemaless_writer(body, parse_schema(schema), record_to_avro(schema, event))
    if framing == "single":
        return b"\xc3\x01" + fingerprint(name) + body.getvalue()
    return b"\x00" + struct.pack(">I", IDS[name]) + body.getvalue()


def examples():
    """(schema name, event) of every example, by topic, in time order."""
    events = []
    for path in sorted((SCHEMAS / "examples").glob("*.json")):
        events.append((path.stem, json.loads(path.read_text())))
    return sorted(events, key=lambda item: instant(item[1]["time"]))


def key_of(name, event):
    if name == "rate_published":
        data = event["data"]
        return f"{data['gpu_model']}/{data['region']}/{data['tier']}".encode()
    subject = event.get("subject")
    return subject.encode() if subject else None


def produce(bootstrap, framing, rates, deals, metering):
    topics = {"rates": rates, "deals": deals, "metering": metering}
    # zstd batches, as many clients send by default: gpuledger must read them.
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "compression.type": "zstd"})
    errors = []
    count = 0
    for name, event in examples():
        value = json.dumps(event).encode() if framing == "json" else encode(name, event, framing)
        producer.produce(
            topics[TOPIC_OF[name]], value=value, key=key_of(name, event), partition=0,
            on_delivery=lambda error, _message: error and errors.append(error),
        )
        count += 1
    producer.flush(30)
    if errors:
        fail(f"delivery failed: {errors[0]}")
    print(f"produced {count} examples as {framing}")


def read_all(bootstrap, topic):
    """Every committed record value of partition 0 of `topic`, in order."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": "gpuledger-interop", "enable.auto.commit": False,
        "isolation.level": "read_committed", "enable.partition.eof": True, "auto.offset.reset": "earliest",
    })
    consumer.assign([TopicPartition(topic, 0, 0)])
    values = []
    while True:
        message = consumer.poll(20)
        if message is None:
            fail(f"{topic}: no record and no end of partition within 20 s")
        if message.error():
            if message.error().code() == KafkaError._PARTITION_EOF:
                break
            fail(f"{topic}: {message.error()}")
        values.append(message.value())
    consumer.close()
    return values


def same(bootstrap, left, right, inputs_left=None, inputs_right=None):
    a, b = read_all(bootstrap, left), read_all(bootstrap, right)
    if inputs_left:
        # Balances name the input topics they are at: the setups' names differ.
        a = [value.replace(f'"{inputs_left}.'.encode(), b'"INPUT.') for value in a]
        b = [value.replace(f'"{inputs_right}.'.encode(), b'"INPUT.') for value in b]
    if a != b:
        first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        fail(f"{left} ({len(a)} records) and {right} ({len(b)}) part at record {first}")
    print(f"{left} = {right}: {len(a)} records")


def normalise(kind, value):
    """A decoded or JSON value in one comparable form: timestamps as epoch
    milliseconds, absent and null alike."""
    if value is None:
        return None
    if isinstance(kind, list):
        branch = next(branch for branch in kind if branch != "null")
        return normalise(branch, value)
    if is_timestamp(kind):
        moment = value if isinstance(value, datetime.datetime) else instant(value)
        return round(moment.timestamp() * 1000)
    if isinstance(kind, dict) and kind.get("type") == "record":
        return {
            field["name"]: normalise(field["type"], value.get(field["name"]))
            for field in kind["fields"]
        }
    if isinstance(kind, dict) and kind.get("type") == "array":
        return [normalise(kind["items"], item) for item in value]
    return value


def decode(bootstrap, framing, name, avro_topic, json_topic):
    schema = schema_json(name)
    parsed = parse_schema(schema)
    avro, plain = read_all(bootstrap, avro_topic), read_all(bootstrap, json_topic)
    if len(avro) != len(plain):
        fail(f"{avro_topic} has {len(avro)} records, {json_topic} {len(plain)}")
    header = b"\xc3\x01" + fingerprint(name) if framing == "single" else b"\x00" + struct.pack(">I", IDS[name])
    for position, (value, text) in enumerate(zip(avro, plain)):
        if not value.startswith(header):
            fail(f"{avro_topic} record {position}: header {value[:10].hex()}, fastavro expects {header.hex()}")
        record = fastavro.schemaless_reader(io.BytesIO(value[len(header):]), parsed)
        left, right = normalise(schema, record), normalise(schema, json.loads(text))
        if left != right:
            fail(f"{avro_topic} record {position}:\n avro: {left}\n json: {right}")
    print(f"{avro_topic} ({framing}) = {json_topic}: {len(avro)} records decoded by fastavro")


if __name__ == "__main__":
    command, arguments = sys.argv[1], sys.argv[2:]
    {"produce": produce, "same": same, "decode": decode}[command](*arguments)
