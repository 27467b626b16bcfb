//! Pod resolver: (pod UID, container id) → (namespace, pod, container name), from a
//! node-scoped list + watch of pods on the Kubernetes API with the pod's service account.
//!
//! Two parts, kept apart so the state is testable without a server:
//! - [`PodIndex`]: pure state fed by a `PodList` and watch events, queried by container
//!   id (the id in `/proc/PID/cgroup` is the one in the pod's
//!   `status.*containerStatuses[].containerID`).
//! - [`ApiClient`] + [`PodResolver`]: the HTTP I/O — list, then watch from the list's
//!   resourceVersion; on 410 Gone (the version was compacted) list again.
//!
//! Why not the `kube` crate: measured on this VM, kube 5 (rustls + ring) with
//! k8s-openapi adds 86 crates and ~116 s CPU to a clean debug build; hyper (already
//! here through axum) with tokio-rustls/ring adds 15 crates and ~53 s. We make two GET
//! requests and read ten fields, so the own client is a small price for half the build.
use std::{
    collections::HashMap,
    io,
    path::{Path, PathBuf},
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::{
    Request, StatusCode,
    body::{Bytes, Incoming},
    header,
};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
    sync::watch,
    task::JoinHandle,
};
use tokio_rustls::{
    TlsConnector,
    rustls::{self, pki_types::ServerName},
};
use tracing::{debug, info, warn};

use super::cgroup::CgroupContainer;
use crate::config::KubernetesMode;

/// Where a pod's service account is mounted (the same in every pod).
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The server closes a watch after this long; the client then watches again from the
/// last resourceVersion (client-go picks 5–10 minutes).
const WATCH_TIMEOUT_SECONDS: u64 = 300;
/// Bookmarks arrive about once a minute, so a watch silent for much longer than its own
/// timeout is a dead connection.
const WATCH_IDLE_LIMIT: Duration = Duration::from_secs(WATCH_TIMEOUT_SECONDS + 60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const LIST_TIMEOUT: Duration = Duration::from_secs(60);
/// A node holds at most a few hundred pods; a list is a few MiB at worst.
const MAX_LIST_BYTES: usize = 64 << 20;
const MAX_EVENT_BYTES: usize = 16 << 20;
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Kubernetes names of one container.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodIdentity {
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

// ---------------------------------------------------------------------------------------
// API objects: only the fields the index reads.

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

/// What the watcher does after an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchOutcome {
    /// Keep reading the stream.
    Continue,
    /// The resourceVersion is too old (410): list again.
    Relist,
    /// Another API error: watch again from the last resourceVersion.
    Rewatch(ApiStatus),
}

// ---------------------------------------------------------------------------------------
// Pure state.

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
            WatchEvent::Error(status) => return WatchOutcome::Rewatch(status),
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

// ---------------------------------------------------------------------------------------
// HTTP I/O.

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error(
        "kubernetes = \"on\" but this is not a Kubernetes pod: {0} (run it as the DaemonSet \
         in deploy/, or set kubernetes = \"off\")"
    )]
    NotInCluster(String),
    #[error(
        "NODE_NAME is not set: the DaemonSet must pass it from the downward API \
         (env NODE_NAME, fieldRef spec.nodeName), or set kubernetes = \"off\""
    )]
    NoNodeName,
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("the Kubernetes CA bundle {path} holds no usable certificate: {reason}")]
    CaBundle { path: PathBuf, reason: String },
    #[error("connecting to the Kubernetes API at {endpoint}: {source}")]
    Connect { endpoint: String, source: io::Error },
    #[error("connecting to the Kubernetes API at {endpoint}: timed out after {CONNECT_TIMEOUT:?}")]
    ConnectTimeout { endpoint: String },
    #[error("HTTP with the Kubernetes API: {0}")]
    Http(#[from] hyper::Error),
    #[error("invalid Kubernetes API request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error(
        "the Kubernetes API refused {path} ({code} {reason}): {message} — the ClusterRole in \
         deploy/ grants get/list/watch on pods to mapwatch's service account"
    )]
    Forbidden {
        path: String,
        code: u16,
        reason: String,
        message: String,
    },
    #[error("the Kubernetes API answered {path} with {code} {reason}: {message}")]
    Status {
        path: String,
        code: u16,
        reason: String,
        message: String,
    },
    /// The resourceVersion asked for is compacted away: list again.
    #[error("resourceVersion too old (410 Gone)")]
    Gone,
    #[error("the Kubernetes API answered {path} with JSON we cannot read: {source}")]
    Json {
        path: String,
        source: serde_json::Error,
    },
    #[error("the Kubernetes API answered {path} with more than {limit} bytes")]
    TooLarge { path: String, limit: usize },
    #[error("no answer from the Kubernetes API to {path} within {after:?}")]
    Timeout { path: String, after: Duration },
}

