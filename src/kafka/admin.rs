//! `gpuledger topics create`: the input topics with unlimited retention (they
//! are the log of record: state is rebuilt from them), the outputs, and the
//! balances topic compacted (its key is the start-up; the latest record per
//! start-up is its balance), and the members topic where instances announce
//! their HTTP address and tasks.

use anyhow::Context as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::Config;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicPlan {
    pub name: String,
    pub partitions: u32,
    pub config: Vec<(&'static str, &'static str)>,
}

/// What `topics create` creates for `partitions` (of deals and metering).
pub fn plan(config: &Config, partitions: u32) -> Vec<TopicPlan> {
    let topics = &config.topics;
    let forever = vec![("retention.ms", "-1"), ("retention.bytes", "-1")];
    let mut plans = vec![
        TopicPlan { name: topics.rates.clone(), partitions: 1, config: forever.clone() },
        TopicPlan { name: topics.deals.clone(), partitions, config: forever.clone() },
        TopicPlan { name: topics.metering.clone(), partitions, config: forever },
    ];
    for (role, name) in topics.outputs() {
        let config = if role == "balances" { vec![("cleanup.policy", "compact")] } else { Vec::new() };
        plans.push(TopicPlan { name: name.to_owned(), partitions, config });
    }
    // Instances' HTTP addresses and tasks (query routing): tiny, latest per
    // instance.
    plans.push(TopicPlan { name: topics.members.clone(), partitions: 1, config: vec![("cleanup.policy", "compact")] });
    plans
}

/// Creates the topics; ones that exist already are reported, not errors.
pub async fn create_topics(config: &Config, partitions: u32, replication: i32) -> crate::Result<Vec<(String, String)>> {
    anyhow::ensure!(partitions >= 1, "--partitions must be at least 1");
    create_planned(config, &plan(config, partitions), replication).await
}

/// Creates planned topics; ones that exist already are reported, not errors.
pub async fn create_planned(
    config: &Config,
    plans: &[TopicPlan],
    replication: i32,
) -> crate::Result<Vec<(String, String)>> {
    let admin: AdminClient<DefaultClientContext> = super::client::admin_client(config)?;
    let new_topics: Vec<NewTopic<'_>> = plans
        .iter()
        .map(|plan| {
            let mut topic = NewTopic::new(&plan.name, plan.partitions as i32, TopicReplication::Fixed(replication));
            for (key, value) in &plan.config {
                topic = topic.set(key, value);
            }
            topic
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(super::client::METADATA_TIMEOUT));
    let results = admin.create_topics(&new_topics, &options).await.context("creating topics")?;
    let mut report = Vec::new();
    for result in results {
        match result {
            Ok(name) => report.push((name, "created".to_owned())),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => report.push((name, "exists".to_owned())),
            Err((name, code)) => anyhow::bail!("creating topic {name}: {code}"),
        }
    }
    Ok(report)
}
