"""Compares the Quix peer's final balances (latest record per start-up of
`<prefix>.balances`) with gpuledger's (`balances.json` of `gpuledger fold`
or `export`): per start-up and currency usage cost, usage count, consumed
face and overage, and per grant the face consumed and its state. Exit 1 and
the differences when they do not agree.

    python compare.py --broker HOST:PORT --gpuledger DIR/balances.json [--prefix quix]
"""

import argparse
import json
import sys

from confluent_kafka import Consumer, KafkaError, TopicPartition


def peer_balances(broker, topic):
    consumer = Consumer({"bootstrap.servers": broker, "group.id": "quix-peer-compare", "enable.auto.commit": False,
                         "enable.partition.eof": True, "isolation.level": "read_committed"})
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, partition, 0) for partition in partitions])
    latest, ended = {}, 0
    while ended < len(partitions):
        message = consumer.poll(10)
        if message is None:
            raise SystemExit(f"compare: {topic} gave no record and no end within 10 s")
        if message.error():
            if message.error().code() == KafkaError._PARTITION_EOF:
                ended += 1
                continue
            raise SystemExit(f"compare: {message.error()}")
        record = json.loads(message.value())
        latest[record["startup"]] = record
    consumer.close()
    return latest


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--broker", required=True)
    parser.add_argument("--gpuledger", required=True)
    parser.add_argument("--prefix", default="quix")
    arguments = parser.parse_args()
    peer = peer_balances(arguments.broker, f"{arguments.prefix}.balances")
    ours = json.load(open(arguments.gpuledger))
    differences, compared = [], 0
    for balance in ours:
        startup = balance["startup"]
        for block in balance["currencies"]:
            if block["usage_count"] == 0:
                continue
            compared += 1
            theirs = peer.get(startup, {}).get("figures", {}).get(block["currency"])
            if theirs is None:
                differences.append(f"{startup} {block['currency']}: no usage in the peer")
                continue
            for field in ("usage_cost", "usage_count", "consumed_face", "overage"):
                if theirs[field] != block[field]:
                    differences.append(f"{startup} {block['currency']} {field}: gpuledger {block[field]}, peer {theirs[field]}")
            peer_grants = peer[startup].get("grants", {})
            for grant in block["grants"]:
                other = peer_grants.get(grant["grant_id"])
                if other is None or other["consumed"] != grant["consumed_face"]:
                    differences.append(f"{startup} grant {grant['grant_id']}: gpuledger consumed {grant['consumed_face']}, "
                                       f"peer {None if other is None else other['consumed']}")
    for line in differences:
        print(line)
    print(json.dumps({"startups_currencies_compared": compared, "differences": len(differences)}))
    return 1 if differences or compared == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
