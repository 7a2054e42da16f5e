//! Batch mode end to end: files → fold (RocksDB state) → files → audit.

use std::path::Path;
use std::process::Command;

use gpuledger::units::{parse_rfc3339, MINUTE_MS};
use serde_json::Value;

use super::common::{fold, lines, options, sorted, workload, STREAMS};

fn line_time(line: &str) -> Option<i64> {
    let value: Value = serde_json::from_str(line).ok()?;
    parse_rfc3339(value.get("time")?.as_str()?)
}

/// Prefix of a file: the lines before the first whose time is after `cut`.
/// Every prefix line is taken by the merge before any later line, so the
/// prefixes of the three files are a prefix of the merge order.
fn write_prefix(from: &Path, to: &Path, cut: i64) -> usize {
    let text = std::fs::read_to_string(from).unwrap();
    let kept: Vec<&str> = text.lines().take_while(|line| line_time(line).is_none_or(|time| time <= cut)).collect();
    std::fs::write(to, kept.iter().map(|line| format!("{line}\n")).collect::<String>()).unwrap();
    kept.len()
}

#[test]
fn a_resumed_run_continues_where_the_first_stopped_and_equals_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = workload(dir.path(), 400, 30 * MINUTE_MS);
    let whole = dir.path().join("whole");
    fold(&options(&inputs, &whole));

    let prefix = dir.path().join("prefix");
    std::fs::create_dir_all(&prefix).unwrap();
    let cut = parse_rfc3339("2025-10-01T00:00:00Z").unwrap();
    let mut kept = 0;
    for name in ["rates.jsonl", "deals.jsonl", "metering.jsonl"] {
        kept += write_prefix(&inputs.join(name), &prefix.join(name), cut);
    }
    assert!(kept > 100, "the prefix holds a real part of the history");

    let state = dir.path().join("state");
    let mut first = options(&prefix, &dir.path().join("first"));
    first.state_dir = Some(state.clone());
    let first_summary = fold(&first);
    let mut second = options(&inputs, &dir.path().join("second"));
    second.state_dir = Some(state);
    let second_summary = fold(&second);

    let total = fold(&options(&inputs, &dir.path().join("again")));
    assert_eq!(first_summary.records + second_summary.records, total.records, "no record folded twice or skipped");
    assert!(second_summary.records > 0 && first_summary.records > 0);
    for stream in STREAMS {
        let mut resumed = lines(&dir.path().join("first"), stream);
        resumed.extend(lines(&dir.path().join("second"), stream));
        assert_eq!(resumed, lines(&whole, stream), "{stream}: two runs differ from one");
    }
    let final_balances = std::fs::read(dir.path().join("second/balances.json")).unwrap();
    assert_eq!(final_balances, std::fs::read(whole.join("balances.json")).unwrap());
}

#[test]
fn the_same_inputs_give_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = workload(dir.path(), 150, 30 * MINUTE_MS);
    fold(&options(&inputs, &dir.path().join("a")));
    let mut with_state = options(&inputs, &dir.path().join("b"));
    with_state.state_dir = Some(dir.path().join("state"));
    with_state.commit_every = 7;
    fold(&with_state);
    for file in
        ["usage-rated.jsonl", "journal.jsonl", "statements.jsonl", "alerts.jsonl", "dead-letter.jsonl", "balances.json"]
    {
        assert_eq!(
            std::fs::read(dir.path().join("a").join(file)).unwrap(),
            std::fs::read(dir.path().join("b").join(file)).unwrap(),
            "{file}: commit boundaries or the store changed an output"
        );
    }
}

fn without_task_fields(balances: &Path) -> Vec<Value> {
    let mut records: Vec<Value> = serde_json::from_slice(&std::fs::read(balances).unwrap()).unwrap();
    for record in &mut records {
        let object = record.as_object_mut().unwrap();
        // Per task, not per start-up: where the start-up's partition is.
        object.remove("task");
        object.remove("offsets");
        object.remove("digest");
    }
    records
}

/// Dead letters name their partition and offset within it; the rest must agree.
fn dead_letters_without_position(dir: &Path) -> Vec<String> {
    sorted(
        lines(dir, "dead-letter")
            .into_iter()
            .map(|line| {
                let mut value: Value = serde_json::from_str(&line).unwrap();
                let object = value.as_object_mut().unwrap();
                object.remove("partition");
                object.remove("offset");
                value.to_string()
            })
            .collect(),
    )
}

