//! The consumer group: on assignment, start each partition from the offsets
//! stored in RocksDB (not the group's), and tell the loop what changed; a
//! rebalance first waits for the commit cycle under way.

use std::sync::{Arc, Mutex};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::commit::{CommitError, CycleOutcome, InFlight};
use super::restore::Restorer;
use crate::config::Topics;
use crate::events::Topic;
use crate::fold::state::{KeyedOffsets, PositionConflict};
use crate::kafka::client::METADATA_TIMEOUT;
use crate::kafka::cluster::keyed_offsets;
use crate::kafka::progress::ProgressEntry;
use crate::kafka::topics::name_of;
use crate::store;
use crate::store::rocks::RocksStore;

/// A partition assigned by the group, with its offsets.
#[derive(Clone, Debug)]
pub(super) struct Assigned {
    pub(super) partition: u32,
    /// Group-committed offsets of deals and metering (o_k).
    pub(super) committed: KeyedOffsets,
    /// Records a checkpoint restored beyond the local state.
    pub(super) records_restored: u64,
    /// The task's progress records, when restoring read them already.
    pub(super) progress: Option<Arc<Vec<ProgressEntry>>>,
}

#[derive(Debug)]
pub(super) enum GroupEvent {
    Assigned(Vec<Assigned>),
    /// Partitions given up; none listed: all of them.
    Revoked(Vec<u32>),
}

/// A task's stored state is past the group's committed offsets.
#[derive(Debug, thiserror::Error)]
#[error("partition {partition}: {conflict}; the group's offsets were reset: move the state directory away to rebuild")]
pub struct StateAheadOfGroup {
    pub partition: u32,
    pub conflict: PositionConflict,
}

/// The group consumer's context: rebalances, and the commit cycle they wait for.
pub(super) struct GroupContext {
    pub(super) store: Arc<Mutex<RocksStore>>,
    pub(super) topics: Topics,
    pub(super) restorer: Restorer,
    pub(super) events: Mutex<Vec<GroupEvent>>,
    /// The commit cycle under way, if any. A rebalance waits for it before
    /// giving partitions up or reading the offsets of new ones, so the
    /// offsets it reads are the ones that cycle left.
    pub(super) in_flight: Mutex<Option<InFlight>>,
    /// Outcomes of finished cycles not yet counted by the loop.
    pub(super) finished: Mutex<Vec<CycleOutcome>>,
}

impl ClientContext for GroupContext {}

impl GroupContext {
    pub(super) fn new(store: Arc<Mutex<RocksStore>>, topics: Topics, restorer: Restorer) -> GroupContext {
        GroupContext {
            store,
            topics,
            restorer,
            events: Mutex::new(Vec::new()),
            in_flight: Mutex::new(None),
            finished: Mutex::new(Vec::new()),
        }
    }

    /// Waits for the commit cycle under way (or only takes it when it has
    /// finished, with `wait` false) and keeps its outcomes for the loop.
    pub(super) fn finish_in_flight(&self, wait: bool) {
        let mut in_flight = self.in_flight.lock().expect("in-flight lock");
        if !wait && !in_flight.as_ref().is_some_and(|cycle| cycle.handle.is_finished()) {
            return;
        }
        let Some(cycle) = in_flight.take() else { return };
        // Should the thread itself have died, each of its tasks failed.
        let partitions = cycle.partitions;
        let outcomes = cycle.handle.join().unwrap_or_else(|_| CycleOutcome {
            wall_millis: 0,
            tasks: partitions
                .into_iter()
                .map(|partition| {
                    (partition, Err(CommitError::Abortable(anyhow::anyhow!("the commit thread panicked"))))
                })
                .collect(),
        });
        self.finished.lock().expect("finished lock").push(outcomes);
    }

    /// The events since the last call.
    pub(super) fn take_events(&self) -> Vec<GroupEvent> {
        std::mem::take(&mut *self.events.lock().expect("events lock"))
    }

