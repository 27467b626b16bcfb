//! Pod resolver: (pod UID, container id) → (namespace, pod, container name), from a
//! node-scoped list + watch of pods on the Kubernetes API with the pod's service account.
//!
//! Four parts, kept apart so the state is testable without a server:
//! - `wire`: the API's JSON shapes ([`PodList`], [`WatchEvent`], [`ApiStatus`]), only
//!   the fields the index reads.
//! - `index`: [`PodIndex`], pure state fed by a list and watch events, queried by
//!   container id.
//! - `client`: [`ApiClient`], the HTTPS I/O (and [`InClusterConfig`], what a pod is
//!   given to reach the API).
//! - `resolver`: [`PodResolver`], the background task that lists, then watches from the
//!   list's resourceVersion, and on 410 Gone (the version was compacted) or a failed
//!   watch lists again; while the API fails it backs off, counts each failure in
//!   `mapwatch_kubernetes_api_errors_total` and logs once per outage.
mod client;
mod index;
mod resolver;
mod wire;

use serde::{Deserialize, Serialize};

pub use client::{
    ApiClient, ApiTimeouts, InClusterConfig, KubeError, MAX_EVENT_BYTES, MAX_LIST_BYTES,
    SERVICE_ACCOUNT_DIR, WatchStream,
};
pub use index::{PodIdentity, PodIndex, WatchOutcome};
pub use resolver::{PodResolver, ResolverOptions};
pub use wire::{
    ApiStatus, ContainerStatus, ListMeta, ObjectMeta, Pod, PodList, PodStatus, WatchEvent,
};

/// Whether workloads are named by their Kubernetes pod. Here rather than with the rest of
/// the configuration because the resolver decides by it, and discovery sits below the
/// configuration that chooses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum KubernetesMode {
    /// Resolve pods when running in a pod with a service account; else skip quietly.
    #[default]
    Auto,
    /// Resolve pods; refuse to start outside Kubernetes.
    On,
    /// Never ask the Kubernetes API (labels: binary and go_version only).
    Off,
}
