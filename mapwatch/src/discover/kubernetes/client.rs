//! The HTTPS side: an in-cluster client for the two requests the resolver makes (list
//! and watch this node's pods) on hyper and rustls, with the pod's service account.
//!
//! Why not the `kube` crate: measured on this VM, kube 5 (rustls + ring) with
//! k8s-openapi adds 86 crates and ~116 s CPU to a clean debug build; hyper (already
//! here through axum) with tokio-rustls/ring adds 15 crates and ~53 s. We make two GET
//! requests and read ten fields, so the own client is a small price for half the build.
use std::{
    io,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::{
    Request, StatusCode,
    body::{Bytes, Incoming},
    header,
};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};
use tokio_rustls::{
    TlsConnector,
    rustls::{self, pki_types::ServerName},
};
use tracing::debug;

use super::wire::{ApiStatus, PodList, WatchEvent};
use crate::metrics::KubernetesApiErrorKind;

/// Where a pod's service account is mounted (the same in every pod).
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The server closes a watch after this long; the client then watches again from the
/// last resourceVersion (client-go picks 5–10 minutes).
pub(super) const WATCH_TIMEOUT_SECONDS: u64 = 300;
/// A node holds at most a few hundred pods; a list is a few MiB at worst.
pub const MAX_LIST_BYTES: usize = 64 << 20;
pub const MAX_EVENT_BYTES: usize = 16 << 20;
/// Pages of 500 pods: far more than a node can run, so a server that keeps sending
/// `continue` tokens cannot keep the list going (and growing) forever.
const MAX_LIST_PAGES: usize = 20;
/// An error status's body is a `Status` object of a few hundred bytes, or a proxy's
/// HTML page; only its start goes into the error.
const MAX_ERROR_BODY_BYTES: usize = 64 << 10;
const MAX_ERROR_MESSAGE_CHARS: usize = 300;

/// The client's time limits. A watch has none on its length (the server ends it after
/// `timeoutSeconds`), only on the silence between its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiTimeouts {
    /// The TCP connection, then the TLS handshake, each.
    pub connect: Duration,
    /// A list page, headers and body; a watch's response headers.
    pub response: Duration,
    /// The longest silence in an open watch. Bookmarks arrive about once a minute, so
    /// a watch silent for longer than the server's own timeout is a dead connection
    /// (one a NAT or load balancer dropped without a reset).
    pub watch_idle: Duration,
}

impl Default for ApiTimeouts {
    fn default() -> ApiTimeouts {
        ApiTimeouts {
            connect: Duration::from_secs(10),
            response: Duration::from_secs(60),
            watch_idle: Duration::from_secs(WATCH_TIMEOUT_SECONDS + 60),
        }
    }
}

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
    #[error("connecting to the Kubernetes API at {endpoint}: timed out after {after:?}")]
    ConnectTimeout { endpoint: String, after: Duration },
    #[error("HTTP with the Kubernetes API: {0}")]
    Http(#[from] hyper::Error),
    #[error("invalid Kubernetes API request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error(
        "the Kubernetes API did not accept mapwatch's credentials for {path} ({code} \
         {reason}): {message} — the service account token ({token}) is expired, revoked or \
         of a deleted service account; the kubelet renews a mounted token, so check that \
         mapwatch's ServiceAccount exists and the pod mounts its token \
         (automountServiceAccountToken), then restart the pod"
    )]
    Unauthorized {
        path: String,
        code: u16,
        reason: String,
        message: String,
        token: String,
    },
    #[error(
        "the Kubernetes API refused {path} ({code} {reason}): {message} — mapwatch's \
         service account needs get/list/watch on pods: apply the ClusterRole and \
         ClusterRoleBinding of deploy/base (kubectl auth can-i watch pods \
         --as=system:serviceaccount:<namespace>:mapwatch checks it)"
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
    #[error("the Kubernetes API answered {path} with {found}, not a pod list")]
    NotAPodList { path: String, found: String },
    #[error("the Kubernetes API answered {path} with more than {limit} bytes")]
    TooLarge { path: String, limit: usize },
    #[error("the Kubernetes API's pod list did not end after {MAX_LIST_PAGES} pages")]
    EndlessList,
    #[error("no answer from the Kubernetes API to {path} within {after:?}")]
    Timeout { path: String, after: Duration },
    #[error("the pod watch {path} was silent for {after:?}: the connection is presumed dead")]
    WatchSilent { path: String, after: Duration },
}