#[test]
fn four_partitions_compute_the_same_figures_as_one() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = workload(dir.path(), 600, 30 * MINUTE_MS);
    let one = dir.path().join("one");
    fold(&options(&inputs, &one));
    let four = dir.path().join("four");
    let mut split = options(&inputs, &four);
    split.partitions = 4;
    split.state_dir = Some(dir.path().join("state4"));
    let summary = fold(&split);
    assert!(summary.startups > 4, "start-ups spread over several partitions");
    // Per-start-up clocks: same records, same figures, whatever the split.
    for stream in ["usage-rated", "journal", "statements", "alerts"] {
        assert_eq!(sorted(lines(&four, stream)), sorted(lines(&one, stream)), "{stream}");
    }
    assert_eq!(dead_letters_without_position(&four), dead_letters_without_position(&one));
    assert_eq!(without_task_fields(&four.join("balances.json")), without_task_fields(&one.join("balances.json")));
    // A state directory keeps its layout.
    let mut other_layout = options(&inputs, &dir.path().join("other"));
    other_layout.partitions = 2;
    other_layout.state_dir = Some(dir.path().join("state4"));
    let error = gpuledger::batch::run(&other_layout).unwrap_err().to_string();
    assert!(error.contains("4 partitions"), "{error}");
}

/// The one place the split matters (spec §4): a late record meets another
/// topic's record of the same start-up. Metering holds usage of start-up
/// "b" (in another partition than "a" for N = 2) and then a late usage of
/// "a"; deals hold a grant of "a" timed between them.
#[test]
fn partitions_matter_only_where_a_late_record_meets_another_topic() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = dir.path().join("inputs");
    std::fs::create_dir_all(&inputs).unwrap();
    let (a, b) = ("acme", "bolt");
    assert_ne!(
        gpuledger::partitioner::partition_for_key(a.as_bytes(), 2),
        gpuledger::partitioner::partition_for_key(b.as_bytes(), 2),
        "the two start-ups must land in different partitions"
    );
    let usage = |startup: &str, id: &str, start: &str, end: &str| {
        format!(
            r#"{{"specversion":"1.0","id":"{id}","source":"m","type":"gpuledger.gpu.usage","subject":"{startup}","time":"{end}","data":{{"cluster_id":"c","region":"r","gpu_model":"H800","tier":"spot","gpu_count":1,"started_at":"{start}","ended_at":"{end}"}}}}"#
        )
    };
    std::fs::write(inputs.join("rates.jsonl"), r#"{"specversion":"1.0","id":"r1","source":"p","type":"gpuledger.rate.published","time":"2025-01-01T00:00:00Z","data":{"gpu_model":"H800","region":"r","tier":"spot","currency":"USD","price_per_gpu_hour":3600000,"effective_from":"2025-01-01T00:00:00Z"}}"#.to_owned() + "\n").unwrap();
    std::fs::write(inputs.join("deals.jsonl"), format!(r#"{{"specversion":"1.0","id":"g","source":"crm","type":"gpuledger.credit.granted","subject":"{a}","time":"2025-01-01T00:30:00Z","data":{{"grant_id":"g1","face_amount":100000000,"currency":"USD","effective_at":"2025-01-01T00:00:00Z","consideration":"cash"}}}}"#) + "\n").unwrap();
    let metering = [
        usage(b, "b1", "2025-01-01T00:00:00Z", "2025-01-01T01:00:00Z"),
        usage(a, "a-late", "2025-01-01T00:10:00Z", "2025-01-01T00:20:00Z"),
    ];
    std::fs::write(inputs.join("metering.jsonl"), metering.join("\n") + "\n").unwrap();

    fold(&options(&inputs, &dir.path().join("one")));
    let mut two = options(&inputs, &dir.path().join("two"));
    two.partitions = 2;
    fold(&two);
    let draws = |name: &str| -> Value {
        let line =
            lines(&dir.path().join(name), "usage-rated").into_iter().find(|line| line.contains("a-late")).unwrap();
        serde_json::from_str::<Value>(&line).unwrap()["draws"].clone()
    };
    // One partition: b1 (01:00) waits behind the grant (00:30), so a-late
    // arrives after the grant and draws from it. Two partitions: a-late is at
    // its head before the grant (00:20 < 00:30) and finds no grant: overage.
    assert_eq!(draws("one").as_array().unwrap().len(), 1);
    assert_eq!(draws("two").as_array().unwrap().len(), 0);
}

#[test]
fn a_generated_workload_folds_and_audits_clean() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = workload(dir.path(), 800, 5 * MINUTE_MS);
    let out = dir.path().join("out");
    let summary = fold(&options(&inputs, &out));
    assert!(summary.usage_accepted > 10_000);
    let report = gpuledger::audit::audit(&out, false).unwrap();
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
    // Every reason the generator plants reaches the dead-letter file.
    let reasons: std::collections::BTreeSet<String> = lines(&out, "dead-letter")
        .iter()
        .map(|line| serde_json::from_str::<Value>(line).unwrap()["reason"].as_str().unwrap().to_owned())
        .collect();
    for reason in gpuledger::events::Reason::OF_INPUT {
        assert!(reasons.contains(reason.as_str()), "no {reason} dead letter in {reasons:?}");
    }
}

fn binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gpuledger"))
}