    /// The outcomes of settled cycles since the last call.
    pub(super) fn take_finished(&self) -> Vec<CycleOutcome> {
        std::mem::take(&mut *self.finished.lock().expect("finished lock"))
    }

    /// Tasks' partitions of both keyed inputs. The group is subscribed to
    /// the metering topic only: with incremental rebalancing (the sticky
    /// assignor), two subscribed topics would not be co-partitioned — one
    /// member could get deals p and another metering p. Deals p follows
    /// metering p instead, in the same assign and unassign calls.
    fn tasks_list(&self, list: &TopicPartitionList) -> TopicPartitionList {
        let mut partitions: Vec<i32> = list.elements().iter().map(|element| element.partition()).collect();
        partitions.sort_unstable();
        partitions.dedup();
        let mut tasks = TopicPartitionList::new();
        for partition in partitions {
            tasks.add_partition(&self.topics.deals, partition);
            tasks.add_partition(&self.topics.metering, partition);
        }
        tasks
    }

    fn assign(&self, consumer: &BaseConsumer<Self>, list: &TopicPartitionList) -> crate::Result<Vec<Assigned>> {
        let mut list = self.tasks_list(list);
        let committed = consumer.committed_offsets(list.clone(), METADATA_TIMEOUT)?;
        let mut assigned: Vec<Assigned> = keyed_offsets(&self.topics, &committed)
            .into_iter()
            .map(|(partition, committed)| Assigned { partition, committed, records_restored: 0, progress: None })
            .collect();
        let mut store = self.store.lock().expect("store lock");
        for task in &mut assigned {
            let prepared = self.restorer.prepare(&mut store, task.partition, task.committed)?;
            task.records_restored = prepared.records_restored;
            task.progress = prepared.progress.map(Arc::new);
            let stored = store::load_task_meta(&*store, task.partition)?.offsets;
            task.committed
                .check_not_behind(&stored)
                .map_err(|conflict| StateAheadOfGroup { partition: task.partition, conflict })?;
            for topic in [Topic::Deals, Topic::Metering] {
                let name = name_of(&self.topics, topic);
                list.set_partition_offset(name, task.partition as i32, Offset::Offset(stored[topic]))?;
            }
        }
        if matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative) {
            consumer.incremental_assign(&list)?;
        } else {
            consumer.assign(&list)?;
        }
        Ok(assigned)
    }
}

impl ConsumerContext for GroupContext {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, error: RDKafkaRespErr, list: &mut TopicPartitionList) {
        self.finish_in_flight(true);
        match error {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => match self.assign(consumer, list) {
                Ok(assigned) => {
                    // Incremental rebalancing adds partitions: name the whole set too.
                    let mut owned: Vec<i32> = consumer
                        .assignment()
                        .map(|list| list.elements().iter().map(|element| element.partition()).collect())
                        .unwrap_or_default();
                    owned.sort_unstable();
                    owned.dedup();
                    tracing::info!(
                        partitions = ?assigned.iter().map(|a| a.partition).collect::<Vec<_>>(),
                        ?owned,
                        "partitions assigned"
                    );
                    self.events.lock().expect("events lock").push(GroupEvent::Assigned(assigned));
                }
                Err(error) => {
                    tracing::error!(error = %format!("{error:#}"), "cannot take the assigned partitions");
                    let _ = consumer.unassign();
                    self.events.lock().expect("events lock").push(GroupEvent::Revoked(Vec::new()));
                }
            },
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let mut partitions: Vec<u32> =
                    list.elements().iter().map(|element| element.partition() as u32).collect();
                partitions.sort_unstable();
                partitions.dedup();
                tracing::info!(?partitions, "partitions revoked");
                let _ = if matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative) {
                    consumer.incremental_unassign(&self.tasks_list(list))
                } else {
                    consumer.unassign()
                };
                self.events.lock().expect("events lock").push(GroupEvent::Revoked(partitions));
            }
            other => tracing::error!(error = ?other, "rebalance error"),
        }
    }
}
