//! The resolver: a background task keeps a [`PodIndex`] in sync with the API — list,
//! then watch from the list's resourceVersion; on 410 Gone (the version was compacted)
//! or a failed watch list again — while lookups read the index under a lock. An API
//! that is down, slow or answering garbage only leaves new processes without pod labels:
//! the task backs off, counts each failure, logs once per outage and resumes by itself.
use std::{
    collections::HashSet,
    fmt::Display,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use prometheus::IntCounterVec;
use tokio::{sync::watch, task::JoinHandle};
use tracing::{debug, info, warn};

use super::{
    KubernetesMode,
    client::{ApiClient, InClusterConfig, KubeError, SERVICE_ACCOUNT_DIR},
    index::{PodIdentity, PodIndex, WatchOutcome},
};
use crate::{discover::cgroup::CgroupContainer, metrics::KubernetesApiErrorKind};

/// How the resolver counts its failures and how long it waits between attempts.
#[derive(Clone)]
pub struct ResolverOptions {
    /// `mapwatch_kubernetes_api_errors_total`, by [`KubernetesApiErrorKind`].
    pub api_errors: IntCounterVec,
    /// The wait after a first failure, doubled after each further one…
    pub retry_min: Duration,
    /// …up to this.
    pub retry_max: Duration,
}

impl ResolverOptions {
    /// Waits of 0.5 s doubling to 30 s.
    pub fn new(api_errors: IntCounterVec) -> ResolverOptions {
        ResolverOptions {
            api_errors,
            retry_min: Duration::from_millis(500),
            retry_max: Duration::from_secs(30),
        }
    }
}

/// Resolves containers to pods while a background task lists and watches this node's
/// pods. Dropping it stops the task.
pub struct PodResolver {
    index: Arc<RwLock<PodIndex>>,
    updates: watch::Receiver<u64>,
    synced: Arc<AtomicBool>,
    failing: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl PodResolver {
    /// The resolver `kubernetes = auto|on|off` asks for: `Ok(None)` when off, or when
    /// auto and this is not a Kubernetes pod. Must run inside a tokio runtime.
    pub fn from_environment(
        mode: KubernetesMode,
        options: ResolverOptions,
    ) -> Result<Option<PodResolver>, KubeError> {
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
        Ok(Some(PodResolver::start(client, config.node_name, options)))
    }

    /// Starts listing and watching the pods of `node_name` through `client`.
    pub fn start(client: ApiClient, node_name: String, options: ResolverOptions) -> PodResolver {
        let index = Arc::new(RwLock::new(PodIndex::default()));
        let (notify, updates) = watch::channel(0u64);
        let synced = Arc::new(AtomicBool::new(false));
        let failing = Arc::new(AtomicBool::new(false));
        let health = Health {
            api: client.endpoint(),
            errors: options.api_errors.clone(),
            failing: Arc::clone(&failing),
            outage: None,
        };
        let retry = Backoff {
            delay: options.retry_min,
            min: options.retry_min,
            max: options.retry_max,
        };
        let task = tokio::spawn(sync_pods(
            client,
            node_name,
            Arc::clone(&index),
            notify,
            Arc::clone(&synced),
            health,
            retry,
        ));
        PodResolver {
            index,
            updates,
            synced,
            failing,
            task,
        }
    }

    /// The first list has arrived (until then every lookup misses).
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// The last request to the API failed (and none has succeeded since): the index
    /// is not being kept up to date.
    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }

    /// The pod and container name of a container, if the index knows it now.
    pub fn resolve(&self, container: &CgroupContainer) -> Option<PodIdentity> {
        self.read_index()
            .resolve(container.pod_uid.as_deref(), &container.container_id)
    }

    /// Like [`PodResolver::resolve`], but waits up to `wait` for the index to learn the
    /// container: a process can start before the kubelet has reported its container id.
    /// No wait while the API is failing: nothing would arrive, and the daemon attaches
    /// one process at a time, so every new container would stall it for `wait`.
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
            if self.is_failing() {
                return None;
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

/// List, then watch from the list's version; rewatch when a watch ends, relist on 410
/// and after a failed watch. Errors back off exponentially, are counted and logged once
/// per outage, and are never fatal: labels are a nicety, the profiling goes on without
/// them.
async fn sync_pods(
    client: ApiClient,
    node_name: String,
    index: Arc<RwLock<PodIndex>>,
    notify: watch::Sender<u64>,
    synced: Arc<AtomicBool>,
    mut health: Health,
    // Every failed request and every end of a watch waits here, so a misbehaving API
    // server is never hammered; only a watch that stayed open a while resets the wait.
    mut retry: Backoff,
) {
    'relist: loop {
        let list = match client.list_pods(&node_name).await {
            Ok(list) => list,
            Err(error) => {
                health.failed(error.kind(), "listing pods failed", &error, retry.delay);
                retry.wait().await;
                continue;
            }
        };
        health.answered();
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
                    health.failed(error.kind(), "watching pods failed", &error, retry.delay);
                    retry.wait().await;
                    // An API server that was out of reach tends to come back with its
                    // versions intact, and a 410 will say if ours is too old. Any other
                    // refusal may be of the version itself (one beyond the store's after
                    // an etcd restore is refused every time), which only a list resets.
                    if error.is_unreachable() {
                        continue;
                    }
                    continue 'relist;
                }
            };
            health.answered();
            // A watch that stays open this long is a working one, however it ends.
            // One that ends sooner, even after some events, keeps the wait growing and
            // the outage going: a proxy that cuts every watch after its first bytes
            // must neither be asked again twice a second by every node nor log an end
            // and a start of an outage at every attempt.
            let stable_at = tokio::time::Instant::now() + retry.max;
            let mut stable = false;
            let relist = loop {
                let next = tokio::select! {
                    next = stream.next_event() => next,
                    () = tokio::time::sleep_until(stable_at), if !stable => {
                        stable = true;
                        retry.reset();
                        health.recovered();
                        continue;
                    }
                };
                match next {
                    Ok(Some(event)) => match update(&index, &notify, |index| index.apply(event)) {
                        WatchOutcome::Continue => {}
                        WatchOutcome::Relist => {
                            debug!("watch expired (410): relisting");
                            break true;
                        }
                        WatchOutcome::Failed(status) => {
                            let error =
                                format!("{} {}: {}", status.code, status.reason, status.message);
                            health.failed(
                                Some(KubernetesApiErrorKind::WatchError),
                                "the pod watch sent an error",
                                &error,
                                retry.delay,
                            );
                            break true;
                        }
                    },
                    // The server's timeoutSeconds: watch again from where we are.
                    Ok(None) => break false,
                    // A broken or silent connection: the events before the break were
                    // whole, so the watch resumes after the last one.
                    Err(error @ (KubeError::Http(_) | KubeError::WatchSilent { .. })) => {
                        health.failed(error.kind(), "the pod watch broke", &error, retry.delay);
                        break false;
                    }
                    // Garbage: nothing read from this stream can be trusted to resume
                    // from.
                    Err(error) => {
                        health.failed(
                            error.kind(),
                            "the pod watch sent what is not a watch event",
                            &error,
                            retry.delay,
                        );
                        break true;
                    }
                }
            };
            retry.wait().await;
            if relist {
                continue 'relist;
            }
        }
    }
}

