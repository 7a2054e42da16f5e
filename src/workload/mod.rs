//! `gpuledger gen`: a realistic workload from the Microsoft Philly GPU trace.
//!
//! Data: Jeon et al., "Analysis of Large-Scale Multi-Tenant GPU Clusters for
//! DNN Training Workloads", USENIX ATC '19 (CC-BY-4.0), as shipped in the
//! Pollux artifact (`philly.csv`). Every generated directory carries this
//! attribution in its `ATTRIBUTION.md`.
//!
//! What is made of the trace (all documented in `docs/workload.md`):
//! - the 15 virtual clusters (tenants) become 15 named start-ups, ranked by
//!   GPU-hours; each start-up lives in one of two regions;
//! - a job runs from its submission time for its duration on `num_gpus`
//!   GPUs; times are shifted so the trace starts on 2025-09-01 (a Monday, as
//!   2017-09-04 was);
//! - GPU model rule: ≥ 8 GPUs → H800, 3–7 → A800 (Philly's 8-GPU/24 GB
//!   machines), 2 → H20, 1 → L20 (its 2-GPU/12 GB machines);
//! - tier: on_demand 70 %, reserved 20 %, spot 10 %, drawn per job;
//! - each job is sliced into usage events of `slice` (default 5 minutes),
//!   published when the slice ends, in time order; ticks every hour;
//! - duplicates (0.3 %), late events (0.1 %) and bad records of every
//!   reason code are mixed in;
//! - deals: one compute-for-equity deal per start-up (cash + credits, equity
//!   fair value, two tranches, the second in escrow), plus a promotional and
//!   a cash grant, an extension, a revocation and a cancelled deal, dated
//!   as fractions of the trace's span so that small workloads exercise them;
//! - rate cards for A800/H800/H20/L20 × two regions × three tiers, with a
//!   price change on 2025-11-01.
//!
//! Same trace, seed and options → the same bytes.

mod trace;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::Context as _;

use self::trace::{read_trace, Job, Random};
use crate::units::{format_millis, parse_rfc3339, Millis, DAY_MS, HOUR_MS, MINUTE_MS};

#[derive(Clone, Debug)]
pub struct GenOptions {
    pub trace: PathBuf,
    pub out: PathBuf,
    pub seed: u64,
    /// Only the first N jobs of the trace (file order).
    pub jobs: Option<usize>,
    pub slice: Millis,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GenSummary {
    pub jobs: usize,
    pub usage_events: u64,
    pub metering_lines: u64,
    pub deal_lines: u64,
    pub rate_lines: u64,
}

pub const STARTUP_NAMES: [&str; 15] = [
    "aurora-labs",
    "basalt-ai",
    "cirrus-minds",
    "delta-reason",
    "ember-models",
    "fjord-intelligence",
    "granite-vision",
    "halcyon-speech",
    "iris-robotics",
    "juniper-bio",
    "kestrel-agents",
    "lumen-search",
    "meridian-code",
    "nimbus-tutor",
    "orchid-health",
];
pub const REGIONS: [&str; 2] = ["cn-north-1", "cn-east-2"];
pub const GPU_MODELS: [&str; 4] = ["A800", "H800", "H20", "L20"];
const TIERS: [&str; 3] = ["on_demand", "reserved", "spot"];
const INVESTOR: &str = "Northwind Cloud Ventures";

/// On-demand list price in micros per GPU-hour, before the price change.
fn list_price(model: &str) -> i64 {
    match model {
        "H800" => 2_600_000,
        "A800" => 1_900_000,
        "H20" => 1_150_000,
        _ => 620_000,
    }
}

/// Price of a card, in micros per GPU-hour. The change on 2025-11-01 cuts
/// H800 by 12 % and raises L20 by 5 %.
fn card_price(model: &str, region: usize, tier: usize, after_change: bool) -> i64 {
    let mut price = list_price(model);
    if after_change {
        price = match model {
            "H800" => price * 88 / 100,
            "L20" => price * 105 / 100,
            _ => price,
        };
    }
    price = price * [100, 70, 40][tier] / 100;
    if region == 1 {
        price = price * 105 / 100;
    }
    price
}

pub fn gpu_model_for(gpus: i64) -> &'static str {
    match gpus {
        8.. => "H800",
        3..=7 => "A800",
        2 => "H20",
        _ => "L20",
    }
}