impl KubeError {
    /// The `kind` label of `mapwatch_kubernetes_api_errors_total` this error counts
    /// under; `None` for a routine 410 and for set-up errors, which stop the daemon
    /// before any request.
    pub fn kind(&self) -> Option<KubernetesApiErrorKind> {
        use KubernetesApiErrorKind as Kind;
        Some(match self {
            KubeError::NotInCluster(_)
            | KubeError::NoNodeName
            | KubeError::CaBundle { .. }
            | KubeError::Request(_)
            | KubeError::Gone => return None,
            // After set-up, the token is the one file read (before every request).
            KubeError::Read { .. } => Kind::Unauthorized,
            KubeError::Connect { .. } => Kind::Connect,
            KubeError::ConnectTimeout { .. }
            | KubeError::Timeout { .. }
            | KubeError::WatchSilent { .. } => Kind::Timeout,
            KubeError::Http(_) => Kind::Broken,
            KubeError::Unauthorized { .. } | KubeError::Forbidden { .. } => Kind::Unauthorized,
            KubeError::Status { .. } => Kind::HttpStatus,
            KubeError::Json { .. } | KubeError::NotAPodList { .. } => Kind::Decode,
            KubeError::TooLarge { .. } | KubeError::EndlessList => Kind::TooLarge,
        })
    }

