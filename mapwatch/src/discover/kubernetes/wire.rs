//! The Kubernetes API's JSON, as much of it as the index reads: a `PodList`, the lines
//! of a watch stream, and the error object. Every field the index does not need is left
//! out, so an API change elsewhere in the object cannot break the parse.
use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub uid: String,
    pub resource_version: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ContainerStatus {
    pub name: String,
    /// `<runtime>://<id>`; absent while the container is being created.
    #[serde(rename = "containerID")]
    pub container_id: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    #[serde(default)]
    pub container_statuses: Vec<ContainerStatus>,
    #[serde(default)]
    pub init_container_statuses: Vec<ContainerStatus>,
    #[serde(default)]
    pub ephemeral_container_statuses: Vec<ContainerStatus>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Pod {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub status: Option<PodStatus>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListMeta {
    pub resource_version: Option<String>,
    #[serde(rename = "continue")]
    pub continue_token: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct PodList {
    /// `PodList`; read only to tell a list from other JSON, which every other field's
    /// default would let through as an empty list.
    pub kind: Option<String>,
    #[serde(default)]
    pub metadata: ListMeta,
    #[serde(default)]
    pub items: Vec<Pod>,
}

/// The API's error object (HTTP error bodies and watch ERROR events).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct ApiStatus {
    #[serde(default)]
    pub code: u16,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub message: String,
}

/// One line of a watch stream.
#[derive(Debug, Clone)]
pub enum WatchEvent {
    Added(Pod),
    Modified(Pod),
    Deleted(Pod),
    /// Progress without a change: only the resourceVersion to resume from.
    Bookmark {
        resource_version: String,
    },
    Error(ApiStatus),
}

impl WatchEvent {
    /// Parses one line of a watch response.
    pub fn from_json(line: &[u8]) -> Result<WatchEvent, serde_json::Error> {
        #[derive(Deserialize)]
        struct RawEvent {
            #[serde(rename = "type")]
            kind: String,
            object: serde_json::Value,
        }
        let raw: RawEvent = serde_json::from_slice(line)?;
        let pod = |object| serde_json::from_value::<Pod>(object);
        Ok(match raw.kind.as_str() {
            "ADDED" => WatchEvent::Added(pod(raw.object)?),
            "MODIFIED" => WatchEvent::Modified(pod(raw.object)?),
            "DELETED" => WatchEvent::Deleted(pod(raw.object)?),
            "BOOKMARK" => WatchEvent::Bookmark {
                resource_version: pod(raw.object)?
                    .metadata
                    .resource_version
                    .unwrap_or_default(),
            },
            "ERROR" => WatchEvent::Error(serde_json::from_value(raw.object)?),
            other => {
                return Err(serde::de::Error::custom(format!(
                    "unknown watch event type {other:?}"
                )));
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_event_types_and_bad_json_are_errors() {
        assert!(WatchEvent::from_json(br#"{"type":"RENAMED","object":{}}"#).is_err());
        assert!(WatchEvent::from_json(b"{not json").is_err());
    }
}
