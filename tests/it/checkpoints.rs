//! Checkpoints of task state (issue: restore in time proportional to
//! state): taken into a real S3-compatible server (moto) or a directory,
//! restored by tasks that lose their disk, verified, never holding
//! uncommitted state. Real broker, real RocksDB.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::Value;

use super::common::workload;
use super::harness::{
    assert_exported_equals_fold_in, assert_exported_equals_replay, borrowed, checkpoint_command, gpuledger,
    gpuledger_with, loaded_broker, manifests, path, produce_files, Broker, Instance, S3,
};
use gpuledger::units::MINUTE_MS;

/// `run --exit-when-caught-up` with `environment`; its counters.
fn run_caught_up(broker: &Broker, state: &Path, environment: &[(&str, &str)]) -> (Value, String) {
    let output = gpuledger_with(broker, &["run", "--exit-when-caught-up", "--state-dir", path(state)], environment);
    let stdout = String::from_utf8(output.stdout).unwrap();
    (serde_json::from_str(stdout.lines().last().unwrap()).unwrap(), String::from_utf8(output.stderr).unwrap())
}

/// The newest complete checkpoint of each task, and all of them per task.
fn by_task(manifests: &[Value]) -> BTreeMap<u64, Vec<Value>> {
    let mut tasks: BTreeMap<u64, Vec<Value>> = BTreeMap::new();
    for manifest in manifests {
        tasks.entry(manifest["task"].as_u64().unwrap()).or_default().push(manifest.clone());
    }
    for list in tasks.values_mut() {
        list.sort_by_key(|manifest| manifest["records"].as_u64().unwrap());
    }
    tasks
}

/// Replaces a checkpoint's file in the S3 server with its first half,
/// through the same object store client the processor uses.
fn truncate_object(s3: &S3, prefix: &str, task: u32, id: &str, name: &str) {
    let environment = s3.environment(prefix);
    let options = environment
        .iter()
        .filter_map(|(name, value)| {
            Some((name.strip_prefix("GPULEDGER_CHECKPOINTS__OPTIONS__")?.to_lowercase(), value.clone()))
        })
        .collect();
    let config = gpuledger::config::CheckpointConfig {
        store: Some(format!("s3://{}/{prefix}", s3.bucket)),
        options,
        ..Default::default()
    };
    let store = gpuledger::checkpoint::CheckpointStore::open(&config, "gpuledger").unwrap();
    let object = store.object(task, id, name);
    let bytes = store.get(&object).unwrap().expect("the checkpoint's file");
    store.put(&object, bytes[..bytes.len() / 2].to_vec()).unwrap();
}

