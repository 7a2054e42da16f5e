use super::*;

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect()
}

#[test]
fn layers_apply_in_order() {
    let dir = std::env::temp_dir().join(format!("gpuledger-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("gpuledger.toml");
    std::fs::write(
        &file,
        "[kafka]\nbootstrap_servers = \"file:9092\"\ngroup_id = \"billing\"\n[processor]\ncommit_interval = \"250ms\"\n[topics]\njournal = \"fin.journal\"\n",
    )
    .unwrap();
    let environment = env(&[
        ("GPULEDGER_PROCESSOR__COMMIT_INTERVAL", "1s"),
        ("GPULEDGER_KAFKA__PROPERTIES__SASL_PASSWORD", "hunter2"),
    ]);
    let config = Config::load(
        Some(&file),
        &environment,
        &Overrides { bootstrap_servers: Some("flag:9092".into()), ..Overrides::default() },
    )
    .unwrap();
    assert_eq!(config.bootstrap_servers, "flag:9092");
    assert_eq!(config.group_id, "billing");
    assert_eq!(config.commit_interval, 1000);
    assert_eq!(config.topics.journal, "fin.journal");
    assert_eq!(config.topics.rates, "gpuledger.rates");
    assert_eq!(config.properties["sasl.password"], "hunter2");
    assert!(!config.describe().contains("hunter2"), "secrets are never shown");
    assert!(config.describe().contains("sasl.password=***"));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn every_problem_is_reported_at_once() {
    let raw: RawConfig = toml::from_str(
        "[processor]\ncommit_interval = \"soon\"\noutput_format = \"xml\"\n[topics]\njournal = \"gpuledger.deals\"\n[kafka.properties]\n\"group.id\" = \"x\"\n",
    )
    .unwrap();
    let error = Config::validate(raw).unwrap_err().to_string();
    for expected in ["commit_interval", "output_format", "bootstrap_servers", "configured twice", "group.id"] {
        assert!(error.contains(expected), "{expected} missing from: {error}");
    }
}

#[test]
fn schema_ids_default_and_are_replaced_by_the_file_and_the_environment() {
    let config = for_tests();
    assert_eq!(config.schema_ids["deal_signed"], 1);
    assert_eq!(config.schema_ids["clock_tick"], 8);
    assert_eq!(config.schema_ids["usage_rated"], 9);
    assert_eq!(config.schema_ids["balances"], 14);
    let mut raw: RawConfig = toml::from_str(
        "[kafka]\nbootstrap_servers = \"b:9092\"\n[processor]\noutput_format = \"avro-confluent\"\n[schemas]\nids = { usage_rated = 101 }\n",
    )
    .unwrap();
    apply_environment(&mut raw, &env(&[("GPULEDGER_SCHEMAS__IDS__GPU_USAGE", "57")])).unwrap();
    let config = Config::validate(raw).unwrap();
    assert_eq!(config.output_format, OutputFormat::AvroConfluent);
    assert_eq!((config.schema_ids["usage_rated"], config.schema_ids["gpu_usage"]), (101, 57));
}

#[test]
fn the_log_format_is_text_or_json_from_the_file_or_the_environment() {
    let mut raw: RawConfig =
        toml::from_str("[kafka]\nbootstrap_servers = \"b:9092\"\n[log]\nformat = \"json\"\n").unwrap();
    assert_eq!(raw.log.format.as_deref(), Some("json"));
    apply_environment(&mut raw, &env(&[("GPULEDGER_LOG__FORMAT", "xml")])).unwrap();
    let error = Config::validate(raw).unwrap_err().to_string();
    assert!(error.contains("log.format must be text or json, not \"xml\""), "{error}");
}

#[test]
fn schema_ids_must_name_a_schema_and_be_unique() {
    let raw: RawConfig = toml::from_str(
        "[kafka]\nbootstrap_servers = \"b:9092\"\n[schemas]\nids = { usage_rated = 1, usage_ratd = 9 }\n",
    )
    .unwrap();
    let error = Config::validate(raw).unwrap_err().to_string();
    assert!(error.contains("schemas.ids.usage_ratd: no such schema"), "{error}");
    assert!(error.contains("id 1 is given to deal_signed and usage_rated"), "{error}");
}

#[test]
fn unknown_keys_and_variables_are_errors() {
    assert!(toml::from_str::<RawConfig>("[kafka]\nbootstrap_server = \"x\"\n").is_err());
    let mut raw = RawConfig::default();
    let error = apply_environment(&mut raw, &env(&[("GPULEDGER_KAFKA__BOOTSTRAP", "x")])).unwrap_err();
    assert!(error.to_string().contains("GPULEDGER_KAFKA__BOOTSTRAP is not a gpuledger setting"));
}

#[test]
fn the_shipped_config_is_valid_and_sets_the_guards() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/gpuledger.toml");
    let config = Config::load(Some(&file), &BTreeMap::new(), &Overrides::default()).unwrap();
    assert_eq!(config.fold.earliest_time, 0);
    assert_eq!(config.fold.latest_time, crate::fold::LATEST_REPRESENTABLE_TIME);
    assert_eq!(config.fold.limits, crate::events::Limits::default());
    let environment = env(&[
        ("GPULEDGER_LEDGER__TICK_SOURCES", "sched, gpuledger:clock"),
        ("GPULEDGER_LEDGER__MAX_TICK_JUMP", "2h"),
        ("GPULEDGER_LEDGER__EARLIEST_TIME", "2017-01-01T00:00:00Z"),
        ("GPULEDGER_LIMITS__DEAD_LETTER_VALUE_BYTES", "4096"),
        ("GPULEDGER_PROCESSOR__INJECT_PANIC_AT", "metering:7"),
    ]);
    let config = Config::load(Some(&file), &environment, &Overrides::default()).unwrap();
    assert_eq!(config.fold.tick_sources.as_deref(), Some(&["sched".to_owned(), "gpuledger:clock".to_owned()][..]));
    assert_eq!(config.fold.max_tick_jump, Some(2 * HOUR_MS));
    assert_eq!(config.fold.earliest_time, crate::units::parse_rfc3339("2017-01-01T00:00:00Z").unwrap());
    assert_eq!(config.fold.limits.dead_letter_value_bytes, 4096);
    assert_eq!(config.fold.inject_panic_at, Some((crate::events::Topic::Metering, 7)));
}

#[test]
fn bad_guards_and_limits_are_reported() {
    let raw: RawConfig = toml::from_str(
        "[kafka]\nbootstrap_servers = \"b:9092\"\n[ledger]\nearliest_time = \"-0001-01-01T00:00:00Z\"\n\
         latest_time = \"1960-01-01T00:00:00Z\"\ntick_sources = []\nmax_tick_jump = \"1ms\"\n\
         [limits]\nmax_record_bytes = 10\n",
    )
    .unwrap();
    let error = Config::validate(raw).unwrap_err().to_string();
    for expected in [
        "ledger.earliest_time is not an RFC 3339 time",
        "ledger.earliest_time must not be after ledger.latest_time",
        "ledger.tick_sources must name at least one source",
        "ledger.max_tick_jump must be at least",
        "limits.max_record_bytes must be at least 1024",
    ] {
        assert!(error.contains(expected), "{expected} missing from: {error}");
    }
}

#[test]
fn secret_values_are_redacted_from_any_text() {
    assert!(is_secret("sasl.oauthbearer.config"));
    assert!(is_secret("ssl.key.password"));
    assert!(!is_secret("security.protocol"));
    let raw: RawConfig = toml::from_str(
        "[kafka]\nbootstrap_servers = \"b:9092\"\n[kafka.properties]\n\
         \"sasl.oauthbearer.config\" = \"clientId=app clientSecret=s3cr3t-value scope=all\"\n\
         \"ssl.key.password\" = \"pa55word\"\n",
    )
    .unwrap();
    let config = Config::validate(raw).unwrap();
    assert!(!config.describe().contains("s3cr3t-value"));
    // A client's error echoing a value (as librdkafka's do) is redacted.
    let echoed =
        "Client creation error: Invalid value \"pa55word\" for property ssl.key.password; clientSecret=s3cr3t-value";
    let shown = redact(echoed);
    assert!(!shown.contains("pa55word") && !shown.contains("s3cr3t-value"), "{shown}");
    assert!(shown.contains("ssl.key.password"));
}

#[test]
fn http_settings_layer_and_derive_the_advertised_url() {
    let base = "[kafka]\nbootstrap_servers = \"k:9092\"\n";
    let load = |text: &str, environment: &[(&str, &str)], listen: Option<&str>| {
        let raw: RawConfig = toml::from_str(&format!("{base}{text}")).unwrap();
        let mut raw = raw;
        environment::apply_environment(&mut raw, &env(environment))?;
        if let Some(listen) = listen {
            raw.http.listen = Some(listen.to_owned());
        }
        Config::validate(raw)
    };
    let off = load("", &[], None).unwrap();
    assert_eq!(off.http, HttpConfig::default(), "off unless asked");
    let on = load("[http]\nlisten = \"127.0.0.1:8080\"\n", &[], None).unwrap();
    let bound = "127.0.0.1:8080".parse().unwrap();
    assert_eq!(on.http.advertised_url(bound), "http://127.0.0.1:8080");
    let wildcard = load("", &[], Some("0.0.0.0:0")).unwrap();
    let url = wildcard.http.advertised_url("0.0.0.0:41234".parse().unwrap());
    assert!(url.starts_with("http://") && url.ends_with(":41234") && !url.contains("0.0.0.0"), "{url}");
    let advertised = load(
        "[http]\nlisten = \"0.0.0.0:8080\"\n",
        &[("GPULEDGER_HTTP__ADVERTISED_URL", "http://pod-0.ledger:8080/"), ("GPULEDGER_HTTP__TOKEN", "s3cret-token")],
        None,
    )
    .unwrap();
    assert_eq!(advertised.http.advertised_url(bound), "http://pod-0.ledger:8080");
    assert_eq!(advertised.http.token.as_deref(), Some("s3cret-token"));
    assert_eq!(redact("token s3cret-token"), "token ***", "the token is a secret");

    let error = load(
        "[http]\nlisten = \"localhost\"\nadvertised_url = \"ftp://x\"\ntoken = \"a\"\ntoken_file = \"/nonexistent\"\n",
        &[],
        None,
    )
    .unwrap_err()
    .to_string();
    for problem in ["http.listen must be ADDRESS:PORT", "http.advertised_url must be an http:// URL", "both set"] {
        assert!(error.contains(problem), "{problem:?} not in {error}");
    }
    let missing = load("[http]\ntoken_file = \"/nonexistent/token\"\n", &[], None).unwrap_err().to_string();
    assert!(missing.contains("http.token_file /nonexistent/token"), "{missing}");
}