#[allow(clippy::too_many_arguments)] // one line of JSON, one argument per field
fn usage_json(
    startup: &str,
    id: &str,
    region: &str,
    model: &str,
    tier: &str,
    gpus: i64,
    started: Millis,
    ended: Millis,
    cluster: &str,
    job: &str,
) -> String {
    format!(
        "{{\"specversion\":\"1.0\",\"id\":\"{id}\",\"source\":\"philly-meter/{region}\",\"type\":\"gpuledger.gpu.usage\",\"subject\":\"{startup}\",\"time\":\"{}\",\"datacontenttype\":\"application/json\",\"data\":{{\"cluster_id\":\"philly-{cluster}\",\"region\":\"{region}\",\"gpu_model\":\"{model}\",\"tier\":\"{tier}\",\"gpu_count\":{gpus},\"started_at\":\"{}\",\"ended_at\":\"{}\",\"job_id\":\"{job}\"}}}}",
        format_millis(ended),
        format_millis(started),
        format_millis(ended)
    )
}

fn tick_json(time: Millis) -> String {
    format!(
        "{{\"specversion\":\"1.0\",\"id\":\"tick-{time}\",\"source\":\"scheduler/clock\",\"type\":\"gpuledger.clock.tick\",\"time\":\"{}\"}}",
        format_millis(time)
    )
}

fn deal_event(id: &str, type_name: &str, startup: &str, time: Millis, data: &str) -> String {
    format!(
        "{{\"specversion\":\"1.0\",\"id\":\"{id}\",\"source\":\"crm/deals\",\"type\":\"{type_name}\",\"subject\":\"{startup}\",\"time\":\"{}\",\"data\":{data}}}",
        format_millis(time)
    )
}

fn ts(time: Millis) -> String {
    format_millis(time)
}

pub fn generate(options: &GenOptions) -> crate::Result<GenSummary> {
    anyhow::ensure!(options.slice >= 1000, "--slice must be at least one second");
    let origin = parse_rfc3339("2017-09-04T00:00:00Z").expect("constant");
    let target = parse_rfc3339("2025-09-01T00:00:00Z").expect("constant");
    let jobs = read_trace(&options.trace, options.jobs, target - origin)?;
    anyhow::ensure!(!jobs.is_empty(), "the trace has no jobs");
    let mut random = Random(options.seed ^ 0x6770_756c_6564_6765);
    let ranked = rank_tenants(&jobs)?;
    let tenant_index: BTreeMap<&str, usize> =
        ranked.iter().enumerate().map(|(index, (tenant, _))| (*tenant, index)).collect();

    let trace_start = jobs.iter().map(|job| job.start).min().expect("non-empty");
    let day0 = trace_start - trace_start.rem_euclid(DAY_MS);
    let price_change = parse_rfc3339("2025-11-01T00:00:00Z").expect("constant");
    let slices = usage_slices(&jobs, &tenant_index, options.slice, &mut random);
    // Deal dates are set as fractions (per mille) of the trace's span, so a
    // workload of a few jobs exercises expiries and revocations as the full
    // trace does. Whole hours keep the files readable.
    let span = slices.slices.last().map_or(DAY_MS, |last| last.0 - day0).max(DAY_MS);
    let at_permille = |permille: i64| {
        let instant = day0 + (i128::from(span) * i128::from(permille) / 1000) as i64;
        instant - instant.rem_euclid(HOUR_MS)
    };

    std::fs::create_dir_all(&options.out).with_context(|| format!("creating {}", options.out.display()))?;
    let mut summary = GenSummary { jobs: jobs.len(), ..GenSummary::default() };
    let rates = rate_lines(day0, price_change);
    let deals = deal_lines(ranked.len(), &slices.expected_cost, day0, &at_permille, &mut random);
    write_metering(options, &jobs, &tenant_index, &slices, day0, &mut random, &mut summary)?;

    let write_lines = |name: &str, lines: &[(Millis, String)]| -> crate::Result<u64> {
        let path = options.out.join(name);
        let mut writer = BufWriter::new(File::create(&path).with_context(|| format!("creating {}", path.display()))?);
        for (_, line) in lines {
            writeln!(writer, "{line}")?;
        }
        writer.flush()?;
        Ok(lines.len() as u64)
    };
    summary.rate_lines = write_lines("rates.jsonl", &rates)?;
    summary.deal_lines = write_lines("deals.jsonl", &deals)?;
    write_attribution(options, jobs.len())?;
    Ok(summary)
}