/// Through S3: a task that lost its disk restores its newest checkpoint;
/// when that one's object is truncated, the checksum catches it and the
/// older checkpoint is used, the rest re-folded — the outputs stay exact.
#[test]
fn a_truncated_checkpoint_in_s3_is_detected_and_the_older_one_restored() {
    let s3 = S3::start();
    let environment = s3.environment("truncated");
    let environment = borrowed(&environment);
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap().keep();
    let inputs = workload(&dir, 300, 5 * MINUTE_MS);
    gpuledger(&broker, &["topics", "create", "--partitions", "2"]);
    // Two stretches of history, each run ending with a checkpoint of every task.
    let metering = std::fs::read_to_string(inputs.join("metering.jsonl")).unwrap();
    let lines: Vec<&str> = metering.lines().collect();
    let (first, second) = lines.split_at(lines.len() / 2);
    let first_file = dir.join("metering-1.jsonl");
    let second_file = dir.join("metering-2.jsonl");
    std::fs::write(&first_file, first.join("\n") + "\n").unwrap();
    std::fs::write(&second_file, second.join("\n") + "\n").unwrap();
    produce_files(&broker, &inputs.join("rates.jsonl"), &inputs.join("deals.jsonl"), &first_file);
    let state = dir.join("state");
    let (one, _) = run_caught_up(&broker, &state, &environment);
    assert_eq!(one["checkpoints_taken"], 2, "{one}");
    gpuledger(&broker, &["produce", "--metering", path(&second_file)]);
    let (two, _) = run_caught_up(&broker, &state, &environment);
    assert_eq!(two["checkpoints_taken"], 2, "{two}");

    let tasks = by_task(&manifests(&environment));
    let (older, newest) = (&tasks[&0][0], &tasks[&0][1]);
    assert!(newest["records"].as_u64() > older["records"].as_u64(), "{tasks:?}");
    let file = newest["files"].as_array().unwrap().iter().max_by_key(|file| file["bytes"].as_u64()).unwrap();
    truncate_object(&s3, "truncated", 0, newest["id"].as_str().unwrap(), file["name"].as_str().unwrap());

    // `checkpoint verify` finds it.
    let verify = checkpoint_command(&["verify", "--task", "0", "--id", newest["id"].as_str().unwrap()], &environment);
    let report = String::from_utf8_lossy(&verify.stdout);
    assert!(!verify.status.success() && report.contains("corrupt"), "{report}");
    let verify_all = checkpoint_command(&["verify", "--task", "1"], &environment);
    assert!(verify_all.status.success(), "{}", String::from_utf8_lossy(&verify_all.stdout));

    // The disk is lost: task 0 falls back to the older checkpoint, task 1 takes its newest.
    std::fs::remove_dir_all(&state).unwrap();
    let (restored, log) = run_caught_up(&broker, &state, &environment);
    assert!(log.contains("corrupt"), "no warning about the corrupt checkpoint:\n{log}");
    let expected_restored = older["records"].as_u64().unwrap() + tasks[&1][1]["records"].as_u64().unwrap();
    assert_eq!(restored["records_restored"].as_u64(), Some(expected_restored), "{restored}");
    let expected_refolded = newest["records"].as_u64().unwrap() - older["records"].as_u64().unwrap();
    assert_eq!(restored["records_refolded"].as_u64(), Some(expected_refolded), "{restored}");
    assert_eq!(restored["records_folded"], 0, "{restored}");
    assert_exported_equals_fold_in(&broker, &inputs, &dir, "truncated", 2, &[]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The last `owned=[…]` set an instance logged.
fn owned(instance: &Instance) -> BTreeSet<u32> {
    let Some(line) = instance.seen().iter().rev().find(|line| line.contains("owned=[")) else { return BTreeSet::new() };
    let list = line.split("owned=[").nth(1).unwrap().split(']').next().unwrap();
    list.split(',').filter_map(|part| part.trim().parse().ok()).collect()
}

/// Reads the instances' logs until `done` holds of their owned sets (120 s at most).
fn wait_for_owners(instances: &mut [&mut Instance], what: &str, done: impl Fn(&[BTreeSet<u32>]) -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let sets: Vec<BTreeSet<u32>> = instances.iter().map(|instance| owned(instance)).collect();
        if done(&sets) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: owned sets {sets:?} after 120 s");
        for instance in instances.iter_mut() {
            instance.take_lines(std::time::Duration::from_millis(50));
        }
    }
}

/// Waits until `instance` owns all `partitions` after another member left.
/// Instances of a group are stopped one at a time in these tests: when a
/// member leaves while the group is rebalancing after another left, Tansu
/// never assigns the next member that joins (docs/kafka.md, "Known broker
/// limitations").
fn wait_until_it_owns_all(instance: &mut Instance, partitions: usize) {
    wait_for_owners(&mut [instance], "the remaining instance owns every partition", |sets| sets[0].len() == partitions);
}

/// `(task, records)` of each "task restored from a checkpoint" line.
fn restores(instance: &Instance) -> Vec<(u32, u64)> {
    let field = |line: &str, name: &str| -> u64 {
        line.split(&format!(" {name}=")).nth(1).unwrap().split(' ').next().unwrap().parse().unwrap()
    };
    instance
        .seen()
        .iter()
        .filter(|line| line.contains("task restored from a checkpoint"))
        .map(|line| (field(line, "task") as u32, field(line, "records")))
        .collect()
}

/// Three instances of one group on 8 partitions, checkpoints in S3. C folds
/// every task and checkpoints each; A and B join (incremental rebalancing
/// hands them some of C's tasks); C is killed with its disk. A and B take
/// every task over from checkpoints, re-folding at most what came after
/// them, and the outputs equal batch mode's.
#[test]
fn three_instances_one_killed_with_its_disk_its_tasks_restore_from_checkpoints() {
    let s3 = S3::start();
    let environment = s3.environment("takeover");
    let mut environment = borrowed(&environment);
    environment.push(("GPULEDGER_CHECKPOINTS__INTERVAL", "1s"));
    let (broker, dir, inputs) = loaded_broker(1_500, 5 * MINUTE_MS, 8);
    let (state_a, state_b, state_c) = (dir.join("state-a"), dir.join("state-b"), dir.join("state-c"));
    let mut c = Instance::start_with(&broker, &state_c, &[], &environment);
    for task in 0..8 {
        c.wait_for(&format!("checkpoint taken task={task} "), 1);
    }
    let mut a = Instance::start_with(&broker, &state_a, &[], &environment);
    let mut b = Instance::start_with(&broker, &state_b, &[], &environment);
    wait_for_owners(&mut [&mut a, &mut b, &mut c], "three owners", |sets| {
        sets.iter().all(|set| !set.is_empty()) && sets.iter().map(BTreeSet::len).sum::<usize>() == 8
    });
    let victims = owned(&c);
    eprintln!("owners before the kill: a {:?} b {:?} c {victims:?}", owned(&a), owned(&b));
    c.child.kill().unwrap(); // SIGKILL
    c.child.wait().unwrap();
    std::fs::remove_dir_all(&state_c).unwrap();
    wait_for_owners(&mut [&mut a, &mut b], "two owners of everything", |sets| {
        sets.iter().map(BTreeSet::len).sum::<usize>() == 8
            && sets.iter().flatten().copied().collect::<BTreeSet<u32>>().len() == 8
    });
    let taken: Vec<(u32, u64)> = restores(&a).into_iter().chain(restores(&b)).collect();
    assert!(victims.iter().all(|task| taken.iter().any(|(restored, _)| restored == task)), "{taken:?} {victims:?}");
    // Every task A and B took came from a checkpoint (they had no state).
    let took = |instance: &Instance| {
        instance
            .seen()
            .iter()
            .filter(|line| line.contains("partitions assigned"))
            .map(|line| {
                let list = line.split("partitions=[").nth(1).unwrap().split(']').next().unwrap();
                list.split(',').filter(|part| !part.trim().is_empty()).count()
            })
            .sum::<usize>()
    };
    assert_eq!(taken.len(), took(&a) + took(&b), "a task was taken without a checkpoint");
    // A planned stop of A: B restores A's tasks from A's final checkpoints.
    let taken_by_a = restores(&a);
    let (exit_a, stats_a) = a.terminate_with_stats();
    wait_until_it_owns_all(&mut b, 8);
    let taken: Vec<(u32, u64)> = taken_by_a.into_iter().chain(restores(&b)).collect();
    let (exit_b, stats_b) = b.terminate_with_stats();
    assert!(exit_a.success() && exit_b.success());
    let (stats_a, stats_b) = (stats_a.unwrap(), stats_b.unwrap());

    // Re-folded on takeover: at most the records after each checkpoint.
    let folded = dir.join("fold-per-task");
    let mut options = super::common::options(&inputs, &folded.join("out"));
    options.partitions = 8;
    options.state_dir = Some(folded.join("state"));
    super::common::fold(&options);
    let batch = gpuledger::store::rocks::RocksStore::open_read_only(&folded.join("state")).unwrap();
    let total = |task: u32| gpuledger::store::load_task_meta(&batch, task).unwrap().folded;
    let after_checkpoints: u64 = taken.iter().map(|(task, records)| total(*task) - records).sum();
    let refolded = stats_a["records_refolded"].as_u64().unwrap() + stats_b["records_refolded"].as_u64().unwrap();
    eprintln!("restores {taken:?}; re-folded {refolded}, at most {after_checkpoints}");
    assert!(refolded <= after_checkpoints, "re-folded {refolded} > {after_checkpoints} after the checkpoints");
    let restored = stats_a["records_restored"].as_u64().unwrap() + stats_b["records_restored"].as_u64().unwrap();
    assert_eq!(restored, taken.iter().map(|(_, records)| records).sum::<u64>());

    // The rest of the input, by one instance (a bounded wait: the log shows why on failure).
    let mut last = Instance::start_with(&broker, &state_a, &["--exit-when-caught-up"], &environment);
    last.wait_for("stopping", 1);
    assert!(last.child.wait().unwrap().success());
    assert_exported_equals_fold_in(&broker, &inputs, &dir, "takeover", 8, &[]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Transactions abort (fault injection) while checkpoints are taken, as
/// the input arrives in stretches: every checkpoint lies on the committed
/// history — a progress record of a committed cycle ends at its offsets
/// with its digest — and a restore from them re-folds nothing, its outputs
/// those a replay of the recorded history derives.
#[test]
fn checkpoints_taken_while_transactions_abort_hold_only_committed_state() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap().keep();
    let inputs = workload(&dir, 600, 30 * MINUTE_MS);
    gpuledger(&broker, &["topics", "create", "--partitions", "2"]);
    let stretches = metering_stretches(&inputs, &dir, 5);
    produce_files(&broker, &inputs.join("rates.jsonl"), &inputs.join("deals.jsonl"), &stretches[0]);
    let store = format!("file://{}", dir.join("checkpoints").display());
    let environment = [
        ("GPULEDGER_PROCESSOR__INJECT_ABORT_EVERY", "3"),
        ("GPULEDGER_PROCESSOR__COMMIT_INTERVAL", "10ms"),
        ("GPULEDGER_CHECKPOINTS__STORE", store.as_str()),
        ("GPULEDGER_CHECKPOINTS__INTERVAL_RECORDS", "1"),
        ("GPULEDGER_CHECKPOINTS__KEEP", "1000"),
    ];
    let state = dir.join("state");
    let mut instance = Instance::start_with(&broker, &state, &[], &environment);
    for (index, stretch) in stretches.iter().enumerate().skip(1) {
        // A checkpoint of what came so far, then more input.
        instance.wait_for("checkpoint taken", index);
        gpuledger(&broker, &["produce", "--metering", path(stretch)]);
    }
    instance.wait_for("checkpoint taken", stretches.len());
    let (exit, stats) = instance.terminate_with_stats();
    assert!(exit.success());
    let stats = stats.unwrap();
    eprintln!("run with injected aborts: {stats}");
    assert!(stats["transactions_aborted"].as_u64().unwrap() >= 1, "{stats}");
    let tasks = by_task(&manifests(&environment));
    assert!(tasks.values().map(Vec::len).sum::<usize>() >= 5, "too few checkpoints to show anything: {tasks:?}");

    let config = gpuledger::config::Config::load(
        None,
        &BTreeMap::new(),
        &gpuledger::config::Overrides { bootstrap_servers: Some(broker.address.clone()), ..Default::default() },
    )
    .unwrap();
    for (task, list) in &tasks {
        let entries = gpuledger::kafka::progress::read_progress(&config, *task as u32).unwrap();
        let offsets = |manifest: &Value| {
            let offsets = &manifest["offsets"];
            gpuledger::fold::state::Offsets::new(
                offsets["rates"].as_i64().unwrap(),
                offsets["deals"].as_i64().unwrap(),
                offsets["metering"].as_i64().unwrap(),
            )
        };
        // The graceful stop's checkpoint is at the group's committed offsets.
        let committed = offsets(list.last().unwrap()).keyed();
        for manifest in list {
            let digest = manifest["digest"].as_str().unwrap();
            assert!(
                gpuledger::kafka::progress::on_committed_chain(&entries, offsets(manifest), digest, committed),
                "task {task}: checkpoint {} is not on the committed history",
                manifest["id"]
            );
        }
    }
    // A restore from them is exact.
    std::fs::remove_dir_all(&state).unwrap();
    let (restored, _) = run_caught_up(&broker, &state, &environment);
    let last_records: u64 = tasks.values().map(|list| list.last().unwrap()["records"].as_u64().unwrap()).sum();
    assert_eq!(restored["records_restored"].as_u64(), Some(last_records), "{restored}");
    assert_eq!(restored["records_refolded"], 0, "{restored}");
    assert_exported_equals_replay(&broker, &dir, "aborts-checkpoints");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `replay --from-checkpoint` reads only what came after a checkpoint and
/// builds the state a replay from offset 0 builds (same offsets and output
/// digest, by `verify`), writing the outputs the full replay derived after
/// it; without an id each task starts from its newest checkpoint.
#[test]
fn a_replay_from_a_checkpoint_reads_only_the_rest_and_builds_the_same_state() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap().keep();
    let inputs = workload(&dir, 600, 30 * MINUTE_MS);
    gpuledger(&broker, &["topics", "create", "--partitions", "2"]);
    let stretches = metering_stretches(&inputs, &dir, 2);
    produce_files(&broker, &inputs.join("rates.jsonl"), &inputs.join("deals.jsonl"), &stretches[0]);
    let store = format!("file://{}", dir.join("checkpoints").display());
    let environment = [("GPULEDGER_CHECKPOINTS__STORE", store.as_str())];
    // Each run ends with a checkpoint of every task.
    let live = dir.join("live");
    run_caught_up(&broker, &live, &environment);
    gpuledger(&broker, &["produce", "--metering", path(&stretches[1])]);
    run_caught_up(&broker, &live, &environment);
    let tasks = by_task(&manifests(&environment));
    assert_eq!(tasks[&0].len(), 2, "{tasks:?}");
    let older = &tasks[&0][0];

    let replay = |name: &str, extra: &[&str]| -> Value {
        let state = dir.join(format!("state-{name}"));
        let out = dir.join(format!("out-{name}"));
        let mut args = vec!["replay", "--state-dir", path(&state), "--out", path(&out)];
        args.extend_from_slice(extra);
        let output = gpuledger_with(&broker, &args, &environment);
        serde_json::from_str(String::from_utf8(output.stdout).unwrap().lines().last().unwrap()).unwrap()
    };
    let full = replay("full", &["--partitions", "0"]);
    let from = replay("from", &["--partitions", "0", "--from-checkpoint", older["id"].as_str().unwrap()]);
    let records = older["records"].as_u64().unwrap();
    assert_eq!(from["records_restored"].as_u64(), Some(records), "{from}");
    assert_eq!(
        from["records_read"].as_u64().unwrap(),
        full["records_read"].as_u64().unwrap() - records,
        "{from} {full}"
    );
    let verify = |state: &str, against: &Path| {
        let output = gpuledger(&broker, &["verify", "--state-dir", path(&dir.join(state)), "--against", path(against)]);
        let report = String::from_utf8(output.stdout).unwrap();
        assert!(report.contains("no difference"), "{report}");
    };
    verify("state-from", &dir.join("state-full"));
    // Its outputs are the full replay's after the checkpoint.
    let mut written = 0;
    for stream in super::common::STREAMS {
        let all: BTreeSet<String> = super::common::lines(&dir.join("out-full"), stream).into_iter().collect();
        for line in super::common::lines(&dir.join("out-from"), stream) {
            assert!(all.contains(&line), "{stream}: {line} is not among the full replay's outputs");
            written += 1;
        }
    }
    assert_eq!(from["outputs"].as_u64(), Some(written));
    assert!(written > 0 && written < full["outputs"].as_u64().unwrap(), "{written} {full}");

    // Every task from its newest: the graceful stop's, at the committed offsets.
    let newest = replay("newest", &["--from-checkpoint"]);
    assert_eq!(newest["records_read"], 0, "{newest}");
    verify("state-newest", &live);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The metering file cut into `count` files of consecutive lines, to
/// produce a stretch at a time.
fn metering_stretches(inputs: &Path, dir: &Path, count: usize) -> Vec<std::path::PathBuf> {
    let metering = std::fs::read_to_string(inputs.join("metering.jsonl")).unwrap();
    let lines: Vec<&str> = metering.lines().collect();
    lines
        .chunks(lines.len().div_ceil(count))
        .enumerate()
        .map(|(index, chunk)| {
            let file = dir.join(format!("metering-{index}.jsonl"));
            std::fs::write(&file, chunk.join("\n") + "\n").unwrap();
            file
        })
        .collect()
}

/// The instant a log line was written (its leading RFC 3339 timestamp).
fn logged_at(line: &str) -> i64 {
    gpuledger::units::parse_rfc3339(line.split_whitespace().next().unwrap()).expect("a timestamped log line")
}

/// Incremental rebalancing: when a second instance joins, only the
/// partitions that change owner stop; the first instance's other tasks
/// keep folding and committing while they move — shown by their progress
/// records (one per committed cycle) timed between the revocation and the
/// moved tasks' start on the new owner.
#[test]
fn a_joining_instance_moves_only_its_partitions_and_the_others_keep_folding() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap().keep();
    let inputs = workload(&dir, 1_500, 5 * MINUTE_MS);
    gpuledger(&broker, &["topics", "create", "--partitions", "4"]);
    let stretches = metering_stretches(&inputs, &dir, 60);
    produce_files(&broker, &inputs.join("rates.jsonl"), &inputs.join("deals.jsonl"), &stretches[0]);
    let (state_a, state_b) = (dir.join("state-a"), dir.join("state-b"));
    let mut a = Instance::start(&broker, &state_a, &[]);
    a.wait_for("task starting", 4);
    // Input keeps arriving, a stretch at a time, until the move is over.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producer = {
        let (stop, address, stretches) = (std::sync::Arc::clone(&stop), broker.address.clone(), stretches.clone());
        std::thread::spawn(move || {
            let mut produced = 1;
            while produced < stretches.len() && !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let status = std::process::Command::new(env!("CARGO_BIN_EXE_gpuledger"))
                    .args(["produce", "--metering", path(&stretches[produced]), "--bootstrap-servers", &address])
                    .env("GPULEDGER_LOG", "warn")
                    .status()
                    .unwrap();
                assert!(status.success());
                produced += 1;
            }
            produced
        })
    };
    let mut b = Instance::start(&broker, &state_b, &[]);
    let started = b.line_with("task starting");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let produced = producer.join().unwrap();
    for stretch in &stretches[produced..] {
        gpuledger(&broker, &["produce", "--metering", path(stretch)]);
    }
    a.take_lines(std::time::Duration::from_millis(0));
    let revoked: Vec<String> = a.seen().iter().filter(|line| line.contains("partitions revoked")).cloned().collect();
    assert_eq!(revoked.len(), 1, "one revocation, of the moving partitions only: {revoked:?}");
    let moved = owned(&b);
    let kept = owned(&a);
    eprintln!("moved to b: {moved:?}; kept by a: {kept:?}; {}", revoked[0]);
    assert!(!moved.is_empty() && !kept.is_empty() && moved.is_disjoint(&kept));
    let (from, to) = (logged_at(&revoked[0]), logged_at(&started));
    assert!(produced > 1 && from < to, "the move happened while input arrived ({produced} stretches)");

    let config = gpuledger::config::Config::load(
        None,
        &BTreeMap::new(),
        &gpuledger::config::Overrides { bootstrap_servers: Some(broker.address.clone()), ..Default::default() },
    )
    .unwrap();
    for task in &kept {
        let cycles = gpuledger::kafka::progress::read_progress(&config, *task).unwrap();
        let during = cycles.iter().filter(|cycle| cycle.timestamp.is_some_and(|at| from < at && at < to)).count();
        assert!(during > 0, "task {task} committed nothing between the revocation and the move's end");
    }
    assert!(a.terminate().success());
    wait_until_it_owns_all(&mut b, 4);
    assert!(b.terminate().success());
    let last = run_until_caught_up_in(&broker, &state_a);
    eprintln!("final run: {last}");
    assert_exported_equals_replay(&broker, &dir, "incremental");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn run_until_caught_up_in(broker: &Broker, state: &Path) -> Value {
    run_caught_up(broker, state, &[]).0
}