/// What a pod is given to reach the API: `KUBERNETES_SERVICE_HOST/PORT`, the service
/// account's token and CA, and (from the downward API) the node it runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InClusterConfig {
    pub host: String,
    pub port: u16,
    pub token_path: PathBuf,
    pub ca_path: PathBuf,
    pub node_name: String,
}

impl InClusterConfig {
    /// `Ok(None)` outside Kubernetes (no service host, or no token mounted).
    pub fn from_env() -> Result<Option<InClusterConfig>, KubeError> {
        InClusterConfig::from_parts(
            |name| std::env::var(name).ok(),
            Path::new(SERVICE_ACCOUNT_DIR),
        )
    }

    /// [`InClusterConfig::from_env`] with the environment and the service account
    /// directory given.
    pub fn from_parts(
        env: impl Fn(&str) -> Option<String>,
        service_account_dir: &Path,
    ) -> Result<Option<InClusterConfig>, KubeError> {
        let Some(host) = env("KUBERNETES_SERVICE_HOST").filter(|h| !h.is_empty()) else {
            return Ok(None);
        };
        let token_path = service_account_dir.join("token");
        if !token_path.exists() {
            // automountServiceAccountToken: false, or a pod not meant to talk to the API.
            return Ok(None);
        }
        let port = env("KUBERNETES_SERVICE_PORT")
            .and_then(|p| p.parse().ok())
            .unwrap_or(443);
        let node_name = env("NODE_NAME")
            .filter(|n| !n.is_empty())
            .ok_or(KubeError::NoNodeName)?;
        Ok(Some(InClusterConfig {
            host,
            port,
            token_path,
            ca_path: service_account_dir.join("ca.crt"),
            node_name,
        }))
    }
}

#[derive(Clone)]
struct Tls {
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

/// A minimal client for the two requests the resolver makes: list and watch pods.
/// One connection per request: lists are rare and a watch lives for minutes.
#[derive(Clone)]
pub struct ApiClient {
    host: String,
    port: u16,
    tls: Option<Tls>,
    /// Re-read before every request: projected service account tokens are rotated by
    /// the kubelet (hourly), and a token read once at start expires.
    token_path: Option<PathBuf>,
}

impl ApiClient {
    /// HTTPS to the API server, trusting only the service account's CA bundle.
    pub fn in_cluster(config: &InClusterConfig) -> Result<ApiClient, KubeError> {
        let pem = std::fs::read(&config.ca_path).map_err(|source| KubeError::Read {
            path: config.ca_path.clone(),
            source,
        })?;
        let ca_error = |reason: String| KubeError::CaBundle {
            path: config.ca_path.clone(),
            reason,
        };
        let mut roots = rustls::RootCertStore::empty();
        use rustls::pki_types::{CertificateDer, pem::PemObject as _};
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| ca_error(e.to_string()))?;
            roots.add(cert).map_err(|e| ca_error(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(ca_error("no PEM certificate in it".into()));
        }
        // The provider is named, not taken from the process default: with one provider
        // compiled in that is the same, but a second one pulled in by some future
        // dependency would make the default panic.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls_config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ca_error(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls_config.alpn_protocols = vec![b"http/1.1".to_vec()];
        // The API server's certificate names the service IP (KUBERNETES_SERVICE_HOST is
        // an IP), so an IP server name, as client-go uses.
        let server_name = ServerName::try_from(config.host.clone())
            .map_err(|e| ca_error(format!("KUBERNETES_SERVICE_HOST {:?}: {e}", config.host)))?;
        Ok(ApiClient {
            host: config.host.clone(),
            port: config.port,
            tls: Some(Tls {
                connector: TlsConnector::from(Arc::new(tls_config)),
                server_name,
            }),
            token_path: Some(config.token_path.clone()),
        })
    }

    /// Plain HTTP, for a local test server (or `kubectl proxy`).
    pub fn plain_http(host: &str, port: u16, token_path: Option<PathBuf>) -> ApiClient {
        ApiClient {
            host: host.to_string(),
            port,
            tls: None,
            token_path,
        }
    }

    fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.authority())
    }

    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Lists the pods on `node_name`, following `continue` tokens.
    pub async fn list_pods(&self, node_name: &str) -> Result<PodList, KubeError> {
        let mut all = PodList::default();
        let mut continue_token: Option<String> = None;
        loop {
            let mut path = format!("{}&limit=500", pods_path(node_name));
            if let Some(token) = &continue_token {
                path.push_str("&continue=");
                path.push_str(&percent_encode(token));
            }
            let page: PodList = tokio::time::timeout(LIST_TIMEOUT, async {
                let response = self.get(&path).await?;
                let body = read_body(response.into_body(), &path, MAX_LIST_BYTES).await?;
                serde_json::from_slice(&body).map_err(|source| KubeError::Json {
                    path: path.clone(),
                    source,
                })
            })
            .await
            .map_err(|_| KubeError::Timeout {
                path: path.clone(),
                after: LIST_TIMEOUT,
            })??;
            all.items.extend(page.items);
            all.metadata.resource_version = page.metadata.resource_version;
            match page.metadata.continue_token.filter(|t| !t.is_empty()) {
                Some(token) => continue_token = Some(token),
                None => return Ok(all),
            }
        }
    }

    /// Starts a watch of the pods on `node_name` from `resource_version`. A 410 answer
    /// is [`KubeError::Gone`].
    pub async fn watch_pods(
        &self,
        node_name: &str,
        resource_version: Option<&str>,
    ) -> Result<WatchStream, KubeError> {
        let mut path = format!(
            "{}&watch=true&allowWatchBookmarks=true&timeoutSeconds={WATCH_TIMEOUT_SECONDS}",
            pods_path(node_name)
        );
        if let Some(version) = resource_version {
            path.push_str("&resourceVersion=");
            path.push_str(&percent_encode(version));
        }
        let response = tokio::time::timeout(LIST_TIMEOUT, self.get(&path))
            .await
            .map_err(|_| KubeError::Timeout {
                path: path.clone(),
                after: LIST_TIMEOUT,
            })??;
        Ok(WatchStream {
            body: response.into_body(),
            buffer: Vec::new(),
            path,
        })
    }

    /// Sends a GET and returns the response if it is a success; error statuses become
    /// [`KubeError`]s with the API's message.
    async fn get(&self, path: &str) -> Result<hyper::Response<Incoming>, KubeError> {
        let mut request = Request::get(path)
            .header(header::HOST, self.authority())
            .header(header::ACCEPT, "application/json")
            .header(
                header::USER_AGENT,
                concat!("mapwatch/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(token_path) = &self.token_path {
            let token = std::fs::read_to_string(token_path).map_err(|source| KubeError::Read {
                path: token_path.clone(),
                source,
            })?;
            request = request.header(header::AUTHORIZATION, format!("Bearer {}", token.trim()));
        }
        let request = request.body(Empty::<Bytes>::new())?;
        let endpoint = self.endpoint();
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| KubeError::ConnectTimeout {
            endpoint: endpoint.clone(),
        })?
        .map_err(|source| KubeError::Connect {
            endpoint: endpoint.clone(),
            source,
        })?;
        let _ = tcp.set_nodelay(true);
        let response = match &self.tls {
            Some(tls) => {
                let stream = tokio::time::timeout(
                    CONNECT_TIMEOUT,
                    tls.connector.connect(tls.server_name.clone(), tcp),
                )
                .await
                .map_err(|_| KubeError::ConnectTimeout {
                    endpoint: endpoint.clone(),
                })?
                .map_err(|source| KubeError::Connect { endpoint, source })?;
                send(stream, request).await?
            }
            None => send(tcp, request).await?,
        };
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = read_body(response.into_body(), path, MAX_EVENT_BYTES).await?;
        let api_status: ApiStatus = serde_json::from_slice(&body).unwrap_or_else(|_| ApiStatus {
            code: status.as_u16(),
            reason: status.canonical_reason().unwrap_or_default().to_string(),
            message: String::from_utf8_lossy(&body).trim().to_string(),
        });
        let (code, reason, message) = (status.as_u16(), api_status.reason, api_status.message);
        Err(match status {
            StatusCode::GONE => KubeError::Gone,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => KubeError::Forbidden {
                path: path.to_string(),
                code,
                reason,
                message,
            },
            _ => KubeError::Status {
                path: path.to_string(),
                code,
                reason,
                message,
            },
        })
    }
}