/// Tenants ranked by GPU-hours (ties by id): they get the start-up names
/// in this order.
fn rank_tenants(jobs: &[Job]) -> crate::Result<Vec<(&str, i128)>> {
    let mut gpu_ms: BTreeMap<&str, i128> = BTreeMap::new();
    for job in jobs {
        *gpu_ms.entry(&job.tenant).or_default() += i128::from(job.gpus) * i128::from(job.end - job.start);
    }
    let mut ranked: Vec<(&str, i128)> = gpu_ms.into_iter().collect();
    ranked.sort_by(|left, right| right.1.cmp(&left.1).then(left.0.cmp(right.0)));
    anyhow::ensure!(ranked.len() <= STARTUP_NAMES.len(), "the trace has more than {} tenants", STARTUP_NAMES.len());
    Ok(ranked)
}

/// Each job's usage slices, sorted by publication time (slice end), with
/// each job's tier and each tenant's expected cost at list prices.
struct Slices {
    /// (slice end, job index, slice number).
    slices: Vec<(Millis, u32, u32)>,
    job_tiers: Vec<usize>,
    expected_cost: Vec<i128>,
}

fn usage_slices(jobs: &[Job], tenant_index: &BTreeMap<&str, usize>, slice: Millis, random: &mut Random) -> Slices {
    let mut slices: Vec<(Millis, u32, u32)> = Vec::new();
    let mut job_tiers = Vec::with_capacity(jobs.len());
    let mut expected_cost: Vec<i128> = vec![0; tenant_index.len()];
    for (index, job) in jobs.iter().enumerate() {
        let tier = match random.below(100) {
            0..=69 => 0,
            70..=89 => 1,
            _ => 2,
        };
        job_tiers.push(tier);
        let tenant = tenant_index[job.tenant.as_str()];
        let model = gpu_model_for(job.gpus);
        expected_cost[tenant] += i128::from(job.gpus)
            * i128::from(job.end - job.start)
            * i128::from(card_price(model, tenant % 2, tier, false))
            / i128::from(HOUR_MS);
        let mut slice_start = job.start;
        let mut number = 0u32;
        while slice_start < job.end {
            let slice_end = (slice_start + slice).min(job.end);
            slices.push((slice_end, index as u32, number));
            slice_start = slice_end;
            number += 1;
        }
    }
    slices.sort_unstable();
    Slices { slices, job_tiers, expected_cost }
}

