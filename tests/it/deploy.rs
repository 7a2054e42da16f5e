//! The deploy kit cannot run here (no Docker engine, no cluster): every
//! manifest, the compose file, the alert rules and the dashboard must at
//! least parse, name the endpoints and ports `run` serves, and use only
//! metrics gpuledger exports.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy").join(file)
}

/// Every YAML document of a file, as JSON values.
fn documents(file: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(deploy(file)).unwrap();
    serde_norway::Deserializer::from_str(&text)
        .map(|document| {
            <Value as serde::Deserialize>::deserialize(document).unwrap_or_else(|error| panic!("{file}: {error}"))
        })
        .collect()
}

/// The metric names gpuledger exports (from a live registry's exposition).
fn exported_metrics() -> BTreeSet<String> {
    let metrics = gpuledger::serve::Metrics::new(["r".into(), "d".into(), "m".into()], None);
    let mut stats = gpuledger::kafka::live::RunStats::default();
    stats.dead_letters.insert("unknown_startup".into(), 1);
    metrics.publish(&stats);
    metrics.set_tasks(1, &[(("d".to_owned(), 0), 0)].into());
    let mut names = BTreeSet::new();
    for line in metrics.render().lines().filter(|line| !line.starts_with('#') && !line.is_empty()) {
        let name = line.split(['{', ' ']).next().unwrap();
        names.insert(name.to_owned());
    }
    names
}

/// Metric names in a PromQL expression (identifiers followed by `{`, `[`,
/// `)` or a space that start like one of ours).
fn metrics_in(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut current = String::new();
    for character in expr.chars().chain(std::iter::once(' ')) {
        if character.is_ascii_alphanumeric() || character == '_' || character == ':' {
            current.push(character);
        } else {
            if current.starts_with("gpuledger_") || current.starts_with("process_") {
                names.push(std::mem::take(&mut current));
            }
            current.clear();
        }
    }
    names
}

#[test]
fn the_kubernetes_manifests_probe_and_scrape_what_run_serves() {
    let documents = documents("k8s/gpuledger.yaml");
    let kinds: BTreeSet<&str> = documents.iter().map(|document| document["kind"].as_str().unwrap()).collect();
    for kind in ["ConfigMap", "Service", "StatefulSet", "PodDisruptionBudget", "ServiceMonitor"] {
        assert!(kinds.contains(kind), "no {kind} in {kinds:?}");
    }
    let headless = documents
        .iter()
        .find(|document| document["kind"] == "Service" && document["spec"]["clusterIP"] == "None")
        .expect("a headless service");
    let set = documents.iter().find(|document| document["kind"] == "StatefulSet").unwrap();
    assert_eq!(set["spec"]["serviceName"], headless["metadata"]["name"]);
    assert!(!set["spec"]["volumeClaimTemplates"].as_array().unwrap().is_empty(), "a volume per pod");
    let container = &set["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz/live");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/healthz/ready");
    assert_eq!(container["ports"][0]["containerPort"], 8080);
    let mounts: Vec<&str> = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|mount| mount["mountPath"].as_str().unwrap())
        .collect();
    let environment = container["env"].as_array().unwrap();
    assert!(environment.iter().any(|variable| variable["name"] == "GPULEDGER_HTTP__ADVERTISED_URL"));

    // The configuration the pods run with is one gpuledger accepts, with
    // the state directory on the volume and HTTP on the probed port.
    let config_map = documents.iter().find(|document| document["kind"] == "ConfigMap").unwrap();
    let toml_text = config_map["data"]["gpuledger.toml"].as_str().unwrap();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), toml_text).unwrap();
    let token = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token.path(), "a-token\n").unwrap();
    let environment = [("GPULEDGER_HTTP__TOKEN_FILE".to_owned(), token.path().display().to_string())].into();
    let config = gpuledger::config::Config::load(Some(file.path()), &environment, &Default::default());
    let config = match config {
        Ok(config) => config,
        Err(error) => panic!("the ConfigMap's gpuledger.toml is refused: {error:#}"),
    };
    assert_eq!(config.http.listen.unwrap().port(), 8080);
    assert!(mounts.iter().any(|mount| config.state_dir.starts_with(mount)), "{:?} not on {mounts:?}", config.state_dir);

    let monitor = documents.iter().find(|document| document["kind"] == "ServiceMonitor").unwrap();
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
}

#[test]
fn the_dashboard_and_the_alert_rules_use_only_exported_metrics() {
    let exported = exported_metrics();
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(deploy("grafana/gpuledger-dashboard.json")).unwrap()).unwrap();
    let mut used = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            used.extend(metrics_in(target["expr"].as_str().unwrap()));
        }
    }
    let titles: Vec<&str> =
        dashboard["panels"].as_array().unwrap().iter().map(|panel| panel["title"].as_str().unwrap()).collect();
    for wanted in ["lag", "folded", "Dead letters", "Commit cycle", "rebuilds", "memory"] {
        assert!(titles.iter().any(|title| title.contains(wanted)), "no {wanted} panel in {titles:?}");
    }
    let rules = &documents("prometheus/gpuledger-rules.yaml")[0];
    let mut alerts = Vec::new();
    for group in rules["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            alerts.push(rule["alert"].as_str().unwrap().to_owned());
            used.extend(metrics_in(rule["expr"].as_str().unwrap()));
        }
    }
    for wanted in ["Lag", "NotReady", "Abort", "DeadLetter"] {
        assert!(alerts.iter().any(|alert| alert.contains(wanted)), "no {wanted} alert in {alerts:?}");
    }
    for name in &used {
        assert!(exported.contains(name), "{name} is used but not exported ({exported:?})");
    }
    assert!(used.len() >= 8, "{used:?}");
}

#[test]
fn the_compose_file_runs_gpuledger_beside_apache_kafka() {
    let compose = &documents("compose.yaml")[0];
    let services = compose["services"].as_object().unwrap();
    assert!(services["kafka"]["image"].as_str().unwrap().starts_with("apache/kafka:"));
    let gpuledger = &services["gpuledger"];
    let command: Vec<&str> =
        gpuledger["command"].as_array().unwrap().iter().map(|part| part.as_str().unwrap()).collect();
    assert_eq!(command[0], "run");
    assert!(command.contains(&"--http-listen"));
    let dockerfile = std::fs::read_to_string(deploy("Dockerfile")).unwrap();
    assert!(dockerfile.contains("/healthz/live") && dockerfile.contains("ENTRYPOINT"));
}