async fn send<S>(
    stream: S,
    request: Request<Empty<Bytes>>,
) -> Result<hyper::Response<Incoming>, KubeError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    // The connection task ends when the response body is read to its end or dropped.
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            debug!(%error, "Kubernetes API connection closed");
        }
    });
    Ok(sender.send_request(request).await?)
}

async fn read_body(body: Incoming, path: &str, limit: usize) -> Result<Bytes, KubeError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) => match error.downcast::<hyper::Error>() {
            Ok(http) => Err(KubeError::Http(*http)),
            Err(_) => Err(KubeError::TooLarge {
                path: path.to_string(),
                limit,
            }),
        },
    }
}

/// `/api/v1/pods?fieldSelector=spec.nodeName%3D<node>`: only this node's pods — a
/// cluster-wide watch would cost the API server and us far more.
fn pods_path(node_name: &str) -> String {
    format!(
        "/api/v1/pods?fieldSelector={}",
        percent_encode(&format!("spec.nodeName={node_name}"))
    )
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The body of a watch response: one JSON event per line.
pub struct WatchStream {
    body: Incoming,
    buffer: Vec<u8>,
    path: String,
}

impl WatchStream {
    /// The next event; `None` when the server ended the watch (its timeout).
    pub async fn next_event(&mut self) -> Result<Option<WatchEvent>, KubeError> {
        loop {
            if let Some(newline) = self.buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=newline).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return WatchEvent::from_json(&line)
                    .map(Some)
                    .map_err(|source| self.json_error(source));
            }
            match self.body.frame().await {
                Some(frame) => {
                    if let Ok(data) = frame?.into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                    if self.buffer.len() > MAX_EVENT_BYTES {
                        return Err(KubeError::TooLarge {
                            path: self.path.clone(),
                            limit: MAX_EVENT_BYTES,
                        });
                    }
                }
                None if self.buffer.iter().all(u8::is_ascii_whitespace) => return Ok(None),
                // A last event without its newline.
                None => {
                    let line = std::mem::take(&mut self.buffer);
                    return WatchEvent::from_json(&line)
                        .map(Some)
                        .map_err(|source| self.json_error(source));
                }
            }
        }
    }

    fn json_error(&self, source: serde_json::Error) -> KubeError {
        KubeError::Json {
            path: self.path.clone(),
            source,
        }
    }
}

// ---------------------------------------------------------------------------------------
// The resolver: a background task keeps the index in sync.

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
    fn other_watch_errors_ask_for_a_rewatch() {
        let event = WatchEvent::from_json(
            br#"{"type":"ERROR","object":{"kind":"Status","status":"Failure","message":"etcd leader changed","reason":"InternalError","code":500}}"#,
        )
        .unwrap();
        let mut index = PodIndex::default();
        assert!(matches!(index.apply(event), WatchOutcome::Rewatch(s) if s.code == 500));
    }

    #[test]
    fn unknown_event_types_and_bad_json_are_errors() {
        assert!(WatchEvent::from_json(br#"{"type":"RENAMED","object":{}}"#).is_err());
        assert!(WatchEvent::from_json(b"{not json").is_err());
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

    #[test]
    fn in_cluster_config_needs_host_token_and_node() {
        let dir = std::env::temp_dir().join(format!("mapwatch-sa-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        // No service host: not Kubernetes.
        assert_eq!(InClusterConfig::from_parts(env(&[]), &dir).unwrap(), None);
        // Host but no token mounted.
        let host_only = &[("KUBERNETES_SERVICE_HOST", "10.96.0.1")];
        assert_eq!(
            InClusterConfig::from_parts(env(host_only), &dir).unwrap(),
            None
        );
        std::fs::write(dir.join("token"), "eyJhbGciOi...\n").unwrap();
        assert!(matches!(
            InClusterConfig::from_parts(env(host_only), &dir),
            Err(KubeError::NoNodeName)
        ));
        let full = &[
            ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
            ("KUBERNETES_SERVICE_PORT", "6443"),
            ("NODE_NAME", "node-a"),
        ];
        let config = InClusterConfig::from_parts(env(full), &dir)
            .unwrap()
            .unwrap();
        assert_eq!(config.host, "10.96.0.1");
        assert_eq!(config.port, 6443);
        assert_eq!(config.node_name, "node-a");
        assert_eq!(config.ca_path, dir.join("ca.crt"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn pods_path_selects_the_node() {
        assert_eq!(
            pods_path("ip-10-0-3-17.eu-west-1.compute.internal"),
            "/api/v1/pods?fieldSelector=spec.nodeName%3Dip-10-0-3-17.eu-west-1.compute.internal"
        );
    }
}