/// The rate cards: every model, region and tier at the start and after the
/// price change, with a duplicate, a conflicting duplicate and a bad tier.
fn rate_lines(day0: Millis, price_change: Millis) -> Vec<(Millis, String)> {
    let mut rates = Vec::new();
    let rate_line = |model: &str, region: usize, tier: usize, from: Millis, published: Millis, version: u32| {
        let min_billable = if tier == 0 { 60 } else { 0 };
        format!(
            "{{\"specversion\":\"1.0\",\"id\":\"rate-{model}-{}-{}-v{version}\",\"source\":\"pricing/catalog\",\"type\":\"gpuledger.rate.published\",\"time\":\"{}\",\"data\":{{\"gpu_model\":\"{model}\",\"region\":\"{}\",\"tier\":\"{}\",\"currency\":\"USD\",\"price_per_gpu_hour\":{},\"effective_from\":\"{}\",\"min_billable_seconds\":{min_billable}}}}}",
            REGIONS[region], TIERS[tier], ts(published), REGIONS[region], TIERS[tier],
            card_price(model, region, tier, version == 2), ts(from)
        )
    };
    for model in GPU_MODELS {
        for region in 0..2 {
            for tier in 0..3 {
                rates.push((
                    day0 - 30 * DAY_MS,
                    rate_line(model, region, tier, day0 - 30 * DAY_MS, day0 - 30 * DAY_MS, 1),
                ));
            }
        }
    }
    let duplicate_rate = rates[0].1.clone();
    rates.push((day0 - 29 * DAY_MS, duplicate_rate.clone()));
    rates.push((day0 - 29 * DAY_MS, duplicate_rate.replace("\"price_per_gpu_hour\":", "\"price_per_gpu_hour\":1")));
    rates.push((
        day0 - 29 * DAY_MS,
        rate_line("H800", 0, 0, day0, day0 - 29 * DAY_MS, 9).replace("\"on_demand\"", "\"premium\""),
    ));
    for model in GPU_MODELS {
        for region in 0..2 {
            for tier in 0..3 {
                rates.push((
                    price_change - 7 * DAY_MS,
                    rate_line(model, region, tier, price_change, price_change - 7 * DAY_MS, 2),
                ));
            }
        }
    }
    rates.sort_by_key(|(time, _)| *time);
    rates
}

