//! The pods of one node, indexed by container id: pure state fed by a `PodList` and
//! watch events, so every case (restarts, deletions, relists, 410s) is tested without a
//! server. The id in `/proc/PID/cgroup` is the one in the pod's
//! `status.*containerStatuses[].containerID`.
use std::collections::HashMap;

use hyper::StatusCode;

use super::wire::{ApiStatus, Pod, PodList, WatchEvent};

/// Kubernetes names of one container.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodIdentity {
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

/// What the watcher does after an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchOutcome {
    /// Keep reading the stream.
    Continue,
    /// The resourceVersion is too old (410): list again.
    Relist,
    /// Another API error ended the watch. Listing again is the one way out that always
    /// works: watching again from the same version can fail forever (a version beyond
    /// the store's after an etcd restore is refused as "too large" every time).
    Failed(ApiStatus),
}

#[derive(Debug, Clone)]
struct IndexedPod {
    namespace: String,
    name: String,
    container_ids: Vec<String>,
}

#[derive(Debug, Clone)]
struct IndexedContainer {
    pod_uid: String,
    name: String,
}

/// The pods of one node, indexed by UID and by container id.
#[derive(Debug, Default, Clone)]
pub struct PodIndex {
    pods: HashMap<String, IndexedPod>,
    containers: HashMap<String, IndexedContainer>,
    resource_version: Option<String>,
}

impl PodIndex {
    /// Replaces everything with a (re)list: pods deleted while no watch ran disappear.
    pub fn replace_all(&mut self, list: PodList) {
        self.pods.clear();
        self.containers.clear();
        for pod in list.items {
            self.upsert(pod);
        }
        self.resource_version = list.metadata.resource_version;
    }

    /// Applies one watch event.
    pub fn apply(&mut self, event: WatchEvent) -> WatchOutcome {
        match event {
            WatchEvent::Added(pod) | WatchEvent::Modified(pod) => {
                self.note_version(&pod);
                self.upsert(pod);
            }
            WatchEvent::Deleted(pod) => {
                self.note_version(&pod);
                self.remove(&pod.metadata.uid);
            }
            WatchEvent::Bookmark { resource_version } => {
                if !resource_version.is_empty() {
                    self.resource_version = Some(resource_version);
                }
            }
            WatchEvent::Error(status) if status.code == StatusCode::GONE.as_u16() => {
                return WatchOutcome::Relist;
            }
            WatchEvent::Error(status) => return WatchOutcome::Failed(status),
        }
        WatchOutcome::Continue
    }

    /// The resourceVersion to watch from.
    pub fn resource_version(&self) -> Option<&str> {
        self.resource_version.as_deref()
    }

    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    /// The container with this id. Container ids are unique on a node, so the id alone
    /// decides; the pod UID from the cgroup path, when known, must agree (a mismatch
    /// means the index is stale, and a wrong label is worse than none).
    pub fn resolve(&self, pod_uid: Option<&str>, container_id: &str) -> Option<PodIdentity> {
        let container = self.containers.get(container_id)?;
        if pod_uid.is_some_and(|uid| uid != container.pod_uid) {
            return None;
        }
        let pod = self.pods.get(&container.pod_uid)?;
        Some(PodIdentity {
            namespace: pod.namespace.clone(),
            pod: pod.name.clone(),
            container: container.name.clone(),
        })
    }

    /// Namespace and name of the pod with this UID.
    pub fn pod(&self, pod_uid: &str) -> Option<(&str, &str)> {
        self.pods
            .get(pod_uid)
            .map(|pod| (pod.namespace.as_str(), pod.name.as_str()))
    }

    fn note_version(&mut self, pod: &Pod) {
        if let Some(version) = &pod.metadata.resource_version {
            self.resource_version = Some(version.clone());
        }
    }