#[test]
fn the_cli_runs_gen_fold_audit_and_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("w");
    let trace = super::common::philly_trace();
    let status =
        binary().args(["gen", "--jobs", "50", "--out"]).arg(&work).arg("--trace").arg(&trace).status().unwrap();
    assert!(status.success());
    let out = dir.path().join("o");
    let output = binary()
        .args(["fold", "--rates"])
        .arg(work.join("rates.jsonl"))
        .arg("--deals")
        .arg(work.join("deals.jsonl"))
        .arg("--metering")
        .arg(work.join("metering.jsonl"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let audit = binary().arg("audit").arg(&out).output().unwrap();
    assert!(audit.status.success());
    assert!(String::from_utf8_lossy(&audit.stdout).contains("no violation"));

    // A tampered journal is caught: one draw's revenue no longer matches.
    let journal = out.join("journal.jsonl");
    let text = std::fs::read_to_string(&journal).unwrap();
    let first_draw = text.find("\"cause\":\"draw\"").unwrap();
    let first_amount = first_draw + text[first_draw..].find("\"amount\":").unwrap() + "\"amount\":".len();
    let tampered = format!("{}9{}", &text[..first_amount], &text[first_amount..]);
    std::fs::write(&journal, tampered).unwrap();
    let audit = binary().arg("audit").arg(&out).output().unwrap();
    assert_eq!(audit.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&audit.stdout).contains("violation: "));

    // Missing input: a message and a non-zero exit, no panic.
    let missing = binary()
        .args(["fold", "--rates", "/nonexistent/rates.jsonl", "--deals", "x", "--metering", "y", "--out"])
        .arg(dir.path().join("never"))
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("error: rates input /nonexistent/rates.jsonl is not a readable file"), "{stderr}");
    let bad_duration = binary().args(["fold", "--dedup-window", "5 weeks"]).output().unwrap();
    assert_eq!(bad_duration.status.code(), Some(2));
}

#[test]
fn gen_is_deterministic_per_seed_and_credits_the_trace() {
    let dir = tempfile::tempdir().unwrap();
    let make = |name: &str, seed: u64| {
        let out = dir.path().join(name);
        gpuledger::workload::generate(&gpuledger::workload::GenOptions {
            trace: super::common::philly_trace(),
            out: out.clone(),
            seed,
            jobs: Some(300),
            slice: 5 * MINUTE_MS,
        })
        .unwrap();
        out
    };
    let (a, b, c) = (make("a", 1), make("b", 1), make("c", 2));
    for file in ["rates.jsonl", "deals.jsonl", "metering.jsonl"] {
        assert_eq!(std::fs::read(a.join(file)).unwrap(), std::fs::read(b.join(file)).unwrap(), "{file}");
    }
    assert_ne!(std::fs::read(a.join("metering.jsonl")).unwrap(), std::fs::read(c.join("metering.jsonl")).unwrap());
    let attribution = std::fs::read_to_string(a.join("ATTRIBUTION.md")).unwrap();
    assert!(attribution.contains("CC-BY-4.0") && attribution.contains("USENIX ATC '19"));
}