/// Each start-up's deal and its grants (and the promotional, prepaid,
/// extension, revocation and cancellation cases), then bad deal records.
fn deal_lines(
    startups: usize,
    expected_cost: &[i128],
    day0: Millis,
    at_permille: &dyn Fn(i64) -> Millis,
    random: &mut Random,
) -> Vec<(Millis, String)> {
    let mut deals: Vec<(Millis, String)> = Vec::new();
    for index in 0..startups {
        let startup = STARTUP_NAMES[index];
        let dollars = 1_000_000i128;
        // Credits sized at 60–130 % of the list cost of the start-up's usage,
        // in whole thousands of dollars, at least $10k.
        let factor = 60 + random.below(71) as i128;
        let face = ((expected_cost[index] * factor / 100 / (1000 * dollars)).max(10) * 1000 * dollars) as i64;
        let cash = face / 100 * (100 + random.below(21) as i64);
        let fair_value = cash + face / 100 * 80;
        let deal_id = format!("deal-{startup}");
        let signed = day0 - 7 * DAY_MS + index as i64 * HOUR_MS;
        deals.push((signed, deal_event(&format!("{deal_id}-signed"), "gpuledger.deal.signed", startup, signed, &format!(
            "{{\"deal_id\":\"{deal_id}\",\"investor\":\"{INVESTOR}\",\"cash_amount\":{cash},\"credit_face_amount\":{face},\"currency\":\"USD\",\"equity_fair_value\":{fair_value}}}"))));
        let first = face / 2;
        let grant = |id: &str, amount: i64, effective: Millis, expires: Millis, priority: u32, escrow: bool| {
            format!(
                "{{\"grant_id\":\"{id}\",\"deal_id\":\"{deal_id}\",\"face_amount\":{amount},\"currency\":\"USD\",\"effective_at\":\"{}\",\"expires_at\":\"{}\",\"priority\":{priority},\"escrow\":{escrow}}}",
                ts(effective), ts(expires)
            )
        };
        deals.push((
            signed + MINUTE_MS,
            deal_event(
                &format!("{deal_id}-t1"),
                "gpuledger.credit.granted",
                startup,
                signed + MINUTE_MS,
                &grant(&format!("{startup}-t1"), first, day0, at_permille(450), 40, false),
            ),
        ));
        let release = at_permille(250) + index as i64 * HOUR_MS;
        deals.push((
            release,
            deal_event(
                &format!("{deal_id}-t2"),
                "gpuledger.credit.granted",
                startup,
                release,
                &grant(&format!("{startup}-t2"), face - first, release, at_permille(900), 60, true),
            ),
        ));
        match index {
            0 => {
                let at = day0 + HOUR_MS;
                deals.push((at, deal_event("promo-launch", "gpuledger.credit.granted", startup, at, &format!(
                    "{{\"grant_id\":\"{startup}-promo\",\"face_amount\":5000000000,\"currency\":\"USD\",\"effective_at\":\"{}\",\"expires_at\":\"{}\",\"priority\":10,\"consideration\":\"promotional\"}}",
                    ts(day0), ts(at_permille(200))))));
            }
            1 => {
                let at = at_permille(60);
                deals.push((at, deal_event("prepaid-1", "gpuledger.credit.granted", startup, at, &format!(
                    "{{\"grant_id\":\"{startup}-prepaid\",\"face_amount\":20000000000,\"currency\":\"USD\",\"effective_at\":\"{}\",\"priority\":90,\"consideration\":\"cash\"}}",
                    ts(at)))));
            }
            2 => {
                let at = at_permille(400);
                deals.push((
                    at,
                    deal_event(
                        "extend-t1",
                        "gpuledger.grant.extended",
                        startup,
                        at,
                        &format!("{{\"grant_id\":\"{startup}-t1\",\"expires_at\":\"{}\"}}", ts(at_permille(650))),
                    ),
                ));
            }
            3 => {
                let at = at_permille(600);
                deals.push((
                    at,
                    deal_event(
                        "revoke-t2",
                        "gpuledger.grant.revoked",
                        startup,
                        at,
                        &format!("{{\"grant_id\":\"{startup}-t2\"}}"),
                    ),
                ));
            }
            _ => {}
        }
        if index + 1 == startups && index > 3 {
            let at = at_permille(120);
            deals.push((
                at,
                deal_event(
                    "cancel-1",
                    "gpuledger.deal.cancelled",
                    startup,
                    at,
                    &format!("{{\"deal_id\":\"{deal_id}\"}}"),
                ),
            ));
        }
    }
    // Bad deal records, one of each business reason and some decoding ones.
    let victim = STARTUP_NAMES[0];
    let at = day0 + 2 * DAY_MS;
    let bad_deals = [
        deal_event("bad-unknown-deal", "gpuledger.credit.granted", victim, at, "{\"grant_id\":\"x-1\",\"deal_id\":\"deal-nope\",\"face_amount\":1000000,\"currency\":\"USD\",\"effective_at\":\"2025-09-01T00:00:00Z\"}"),
        deal_event("bad-unknown-grant", "gpuledger.grant.revoked", victim, at, "{\"grant_id\":\"grant-nope\"}"),
        deal_event("bad-duplicate-grant", "gpuledger.credit.granted", victim, at, &format!("{{\"grant_id\":\"{victim}-t1\",\"face_amount\":1000000,\"currency\":\"USD\",\"effective_at\":\"2025-09-01T00:00:00Z\",\"consideration\":\"cash\"}}")),
        deal_event("bad-currency", "gpuledger.credit.granted", victim, at, &format!("{{\"grant_id\":\"x-eur\",\"deal_id\":\"deal-{victim}\",\"face_amount\":1000000,\"currency\":\"EUR\",\"effective_at\":\"2025-09-01T00:00:00Z\"}}")),
        deal_event("bad-over", "gpuledger.credit.granted", victim, at, &format!("{{\"grant_id\":\"x-over\",\"deal_id\":\"deal-{victim}\",\"face_amount\":9000000000000000,\"currency\":\"USD\",\"effective_at\":\"2025-09-01T00:00:00Z\"}}")),
        deal_event("bad-transition", "gpuledger.deal.signed", victim, at, &format!("{{\"deal_id\":\"deal-{victim}\",\"investor\":\"x\",\"cash_amount\":0,\"credit_face_amount\":1,\"currency\":\"USD\",\"equity_fair_value\":0}}")),
        deal_event("bad-schema", "gpuledger.credit.granted", victim, at, "{\"grant_id\":\"x-2\",\"face_amount\":\"lots\",\"currency\":\"USD\",\"effective_at\":\"2025-09-01T00:00:00Z\",\"consideration\":\"cash\"}"),
        deal_event("bad-type", "gpuledger.deal.renegotiated", victim, at, "{}"),
        deal_event(&format!("deal-deal-{victim}-signed"), "gpuledger.deal.signed", victim, at, "{\"deal_id\":\"d\",\"investor\":\"x\",\"cash_amount\":-5,\"credit_face_amount\":1,\"currency\":\"USD\",\"equity_fair_value\":0}"),
        deal_event(&format!("deal-{victim}-signed"), "gpuledger.deal.signed", victim, at, "{\"deal_id\":\"deal-other\",\"investor\":\"x\",\"cash_amount\":0,\"credit_face_amount\":1,\"currency\":\"USD\",\"equity_fair_value\":0}"),
        "{\"specversion\":\"1.0\",\"id\":\"truncated".to_owned(),
    ];
    for line in bad_deals {
        deals.push((at, line));
    }
    deals.sort_by_key(|(time, _)| *time);
    deals
}

