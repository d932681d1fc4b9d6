//! The queue listings a master's drivers share. A driver's watchdog needs
//! to know which entries are still queued (a task taken from the queue and
//! never reported running; an interrupted put): it asks here, and a group
//! is listed at most once per [`FRESH`] however many drivers and tasks wait
//! in it, instead of once per waiting task.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_registry::{Registry, RegistryError};
use tokio::sync::Mutex;

/// How long a listing answers for a group.
pub(crate) const FRESH: Duration = Duration::from_millis(900);

/// A group's last listing and when it was taken; its lock is held while
/// one driver lists, so that the others wait for that listing.
type Listing = Arc<Mutex<Option<(Instant, Arc<HashSet<String>>)>>>;

#[derive(Default)]
pub(crate) struct QueueListings {
    groups: std::sync::Mutex<HashMap<String, Listing>>,
    /// Listings taken from the registry, for tests and metrics.
    taken: std::sync::atomic::AtomicU64,
}

impl QueueListings {
    /// The keys in `group`'s queue, listed at most [`FRESH`] ago.
    pub async fn keys(&self, registry: &Arc<dyn Registry>, group: &str) -> Result<Arc<HashSet<String>>, RegistryError> {
        let slot = self.groups.lock().expect("listings lock").entry(group.to_owned()).or_default().clone();
        // One lister per group at a time: the others wait for its answer.
        let mut slot = slot.lock().await;
        if let Some((at, keys)) = slot.as_ref() {
            if at.elapsed() < FRESH {
                return Ok(keys.clone());
            }
        }
        let keys: Arc<HashSet<String>> = Arc::new(registry.queue_keys(group).await?.into_iter().collect());
        self.taken.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        *slot = Some((Instant::now(), keys.clone()));
        Ok(keys)
    }

    /// How many listings were taken from the registry so far.
    pub fn taken(&self) -> u64 {
        self.taken.load(std::sync::atomic::Ordering::Relaxed)
    }
}
