//! Kubernetes API responses: a PodList, watch events (one per line) and error statuses,
//! parsed as the client does and fed to the PodIndex, whose answers must follow.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mapwatch::discover::kubernetes::{ApiStatus, PodIndex, PodList, WatchEvent};

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<ApiStatus>(data);
    let mut index = PodIndex::default();
    if let Ok(list) = serde_json::from_slice::<PodList>(data) {
        index.replace_all(list);
    }
    for line in data.split(|&b| b == b'\n') {
        let Ok(event) = WatchEvent::from_json(line) else {
            continue;
        };
        let (pod, deleted) = match &event {
            WatchEvent::Added(pod) | WatchEvent::Modified(pod) => (Some(pod.clone()), false),
            WatchEvent::Deleted(pod) => (Some(pod.clone()), true),
            _ => (None, false),
        };
        index.apply(event);
        let Some(pod) = pod.filter(|p| !p.metadata.uid.is_empty()) else {
            continue;
        };
        let uid = pod.metadata.uid.as_str();
        let statuses = pod.status.iter().flat_map(|s| {
            s.container_statuses
                .iter()
                .chain(&s.init_container_statuses)
                .chain(&s.ephemeral_container_statuses)
        });
        for status in statuses {
            // `<runtime>://<id>`, keyed by the id in lowercase, as cgroup paths show it.
            let Some((_, id)) = status
                .container_id
                .as_deref()
                .and_then(|i| i.split_once("://"))
            else {
                continue;
            };
            if id.is_empty() {
                continue;
            }
            let resolved = index.resolve(Some(uid), &id.to_ascii_lowercase());
            if deleted {
                assert_eq!(resolved, None, "container {id:?} of deleted pod {uid:?}");
            } else {
                let resolved = resolved.unwrap_or_else(|| panic!("container {id:?} of {uid:?}"));
                assert_eq!(
                    (resolved.namespace.as_str(), resolved.pod.as_str()),
                    (pod.metadata.namespace.as_str(), pod.metadata.name.as_str())
                );
            }
        }
    }
});