/// `metering.jsonl`: the usage slices with hourly ticks, some published
/// late or twice, and a bad record of each kind spread over the log.
fn write_metering(
    options: &GenOptions,
    jobs: &[Job],
    tenant_index: &BTreeMap<&str, usize>,
    slices: &Slices,
    day0: Millis,
    random: &mut Random,
    summary: &mut GenSummary,
) -> crate::Result<()> {
    let Slices { slices, job_tiers, .. } = slices;
    let meter_path = options.out.join("metering.jsonl");
    let mut meter = BufWriter::with_capacity(
        1 << 20,
        File::create(&meter_path).with_context(|| format!("creating {}", meter_path.display()))?,
    );
    let mut next_tick = day0 + HOUR_MS;
    let mut delayed: Vec<(usize, String)> = Vec::new();
    let mut line = String::with_capacity(512);
    let mut recent: Option<String> = None;
    let total = slices.len();
    let bad_every = (total / 12).max(1);
    for (position, (ended, job_index, number)) in slices.iter().copied().enumerate() {
        while ended > next_tick {
            writeln!(meter, "{}", tick_json(next_tick))?;
            summary.metering_lines += 1;
            next_tick += HOUR_MS;
        }
        let job = &jobs[job_index as usize];
        let tenant = tenant_index[job.tenant.as_str()];
        let startup = STARTUP_NAMES[tenant];
        let region = REGIONS[tenant % 2];
        let started = job.start + i64::from(number) * options.slice;
        let job_id = format!("job-{job_index:06}");
        line.clear();
        line.push_str(&usage_json(
            startup,
            &format!("{job_id}-{number}"),
            region,
            gpu_model_for(job.gpus),
            TIERS[job_tiers[job_index as usize]],
            job.gpus,
            started,
            ended,
            &job.tenant,
            &job_id,
        ));
        summary.usage_events += 1;
        if random.chance(1_000) {
            // Late: published 50–500 events after its time.
            delayed.push((position + 50 + random.below(450) as usize, line.clone()));
        } else {
            writeln!(meter, "{line}")?;
            summary.metering_lines += 1;
        }
        if random.chance(3_000) {
            delayed.push((position + 1 + random.below(20) as usize, line.clone()));
        }
        delayed.sort_by_key(|(due, _)| *due);
        while delayed.first().is_some_and(|(due, _)| *due <= position) {
            writeln!(meter, "{}", delayed.remove(0).1)?;
            summary.metering_lines += 1;
        }
        // A bad record of each kind, spread over the log.
        if position % bad_every == bad_every / 2 {
            let kind = position / bad_every;
            let id = format!("bad-{kind}-{job_id}");
            let bad = match kind % 8 {
                0 => line.replacen(&format!("\"{job_id}-{number}\""), &format!("\"{id}\""), 1).replacen(
                    "\"tier\":\"",
                    "\"tier\":\"x",
                    1,
                ),
                1 => line.replacen(&format!("\"{job_id}-{number}\""), &format!("\"{id}\""), 1).replacen(
                    &format!("\"gpu_count\":{}", job.gpus),
                    "\"gpu_count\":0",
                    1,
                ),
                2 => usage_json(
                    startup,
                    &id,
                    region,
                    "V100",
                    "on_demand",
                    1,
                    ended - 10 * MINUTE_MS,
                    ended,
                    &job.tenant,
                    &job_id,
                ),
                3 => usage_json(
                    startup,
                    &id,
                    region,
                    "L20",
                    "on_demand",
                    1,
                    ended - 41 * DAY_MS,
                    ended - 40 * DAY_MS,
                    &job.tenant,
                    &job_id,
                ),
                4 => line[..line.len() / 2].to_owned(),
                5 => line.replacen("gpuledger.gpu.usage", "gpuledger.gpu.usage.v2", 1).replacen(
                    &format!("\"{job_id}-{number}\""),
                    &format!("\"{id}\""),
                    1,
                ),
                6 => usage_json(
                    startup,
                    &id,
                    region,
                    "L20",
                    "on_demand",
                    1,
                    ended + 3 * DAY_MS,
                    ended + 3 * DAY_MS + MINUTE_MS,
                    &job.tenant,
                    &job_id,
                ),
                _ => match &recent {
                    Some(previous) => previous.replacen("\"gpu_count\":", "\"gpu_count\":10", 1),
                    None => line.replacen("philly-meter", "gpuledger:meter", 1),
                },
            };
            writeln!(meter, "{bad}")?;
            summary.metering_lines += 1;
        }
        if position % 1000 == 0 {
            recent = Some(line.clone());
        }
    }
    for (_, late) in delayed {
        writeln!(meter, "{late}")?;
        summary.metering_lines += 1;
    }
    meter.flush()?;
    Ok(())
}