    /// No connection was made: the API server (or the way to it) is down, and a watch
    /// can resume where it was when it returns.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            KubeError::Connect { .. } | KubeError::ConnectTimeout { .. }
        )
    }
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
    timeouts: ApiTimeouts,
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
            timeouts: ApiTimeouts::default(),
        })
    }

    /// Plain HTTP, for a local test server (or `kubectl proxy`).
    pub fn plain_http(host: &str, port: u16, token_path: Option<PathBuf>) -> ApiClient {
        ApiClient {
            host: host.to_string(),
            port,
            tls: None,
            token_path,
            timeouts: ApiTimeouts::default(),
        }
    }

    /// The same client with other time limits.
    pub fn with_timeouts(self, timeouts: ApiTimeouts) -> ApiClient {
        ApiClient { timeouts, ..self }
    }

    pub(super) fn endpoint(&self) -> String {
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
        for _ in 0..MAX_LIST_PAGES {
            let mut path = format!("{}&limit=500", pods_path(node_name));
            if let Some(token) = &continue_token {
                path.push_str("&continue=");
                path.push_str(&percent_encode(token));
            }
            let after = self.timeouts.response;
            let page = tokio::time::timeout(after, async {
                let response = self.get(&path).await?;
                let body = read_body(response.into_body(), &path, MAX_LIST_BYTES).await?;
                parse_pod_list(&body, &path)
            })
            .await
            .map_err(|_| KubeError::Timeout {
                path: path.clone(),
                after,
            })??;
            all.kind = page.kind;
            all.items.extend(page.items);
            all.metadata.resource_version = page.metadata.resource_version;
            match page.metadata.continue_token.filter(|t| !t.is_empty()) {
                Some(token) => continue_token = Some(token),
                None => return Ok(all),
            }
        }
        Err(KubeError::EndlessList)
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
        let after = self.timeouts.response;
        let response = tokio::time::timeout(after, self.get(&path))
            .await
            .map_err(|_| KubeError::Timeout {
                path: path.clone(),
                after,
            })??;
        Ok(WatchStream {
            body: response.into_body(),
            buffer: Vec::new(),
            scanned: 0,
            idle: self.timeouts.watch_idle,
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
        let after = self.timeouts.connect;
        let tcp = tokio::time::timeout(after, TcpStream::connect((self.host.as_str(), self.port)))
            .await
            .map_err(|_| KubeError::ConnectTimeout {
                endpoint: endpoint.clone(),
                after,
            })?
            .map_err(|source| KubeError::Connect {
                endpoint: endpoint.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let response = match &self.tls {
            Some(tls) => {
                let stream = tokio::time::timeout(
                    after,
                    tls.connector.connect(tls.server_name.clone(), tcp),
                )
                .await
                .map_err(|_| KubeError::ConnectTimeout {
                    endpoint: endpoint.clone(),
                    after,
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
        // The status is the error; a body that is too long or breaks off only loses
        // the detail.
        let body = read_body(response.into_body(), path, MAX_ERROR_BODY_BYTES)
            .await
            .unwrap_or_default();
        let api_status: ApiStatus = serde_json::from_slice(&body).unwrap_or_else(|_| ApiStatus {
            message: String::from_utf8_lossy(&body).into_owned(),
            ..ApiStatus::default()
        });
        let code = status.as_u16();
        let reason = Some(api_status.reason)
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| status.canonical_reason().unwrap_or_default().to_string());
        let message = one_line(&api_status.message, MAX_ERROR_MESSAGE_CHARS);
        Err(match status {
            StatusCode::GONE => KubeError::Gone,
            StatusCode::UNAUTHORIZED => KubeError::Unauthorized {
                path: path.to_string(),
                code,
                reason,
                message,
                token: self
                    .token_path
                    .as_ref()
                    .map_or_else(|| "none sent".to_string(), |p| p.display().to_string()),
            },
            StatusCode::FORBIDDEN => KubeError::Forbidden {
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
    // A declared length over the limit is refused before reading any of it.
    if hyper::body::Body::size_hint(&body).lower() > limit as u64 {
        return Err(KubeError::TooLarge {
            path: path.to_string(),
            limit,
        });
    }
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

/// One page of a list. Every field of [`PodList`] has a default, so any JSON object
/// parses as an empty list — and replacing the index with it would forget every pod.
/// A real list names its kind and always carries a resourceVersion.
fn parse_pod_list(body: &[u8], path: &str) -> Result<PodList, KubeError> {
    let page: PodList = serde_json::from_slice(body).map_err(|source| KubeError::Json {
        path: path.to_string(),
        source,
    })?;
    let versioned = page
        .metadata
        .resource_version
        .as_deref()
        .is_some_and(|v| !v.is_empty());
    let found = match page.kind.as_deref() {
        Some(kind) if kind != "PodList" => format!("a {} object", one_line(kind, 40)),
        _ if !versioned => "a list without a resourceVersion".to_string(),
        _ => return Ok(page),
    };
    Err(KubeError::NotAPodList {
        path: path.to_string(),
        found,
    })
}

/// `text` on one line, at most `max` characters: an error page can be long and
/// multi-line, and ends up in a log line.
fn one_line(text: &str, max: usize) -> String {
    let words = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match words.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &words[..cut]),
        None => words,
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
    /// The buffer's first `scanned` bytes hold no newline: a long line arriving in many
    /// frames is searched once, not once per frame.
    scanned: usize,
    idle: Duration,
    path: String,
}

impl WatchStream {
    /// The next event; `None` when the server ended the watch (its timeout).
    pub async fn next_event(&mut self) -> Result<Option<WatchEvent>, KubeError> {
        loop {
            match self.buffer[self.scanned..].iter().position(|&b| b == b'\n') {
                Some(offset) => {
                    let line: Vec<u8> = self.buffer.drain(..=self.scanned + offset).collect();
                    self.scanned = 0;
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    return WatchEvent::from_json(&line)
                        .map(Some)
                        .map_err(|source| self.json_error(source));
                }
                None => self.scanned = self.buffer.len(),
            }
            // The cap is on one event, the line being read, not on what one frame
            // carries.
            if self.buffer.len() > MAX_EVENT_BYTES {
                return Err(KubeError::TooLarge {
                    path: self.path.clone(),
                    limit: MAX_EVENT_BYTES,
                });
            }
            let frame = tokio::time::timeout(self.idle, self.body.frame())
                .await
                .map_err(|_| KubeError::WatchSilent {
                    path: self.path.clone(),
                    after: self.idle,
                })?;
            match frame {
                Some(frame) => {
                    if let Ok(data) = frame?.into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                }
                None if self.buffer.iter().all(u8::is_ascii_whitespace) => return Ok(None),
                // A last event without its newline.
                None => {
                    self.scanned = 0;
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn only_a_list_is_a_list() {
        let path = "/api/v1/pods";
        let parse = |body: &str| parse_pod_list(body.as_bytes(), path);
        let list = parse(r#"{"kind":"PodList","metadata":{"resourceVersion":"7"},"items":[]}"#);
        assert_eq!(
            list.unwrap().metadata.resource_version.as_deref(),
            Some("7")
        );
        // Every field has a default: without the check, each of these would be an
        // empty list, and the index would forget every pod.
        for (body, found) in [
            ("{}", "a list without a resourceVersion"),
            (r#"{"kind":"Status","status":"Success"}"#, "a Status object"),
            (
                r#"{"kind":"PodList","metadata":{"resourceVersion":""}}"#,
                "a list without a resourceVersion",
            ),
        ] {
            match parse(body) {
                Err(KubeError::NotAPodList { found: f, .. }) => assert_eq!(f, found, "{body}"),
                other => panic!("{body}: {other:?}"),
            }
        }
        assert!(matches!(parse("<html>"), Err(KubeError::Json { .. })));
    }

    #[test]
    fn error_messages_fit_on_a_line() {
        assert_eq!(one_line("  a\r\n  b\tc ", 10), "a b c");
        assert_eq!(one_line("ééééé", 3), "ééé…");
        assert_eq!(one_line("abc", 3), "abc");
    }

    #[test]
    fn pods_path_selects_the_node() {
        assert_eq!(
            pods_path("ip-10-0-3-17.eu-west-1.compute.internal"),
            "/api/v1/pods?fieldSelector=spec.nodeName%3Dip-10-0-3-17.eu-west-1.compute.internal"
        );
    }
}
