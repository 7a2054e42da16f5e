//! Point reads of one task's committed state for queries: a start-up's
//! record and balances, its closed months' statements, the start-ups a
//! task holds. A caller that needs several reads to agree holds the store
//! (every commit is one atomic batch written under the same lock).

use super::columns::{self, Column};
use super::{load_task_meta, parse, KvStore};
use crate::fold::state::{Deal, Grant, Startup};
use crate::fold::TopicNames;
use crate::records::{Balances, InputOffset};
use crate::units::Month;

/// Where a task's committed state stands: its next input offsets (named as
/// its records name them) and its output digest (hex).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Committed {
    pub task: u32,
    pub offsets: Vec<InputOffset>,
    pub digest: String,
}

/// The committed position of task `partition`.
pub fn committed(store: &dyn KvStore, partition: u32, names: &TopicNames) -> crate::Result<Committed> {
    let meta = load_task_meta(store, partition)?;
    let offsets = crate::events::Topic::ALL
        .into_iter()
        .map(|topic| InputOffset {
            topic: names.name(topic).to_owned(),
            partition: if topic == crate::events::Topic::Rates { 0 } else { partition },
            offset: meta.offsets[topic],
        })
        .collect();
    Ok(Committed { task: partition, offsets, digest: meta.digest.hex() })
}

/// A start-up of task `partition` with its grants and deals (not its dedup
/// identities); `None` when the task does not hold it.
pub fn startup_in(store: &dyn KvStore, partition: u32, startup_id: &str) -> crate::Result<Option<Startup>> {
    let key = columns::startup_key(partition, startup_id);
    let Some(value) = store.get(Column::Startups, &key)? else { return Ok(None) };
    let mut startup: Startup = parse(Column::Startups, &key, &value)?;
    for (child, value) in store.scan_prefix(Column::Grants, &key)? {
        let grant: Grant = parse(Column::Grants, &child, &value)?;
        startup.grants.insert(grant.grant_id.clone(), grant);
    }
    for (child, value) in store.scan_prefix(Column::Deals, &key)? {
        let deal: Deal = parse(Column::Deals, &child, &value)?;
        startup.deals.insert(deal.deal_id.clone(), deal);
    }
    startup.rebuild_index();
    Ok(Some(startup))
}

/// A start-up's balances record (spec §10) as task `partition` committed
/// it: the same record the balances topic carries after that commit.
pub fn balances_in(
    store: &dyn KvStore,
    partition: u32,
    startup_id: &str,
    names: &TopicNames,
) -> crate::Result<Option<Balances>> {
    let Some(startup) = startup_in(store, partition, startup_id)? else { return Ok(None) };
    let committed = committed(store, partition, names)?;
    let mut balances = crate::fold::balances_of(&startup, partition, &committed.offsets);
    balances.digest = committed.digest;
    Ok(Some(balances))
}

/// The statements of a start-up's closed months, oldest first, as
/// published: (period, JSON record).
pub fn statements_in(store: &dyn KvStore, partition: u32, startup_id: &str) -> crate::Result<Vec<(String, Vec<u8>)>> {
    let prefix = columns::startup_key(partition, startup_id);
    let mut statements = Vec::new();
    for (key, value) in store.scan_prefix(Column::Statements, &prefix)? {
        let period = columns::read_part(&key[prefix.len()..])
            .ok_or_else(|| anyhow::anyhow!("corrupt statements key {key:?}"))?;
        statements.push((period, value));
    }
    Ok(statements)
}

/// One closed month's statement of a start-up, as published.
pub fn statement_in(
    store: &dyn KvStore,
    partition: u32,
    startup_id: &str,
    period: Month,
) -> crate::Result<Option<Vec<u8>>> {
    store.get(Column::Statements, &columns::child_key(partition, startup_id, &period.to_string()))
}

/// The start-ups task `partition` holds, in key order.
pub fn startups_in(store: &dyn KvStore, partition: u32) -> crate::Result<Vec<String>> {
    let mut ids = Vec::new();
    for (key, _) in store.scan_prefix(Column::Startups, &columns::partition_prefix(partition))? {
        let (id, _) =
            columns::split_startup_key(&key).ok_or_else(|| anyhow::anyhow!("corrupt startups key {key:?}"))?;
        ids.push(id);
    }
    Ok(ids)
}