/// `ATTRIBUTION.md`: the trace's licence travels with the derived files.
fn write_attribution(options: &GenOptions, jobs: usize) -> crate::Result<()> {
    let mut attribution = String::new();
    writeln!(attribution, "# Attribution\n")?;
    writeln!(
        attribution,
        "These files were generated by `gpuledger gen` (seed {}, slice {} ms, {} jobs) from the",
        options.seed, options.slice, jobs
    )?;
    writeln!(attribution, "Microsoft Philly GPU cluster trace, licensed CC-BY-4.0:\n")?;
    writeln!(
        attribution,
        "> Myeongjae Jeon, Shivaram Venkataraman, Amar Phanishayee, Junjie Qian, Wencong Xiao, Fan Yang."
    )?;
    writeln!(
        attribution,
        "> \"Analysis of Large-Scale Multi-Tenant GPU Clusters for DNN Training Workloads\", USENIX ATC '19.\n"
    )?;
    writeln!(
        attribution,
        "The per-job CSV is the one shipped in the Pollux artifact (Qiao et al., OSDI '21, Apache-2.0)."
    )?;
    writeln!(attribution, "Tenants, deals, prices and GPU models are synthetic; see docs/workload.md of gpuledger.")?;
    std::fs::write(options.out.join("ATTRIBUTION.md"), attribution)?;
    Ok(())
}
