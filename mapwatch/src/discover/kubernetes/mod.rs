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
//!   list's resourceVersion, and on 410 Gone (the version was compacted) lists again.
mod client;
mod index;
mod resolver;
mod wire;

pub use client::{ApiClient, InClusterConfig, KubeError, SERVICE_ACCOUNT_DIR, WatchStream};
pub use index::{PodIdentity, PodIndex, WatchOutcome};
pub use resolver::PodResolver;
pub use wire::{
    ApiStatus, ContainerStatus, ListMeta, ObjectMeta, Pod, PodList, PodStatus, WatchEvent,
};