/// Whether the API answers, for the log and for lookups. One warning when it starts
/// failing (and one more for each other kind of failure in the same outage), one line
/// when it works again: an outage of hours retries hundreds of times, and those are
/// only counted.
struct Health {
    api: String,
    errors: IntCounterVec,
    /// Shared with [`PodResolver::is_failing`].
    failing: Arc<AtomicBool>,
    outage: Option<Outage>,
}

struct Outage {
    since: Instant,
    failures: u64,
    kinds: HashSet<Option<KubernetesApiErrorKind>>,
}

impl Health {
    fn failed(
        &mut self,
        kind: Option<KubernetesApiErrorKind>,
        what: &str,
        error: &dyn Display,
        retry_in: Duration,
    ) {
        // Failing before counted: whoever sees the count sees the lookups' fast path.
        self.failing.store(true, Ordering::Release);
        if let Some(kind) = kind {
            self.errors.with_label_values(&[kind.label()]).inc();
        }
        let kind_label = kind.map_or("other", KubernetesApiErrorKind::label);
        match &mut self.outage {
            None => {
                warn!(
                    api = %self.api,
                    kind = kind_label,
                    %error,
                    ?retry_in,
                    "{what}; until the Kubernetes API answers again, new processes get no \
                     namespace, pod and container labels (retrying, counted in \
                     mapwatch_kubernetes_api_errors_total)"
                );
                self.outage = Some(Outage {
                    since: Instant::now(),
                    failures: 1,
                    kinds: HashSet::from([kind]),
                });
            }
            Some(outage) => {
                outage.failures += 1;
                if outage.kinds.insert(kind) {
                    warn!(api = %self.api, kind = kind_label, %error, ?retry_in, "{what} (still retrying)");
                } else {
                    debug!(api = %self.api, kind = kind_label, %error, ?retry_in, "{what}");
                }
            }
        }
    }

    /// A list or a watch was answered: the index is (being) brought up to date, so
    /// lookups may wait for it again.
    fn answered(&mut self) {
        self.failing.store(false, Ordering::Release);
    }

    /// A watch has stayed open a while, after a list that worked: the outage, if any,
    /// is over. (A list, or a watch that opens, is not enough: a server whose watches
    /// fail at once would log the end and the start of an outage at every attempt.)
    fn recovered(&mut self) {
        self.answered();
        if let Some(outage) = self.outage.take() {
            info!(
                api = %self.api,
                failures = outage.failures,
                down_for = ?outage.since.elapsed(),
                "the Kubernetes API answers again: new processes get their pod labels"
            );
        }
    }
}

/// Exponential backoff between attempts.
struct Backoff {
    delay: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    async fn wait(&mut self) {
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(self.max);
    }

    fn reset(&mut self) {
        self.delay = self.min;
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