#[test]
fn balance_reads_a_state_directory_read_only_even_while_it_is_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = workload(dir.path(), 200, 30 * MINUTE_MS);
    let out = dir.path().join("out");
    let state = dir.path().join("state");
    let mut options = options(&inputs, &out);
    options.state_dir = Some(state.clone());
    fold(&options);
    let expected: Vec<Value> = serde_json::from_slice(&std::fs::read(out.join("balances.json")).unwrap()).unwrap();
    let startup = expected[0]["startup"].as_str().unwrap().to_owned();
    // Another process holds the state directory (as a running processor would).
    let _writer = gpuledger::store::rocks::RocksStore::open(&state).unwrap();
    let output =
        binary().args(["balance", "--json", "--startup", &startup, "--state-dir"]).arg(&state).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let shown: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(shown, expected[0], "the state directory's figures are the batch run's final balances");
    let table = binary()
        .args(["balance", "--startup", &startup, "--currency", "USD", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&table.stdout).contains("contract_liability"));
    let missing = binary().args(["balance", "--startup", "nobody", "--state-dir"]).arg(&state).output().unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no start-up \"nobody\""));
}

#[test]
fn verify_finds_where_two_state_directories_part() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = workload(dir.path(), 200, 30 * MINUTE_MS);
    let run = |name: &str, inputs: &Path| {
        let mut options = options(inputs, &dir.path().join(format!("out-{name}")));
        options.state_dir = Some(dir.path().join(format!("state-{name}")));
        fold(&options);
        dir.path().join(format!("state-{name}"))
    };
    let verify = |left: &Path, right: &Path| {
        let output = binary().arg("verify").arg("--state-dir").arg(left).arg("--against").arg(right).output().unwrap();
        (output.status.code(), String::from_utf8(output.stdout).unwrap())
    };
    let (first, second) = (run("a", &inputs), run("b", &inputs));
    let (code, text) = verify(&first, &second);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("task 0: identical through record") && text.contains("consistent: 1 tasks"), "{text}");

    // One usage event in the middle of the log changed: the report names the
    // checkpoint window (at most 256 records) that holds its offset.
    let metering = std::fs::read_to_string(inputs.join("metering.jsonl")).unwrap();
    let mut lines: Vec<String> = metering.lines().map(str::to_owned).collect();
    let changed_at = (lines.len() / 2..lines.len())
        .find(|index| lines[*index].contains("gpuledger.gpu.usage") && lines[*index].contains("\"gpu_count\":"))
        .unwrap();
    lines[changed_at] = lines[changed_at].replacen("\"gpu_count\":", "\"gpu_count\":9", 1);
    let changed = dir.path().join("changed");
    std::fs::create_dir_all(&changed).unwrap();
    std::fs::copy(inputs.join("rates.jsonl"), changed.join("rates.jsonl")).unwrap();
    std::fs::copy(inputs.join("deals.jsonl"), changed.join("deals.jsonl")).unwrap();
    std::fs::write(changed.join("metering.jsonl"), lines.join("\n") + "\n").unwrap();
    let other = run("c", &changed);
    let (code, text) = verify(&first, &other);
    assert_eq!(code, Some(1), "{text}");
    let offsets = |marker: &str| -> Vec<i64> {
        let start = text.find(marker).unwrap_or_else(|| panic!("no {marker:?} in {text}")) + marker.len();
        let list = &text[start..start + text[start..].find(']').unwrap()];
        list.split(", ").map(|number| number.parse().unwrap()).collect()
    };
    let (agreed, parted) = (offsets("(offsets ["), offsets(": offsets ["));
    assert!(
        agreed[2] <= changed_at as i64 && (changed_at as i64) < parted[2],
        "metering offset {changed_at} must lie in the reported window: {text}"
    );

    // A run over the first half of the log agrees with the whole run as far as it goes.
    let half = dir.path().join("half");
    std::fs::create_dir_all(&half).unwrap();
    std::fs::copy(inputs.join("rates.jsonl"), half.join("rates.jsonl")).unwrap();
    std::fs::copy(inputs.join("deals.jsonl"), half.join("deals.jsonl")).unwrap();
    let metering_lines: Vec<&str> = metering.lines().collect();
    std::fs::write(half.join("metering.jsonl"), metering_lines[..metering_lines.len() / 2].join("\n") + "\n").unwrap();
    let shorter = run("d", &half);
    let (code, text) = verify(&shorter, &first);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("the second run goes on to record"), "{text}");
}