    fn upsert(&mut self, pod: Pod) {
        let uid = pod.metadata.uid;
        if uid.is_empty() {
            return;
        }
        // A restarted container gets a new id: drop the pod's old ids first.
        self.remove(&uid);
        let mut container_ids = Vec::new();
        if let Some(status) = pod.status {
            let all = status
                .container_statuses
                .into_iter()
                .chain(status.init_container_statuses)
                .chain(status.ephemeral_container_statuses);
            for container in all {
                let Some(id) = container
                    .container_id
                    .as_deref()
                    .and_then(bare_container_id)
                else {
                    continue;
                };
                self.containers.insert(
                    id.to_string(),
                    IndexedContainer {
                        pod_uid: uid.clone(),
                        name: container.name,
                    },
                );
                container_ids.push(id.to_string());
            }
        }
        self.pods.insert(
            uid,
            IndexedPod {
                namespace: pod.metadata.namespace,
                name: pod.metadata.name,
                container_ids,
            },
        );
    }

    fn remove(&mut self, uid: &str) {
        if let Some(old) = self.pods.remove(uid) {
            for id in old.container_ids {
                self.containers.remove(&id);
            }
        }
    }
}

/// `containerd://<id>`, `cri-o://<id>`, `docker://<id>` → `<id>` (lowercase, as in
/// cgroup paths).
fn bare_container_id(status_id: &str) -> Option<String> {
    let (_runtime, id) = status_id.split_once("://")?;
    (!id.is_empty()).then(|| id.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    const API_UID: &str = "7c4b2d1e-9f3a-4b8c-a1d2-3e4f5a6b7c8d";
    const API_SERVER: &str = "c92b0cdc8c5e554d65ed0576d9f5772e047e308927cbe9aff84fea5339bc4208";
    const API_SERVER_RESTARTED: &str =
        "6167705897c42490d7cb1422efcaf5478b85071ad2be67212b023709a9bf15fe";
    const API_ENVOY: &str = "373c91a9c2896585edd82d83afdd5d00e1cb10b9f3c2d7ebb5b6d73a6c2a313b";
    const API_MIGRATE: &str = "1a9db663ded00edd0fadf8cbd73847116a07de66b6e24803f927530d811f14da";
    const API_DEBUGGER: &str = "3acdea75b07cf97673ff700db60cc4e10d4413563e57f2fa678cafbb01e363c8";
    const PROXY: &str = "e5cd33f3e1a760bebb5266e23bea114dc194f05ab04660a3d458a223d581186b";
    const WORKER: &str = "dfd01d03387c6a0f11ef313f523815b76897dbe39a6e1c732a0b8bd174e46a3d";
    const CRON: &str = "8fceda0828327754031d9330238e1fcfc33f94ac60a79090de77bedec8ad674a";
    const API2_SERVER: &str = "6f19c6b94b7474b062d9a31e5184eff2ef9ade1cd5d247bc4f554b7bca709155";

    fn corpus(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/tests/corpus/kubernetes/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn list(name: &str) -> PodList {
        serde_json::from_slice(&corpus(name)).unwrap()
    }

    fn events() -> Vec<WatchEvent> {
        corpus("watch-events.jsonl")
            .split(|&b| b == b'\n')
            .filter(|line| !line.is_empty())
            .map(|line| WatchEvent::from_json(line).unwrap())
            .collect()
    }

    fn who(index: &PodIndex, id: &str) -> Option<(String, String, String)> {
        index
            .resolve(None, id)
            .map(|p| (p.namespace, p.pod, p.container))
    }

    fn named(ns: &str, pod: &str, container: &str) -> Option<(String, String, String)> {
        Some((ns.into(), pod.into(), container.into()))
    }

    #[test]
    fn list_indexes_regular_init_and_ephemeral_containers() {
        let mut index = PodIndex::default();
        index.replace_all(list("podlist-initial.json"));
        assert_eq!(index.pod_count(), 3);
        assert_eq!(index.resource_version(), Some("48213"));
        let api = "api-7d9f8c6b5-x2x4q";
        assert_eq!(who(&index, API_SERVER), named("shop", api, "server"));
        assert_eq!(who(&index, API_ENVOY), named("shop", api, "envoy"));
        assert_eq!(who(&index, API_MIGRATE), named("shop", api, "migrate"));
        assert_eq!(
            who(&index, API_DEBUGGER),
            named("shop", api, "debugger-xk2lp")
        );
        assert_eq!(
            who(&index, PROXY),
            named("kube-system", "kube-proxy-7hq2m", "kube-proxy")
        );
        // Pending: the pod is known, its container not yet.
        assert_eq!(who(&index, WORKER), None);
        assert_eq!(
            index.pod("a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"),
            Some(("shop", "worker-5f6d7c8b9-q8r7t"))
        );
    }

    #[test]
    fn pod_uid_from_the_cgroup_must_agree() {
        let mut index = PodIndex::default();
        index.replace_all(list("podlist-initial.json"));
        assert!(index.resolve(Some(API_UID), API_SERVER).is_some());
        assert_eq!(
            index.resolve(Some("00000000-0000-0000-0000-000000000000"), API_SERVER),
            None
        );
    }

    #[test]
    fn watch_events_follow_the_node() {
        let mut index = PodIndex::default();
        index.replace_all(list("podlist-initial.json"));
        let mut outcomes = Vec::new();
        for event in events() {
            outcomes.push(index.apply(event));
        }
        use WatchOutcome::*;
        assert_eq!(
            outcomes,
            [Continue, Continue, Continue, Continue, Continue, Relist]
        );
        // MODIFIED: the worker's container started.
        assert_eq!(
            who(&index, WORKER),
            named("shop", "worker-5f6d7c8b9-q8r7t", "worker")
        );
        // ADDED in another namespace.
        assert_eq!(
            who(&index, CRON),
            named("batch", "report-28391020-k5x9z", "report")
        );
        // DELETED.
        assert_eq!(who(&index, PROXY), None);
        // MODIFIED after a restart: the new id resolves, the old one no longer does.
        assert_eq!(
            who(&index, API_SERVER_RESTARTED),
            named("shop", "api-7d9f8c6b5-x2x4q", "server")
        );
        assert_eq!(who(&index, API_SERVER), None);
        assert_eq!(
            who(&index, API_ENVOY),
            named("shop", "api-7d9f8c6b5-x2x4q", "envoy")
        );
        // The last object before the ERROR set the version to resume from.
        assert_eq!(index.resource_version(), Some("48255"));
    }

    #[test]
    fn bookmark_moves_the_resource_version_only() {
        let mut index = PodIndex::default();
        index.replace_all(list("podlist-initial.json"));
        let bookmark = events()
            .into_iter()
            .find(|e| matches!(e, WatchEvent::Bookmark { .. }))
            .unwrap();
        assert_eq!(index.apply(bookmark), WatchOutcome::Continue);
        assert_eq!(index.resource_version(), Some("48235"));
        assert_eq!(index.pod_count(), 3);
    }

    #[test]
    fn relist_forgets_pods_deleted_while_not_watching() {
        let mut index = PodIndex::default();
        index.replace_all(list("podlist-initial.json"));
        for event in events() {
            index.apply(event);
        }
        index.replace_all(list("podlist-relist.json"));
        assert_eq!(index.resource_version(), Some("48801"));
        assert_eq!(who(&index, CRON), None);
        assert_eq!(
            who(&index, API2_SERVER),
            named("shop", "api-7d9f8c6b5-m4n7p", "server")
        );
        assert_eq!(index.pod_count(), 3);
    }

    #[test]
    fn other_watch_errors_end_the_watch() {
        let event = WatchEvent::from_json(
            br#"{"type":"ERROR","object":{"kind":"Status","status":"Failure","message":"etcd leader changed","reason":"InternalError","code":500}}"#,
        )
        .unwrap();
        let mut index = PodIndex::default();
        assert!(matches!(index.apply(event), WatchOutcome::Failed(s) if s.code == 500));
    }

    #[test]
    fn container_ids_of_every_runtime_lose_their_scheme() {
        for (status_id, bare) in [
            ("containerd://ABC123", "abc123"),
            ("cri-o://0123", "0123"),
            ("docker://ff", "ff"),
        ] {
            assert_eq!(bare_container_id(status_id).as_deref(), Some(bare));
        }
        assert_eq!(bare_container_id("containerd://"), None);
        assert_eq!(bare_container_id("no-scheme"), None);
    }
}
