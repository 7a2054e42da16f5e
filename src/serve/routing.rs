//! Which instance answers for which task: each instance announces its HTTP
//! address and the tasks it owns on a small compacted topic (`members`),
//! when its assignment changes and every few seconds; every instance reads
//! the topic from its start and keeps the latest announcement of each. The
//! owner of a task is the instance whose fresh announcement claims it last
//! (in topic order): after a rebalance the new owner's claim follows the
//! old one's. Kafka Streams puts the same map into the group protocol's
//! user data (`application.server`); librdkafka does not let a consumer set
//! it, and a group description does not carry assignments on every broker,
//! so the map travels on a topic of its own.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use rdkafka::consumer::Consumer as _;
use rdkafka::message::Message as _;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::kafka::client;

/// How often an instance announces itself even when nothing changed.
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(5);
/// An announcement older than this no longer makes its instance an owner
/// (the instance stopped without saying so).
pub const FRESH_FOR_MILLIS: i64 = 20_000;

/// One instance's announcement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    /// The instance's advertised URL.
    pub url: String,
    /// The tasks it owns (empty: it left).
    pub tasks: Vec<u32>,
    /// Wall-clock milliseconds when it was sent.
    pub at: i64,
}

/// The announcements read so far: the latest per instance, with its
/// position in the topic.
#[derive(Debug, Default)]
pub struct Directory {
    members: Mutex<BTreeMap<String, (i64, Announcement)>>,
}

impl Directory {
    /// Takes the announcement at `offset` of the members topic.
    pub fn absorb(&self, offset: i64, announcement: Announcement) {
        let mut members = self.members.lock().expect("directory lock");
        let newer = members.get(&announcement.url).is_none_or(|(seen, _)| *seen < offset);
        if newer {
            members.insert(announcement.url.clone(), (offset, announcement));
        }
    }

    /// The URL of the instance that owns `task` as of `now` (wall-clock
    /// milliseconds), if a fresh announcement claims it.
    pub fn owner(&self, task: u32, now: i64) -> Option<String> {
        let members = self.members.lock().expect("directory lock");
        members
            .values()
            .filter(|(_, announcement)| now - announcement.at <= FRESH_FOR_MILLIS && announcement.tasks.contains(&task))
            .max_by_key(|(offset, _)| *offset)
            .map(|(_, announcement)| announcement.url.clone())
    }

    /// The owner of every task of `tasks` that has one: task → URL.
    pub fn owners(&self, tasks: u32, now: i64) -> BTreeMap<u32, String> {
        (0..tasks).filter_map(|task| self.owner(task, now).map(|url| (task, url))).collect()
    }
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_millis() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_millis() as i64)
}

/// Publishes this instance's announcements (from the processor's loop).
pub struct Announcer {
    producer: BaseProducer,
    topic: String,
    url: String,
    last: Option<(BTreeSet<u32>, std::time::Instant)>,
}

impl Announcer {
    pub fn new(config: &Config, url: &str) -> crate::Result<Announcer> {
        Ok(Announcer {
            producer: client::tick_producer(config).context("creating the members producer")?,
            topic: config.topics.members.clone(),
            url: url.to_owned(),
            last: None,
        })
    }

    /// Announces `tasks` when they changed or [`ANNOUNCE_EVERY`] has passed.
    pub fn announce(&mut self, tasks: &BTreeSet<u32>) -> crate::Result<()> {
        let due = match &self.last {
            Some((last, at)) => last != tasks || at.elapsed() >= ANNOUNCE_EVERY,
            None => true,
        };
        if due {
            self.send(tasks)?;
            self.last = Some((tasks.clone(), std::time::Instant::now()));
        }
        self.producer.poll(Duration::ZERO);
        Ok(())
    }

    fn send(&self, tasks: &BTreeSet<u32>) -> crate::Result<()> {
        let announcement =
            Announcement { url: self.url.clone(), tasks: tasks.iter().copied().collect(), at: now_millis() };
        let value = serde_json::to_vec(&announcement)?;
        self.producer
            .send(BaseRecord::to(&self.topic).partition(0).key(self.url.as_bytes()).payload(&value))
            .map_err(|(error, _)| error)
            .with_context(|| format!("announcing this instance on {}", self.topic))?;
        Ok(())
    }

    /// Says that this instance owns nothing any more, and waits (briefly)
    /// for the broker to take it.
    pub fn leave(self) {
        if let Err(error) = self.send(&BTreeSet::new()) {
            tracing::warn!(error = %format!("{error:#}"), "could not announce leaving");
        }
        let _ = self.producer.flush(Duration::from_secs(5));
    }
}

/// The thread that reads the members topic; dropping it stops the thread
/// and waits until its reader is closed (a Kafka client still tearing down
/// when the process exits can abort the process).
pub struct Follower {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if self.thread.take().is_some_and(|thread| thread.join().is_err()) {
            tracing::warn!("the members reader panicked");
        }
    }
}

/// Reads the members topic into `directory` on a thread of its own until
/// the [`Follower`] is stopped.
pub fn follow(config: &Config, directory: Arc<Directory>) -> crate::Result<Follower> {
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = Arc::clone(&stop);
    let reader = client::reader(config, "members", &[])?;
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(&config.topics.members, 0, Offset::Beginning)?;
    reader.assign(&list).context("assigning the members topic")?;
    let thread = std::thread::Builder::new()
        .name("members".to_owned())
        .spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                let Some(result) = reader.poll(Duration::from_millis(200)) else { continue };
                let Ok(message) = result else { continue };
                let parsed = message.payload().map(serde_json::from_slice::<Announcement>);
                match parsed {
                    Some(Ok(announcement)) => directory.absorb(message.offset(), announcement),
                    _ => tracing::debug!(offset = message.offset(), "skipping an unreadable announcement"),
                }
            }
            client::close_in_background(reader);
        })
        .context("starting the members reader")?;
    Ok(Follower { stop, thread: Some(thread) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn announcement(url: &str, tasks: &[u32], at: i64) -> Announcement {
        Announcement { url: url.to_owned(), tasks: tasks.to_vec(), at }
    }

    #[test]
    fn the_latest_fresh_claim_of_a_task_names_its_owner() {
        let directory = Directory::default();
        directory.absorb(0, announcement("http://a", &[0, 1, 2, 3], 1_000));
        directory.absorb(1, announcement("http://b", &[], 1_000));
        assert_eq!(directory.owner(2, 2_000).as_deref(), Some("http://a"));
        // A rebalance: b takes 2 and 3 and says so before a does.
        directory.absorb(2, announcement("http://b", &[2, 3], 3_000));
        assert_eq!(directory.owner(2, 3_000).as_deref(), Some("http://b"), "the later claim wins");
        assert_eq!(directory.owner(0, 3_000).as_deref(), Some("http://a"));
        directory.absorb(3, announcement("http://a", &[0, 1], 3_100));
        assert_eq!(directory.owners(4, 3_200).len(), 4);
        // An older announcement read late does not undo a newer one.
        directory.absorb(1, announcement("http://b", &[], 1_000));
        assert_eq!(directory.owner(3, 3_200).as_deref(), Some("http://b"));
        // a stops without saying so: its claims go stale.
        assert_eq!(directory.owner(0, 3_100 + FRESH_FOR_MILLIS + 1), None);
        // b leaves: it owns nothing.
        directory.absorb(4, announcement("http://b", &[], 3_300));
        assert_eq!(directory.owner(2, 3_300), None);
    }
}
