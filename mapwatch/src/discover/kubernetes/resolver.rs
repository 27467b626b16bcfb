//! The resolver: a background task keeps a [`PodIndex`] in sync with the API — list,
//! then watch from the list's resourceVersion; on 410 Gone (the version was compacted)
//! list again — while lookups read the index under a lock.
use std::{
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::{sync::watch, task::JoinHandle};
use tracing::{debug, info, warn};

use super::{
    KubernetesMode,
    client::{ApiClient, InClusterConfig, KubeError, SERVICE_ACCOUNT_DIR, WATCH_TIMEOUT_SECONDS},
    index::{PodIdentity, PodIndex, WatchOutcome},
};
use crate::discover::cgroup::CgroupContainer;

/// Bookmarks arrive about once a minute, so a watch silent for much longer than its own
/// timeout is a dead connection.
const WATCH_IDLE_LIMIT: Duration = Duration::from_secs(WATCH_TIMEOUT_SECONDS + 60);
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Resolves containers to pods while a background task lists and watches this node's
/// pods. Dropping it stops the task.
pub struct PodResolver {
    index: Arc<RwLock<PodIndex>>,
    updates: watch::Receiver<u64>,
    synced: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl PodResolver {
    /// The resolver `kubernetes = auto|on|off` asks for: `Ok(None)` when off, or when
    /// auto and this is not a Kubernetes pod. Must run inside a tokio runtime.
    pub fn from_environment(mode: KubernetesMode) -> Result<Option<PodResolver>, KubeError> {
        if mode == KubernetesMode::Off {
            return Ok(None);
        }
        let config = match InClusterConfig::from_env() {
            Ok(Some(config)) => config,
            Ok(None) if mode == KubernetesMode::On => {
                return Err(KubeError::NotInCluster(format!(
                    "KUBERNETES_SERVICE_HOST is unset or {SERVICE_ACCOUNT_DIR}/token is missing"
                )));
            }
            Ok(None) => return Ok(None),
            Err(error) => return Err(error),
        };
        let client = ApiClient::in_cluster(&config)?;
        info!(node = %config.node_name, api = %client.endpoint(), "resolving pods through the Kubernetes API");
        Ok(Some(PodResolver::start(client, config.node_name)))
    }

    /// Starts listing and watching the pods of `node_name` through `client`.
    pub fn start(client: ApiClient, node_name: String) -> PodResolver {
        let index = Arc::new(RwLock::new(PodIndex::default()));
        let (notify, updates) = watch::channel(0u64);
        let synced = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(sync_pods(
            client,
            node_name,
            Arc::clone(&index),
            notify,
            Arc::clone(&synced),
        ));
        PodResolver {
            index,
            updates,
            synced,
            task,
        }
    }

    /// The first list has arrived (until then every lookup misses).
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// The pod and container name of a container, if the index knows it now.
    pub fn resolve(&self, container: &CgroupContainer) -> Option<PodIdentity> {
        self.read_index()
            .resolve(container.pod_uid.as_deref(), &container.container_id)
    }

    /// Like [`PodResolver::resolve`], but waits up to `wait` for the index to learn the
    /// container: a process can start before the kubelet has reported its container id.
    pub async fn resolve_within(
        &self,
        container: &CgroupContainer,
        wait: Duration,
    ) -> Option<PodIdentity> {
        let mut updates = self.updates.clone();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Mark before looking, so an update between the look and the wait is not
            // missed.
            updates.mark_unchanged();
            if let Some(found) = self.resolve(container) {
                return Some(found);
            }
            match tokio::time::timeout_at(deadline, updates.changed()).await {
                Ok(Ok(())) => continue,
                _ => return self.resolve(container),
            }
        }
    }

    /// A copy of the current index (for diagnostics and tests).
    pub fn snapshot(&self) -> PodIndex {
        self.read_index().clone()
    }

    fn read_index(&self) -> std::sync::RwLockReadGuard<'_, PodIndex> {
        // A panic while holding the lock leaves a consistent map (every mutation is
        // one call), so a poisoned lock is still readable.
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for PodResolver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// List, then watch from the list's version; rewatch when a watch ends, relist on 410.
/// Errors back off exponentially and are logged, never fatal: labels are a nicety, the
/// profiling goes on without them.
async fn sync_pods(
    client: ApiClient,
    node_name: String,
    index: Arc<RwLock<PodIndex>>,
    notify: watch::Sender<u64>,
    synced: Arc<AtomicBool>,
) {
    // Every way a watch ends early — errors, 410s, a server that closes at once — waits
    // here, so a misbehaving API server is never hammered; only a watch that delivered
    // events resets the wait.
    let mut retry = Backoff::default();
    'relist: loop {
        let list = match client.list_pods(&node_name).await {
            Ok(list) => list,
            Err(error) => {
                warn!(%error, retry_in = ?retry.delay, "listing pods failed");
                retry.wait().await;
                continue;
            }
        };
        let count = list.items.len();
        update(&index, &notify, |index| index.replace_all(list));
        synced.store(true, Ordering::Release);
        debug!(pods = count, "listed pods");
        loop {
            let version = index
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .resource_version()
                .map(str::to_string);
            let mut stream = match client.watch_pods(&node_name, version.as_deref()).await {
                Ok(stream) => stream,
                Err(KubeError::Gone) => {
                    debug!("watch refused with 410 Gone: relisting");
                    retry.wait().await;
                    continue 'relist;
                }
                Err(error) => {
                    warn!(%error, retry_in = ?retry.delay, "watching pods failed");
                    retry.wait().await;
                    continue;
                }
            };
            let mut delivered = false;
            loop {
                match tokio::time::timeout(WATCH_IDLE_LIMIT, stream.next_event()).await {
                    Ok(Ok(Some(event))) => {
                        match update(&index, &notify, |index| index.apply(event)) {
                            WatchOutcome::Continue => {
                                if !delivered {
                                    delivered = true;
                                    retry.reset();
                                }
                            }
                            WatchOutcome::Relist => {
                                debug!("watch expired (410): relisting");
                                retry.wait().await;
                                continue 'relist;
                            }
                            WatchOutcome::Rewatch(status) => {
                                warn!(code = status.code, reason = %status.reason, message = %status.message, "pod watch error; watching again");
                                retry.wait().await;
                                break;
                            }
                        }
                    }
                    // The server's timeoutSeconds: watch again from where we are.
                    Ok(Ok(None)) => {
                        if !delivered {
                            retry.wait().await;
                        }
                        break;
                    }
                    Ok(Err(error)) => {
                        warn!(%error, retry_in = ?retry.delay, "pod watch broke");
                        retry.wait().await;
                        break;
                    }
                    Err(_) => {
                        warn!(idle = ?WATCH_IDLE_LIMIT, "pod watch silent; reconnecting");
                        break;
                    }
                }
            }
        }
    }
}

/// Exponential backoff between attempts: 0.5 s doubling to 30 s.
struct Backoff {
    delay: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff { delay: RETRY_MIN }
    }
}

impl Backoff {
    async fn wait(&mut self) {
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(RETRY_MAX);
    }

    fn reset(&mut self) {
        self.delay = RETRY_MIN;
    }
}

/// Changes the index under its lock and wakes [`PodResolver::resolve_within`] waiters.
fn update<T>(
    index: &RwLock<PodIndex>,
    notify: &watch::Sender<u64>,
    change: impl FnOnce(&mut PodIndex) -> T,
) -> T {
    let outcome = change(&mut index.write().unwrap_or_else(|p| p.into_inner()));
    notify.send_modify(|generation| *generation += 1);
    outcome
}
