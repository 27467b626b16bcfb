//! The pod resolver's HTTP side against a local server that replays recorded API
//! responses (tests/corpus/kubernetes/): list, watch, 410 → relist, rewatch, and the
//! in-cluster HTTPS setup with a CA bundle. No root, no cluster.
use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use mapwatch::{
    discover::{
        CgroupContainer, PodIdentity, PodResolver,
        kubernetes::{ApiClient, InClusterConfig, KubeError, ResolverOptions},
    },
    metrics::Metrics,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpListener,
    sync::{mpsc, oneshot},
};
use tokio_rustls::rustls::{
    self,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
};

const NODE: &str = "node-a";
const API2_SERVER: &str = "6f19c6b94b7474b062d9a31e5184eff2ef9ade1cd5d247bc4f554b7bca709155";
const WORKER: &str = "dfd01d03387c6a0f11ef313f523815b76897dbe39a6e1c732a0b8bd174e46a3d";
const CRON: &str = "8fceda0828327754031d9330238e1fcfc33f94ac60a79090de77bedec8ad674a";
const API_SERVER_RESTARTED: &str =
    "6167705897c42490d7cb1422efcaf5478b85071ad2be67212b023709a9bf15fe";
const WAIT: Duration = Duration::from_secs(20);

fn corpus(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus/kubernetes")
        .join(name)
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(corpus(name)).unwrap()
}

/// What the client sent.
#[derive(Debug)]
struct SeenRequest {
    target: String,
    authorization: Option<String>,
}

/// What the server answers to one request.
enum Reply {
    Json(u16, Vec<u8>),
    /// A chunked 200 response: each item is one chunk, sent after `gate` opens (if any);
    /// then the connection stays open when `hold` is set.
    Stream {
        chunks: Vec<Vec<u8>>,
        gate: Option<oneshot::Receiver<()>>,
        hold: bool,
    },
}

/// Reads one request head; answers it from the script.
async fn serve_one<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    reply: Reply,
    seen: &mpsc::UnboundedSender<SeenRequest>,
) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.unwrap_or(0) == 0 {
            return;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let mut lines = head.lines();
    let target = lines.next().unwrap().split(' ').nth(1).unwrap().to_string();
    let authorization = lines
        .filter_map(|l| l.split_once(": "))
        .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| v.to_string());
    seen.send(SeenRequest {
        target,
        authorization,
    })
    .unwrap();
    match reply {
        Reply::Json(code, body) => {
            let head = format!(
                "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(&body).await;
            let _ = stream.flush().await;
        }
        Reply::Stream { chunks, gate, hold } => {
            let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                        Transfer-Encoding: chunked\r\n\r\n";
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.flush().await;
            if let Some(gate) = gate {
                let _ = gate.await;
            }
            for chunk in chunks {
                let framed =
                    [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
                if stream.write_all(&framed).await.is_err() {
                    return;
                }
                let _ = stream.flush().await;
            }
            if hold {
                // Keep the watch open until the client goes away.
                let mut rest = [0u8; 64];
                while stream.read(&mut rest).await.unwrap_or(0) > 0 {}
                return;
            }
            let _ = stream.write_all(b"0\r\n\r\n").await;
            let _ = stream.flush().await;
        }
    }
}

/// A plain-HTTP server that answers the n-th request with `script[n]`.
async fn scripted_server(script: Vec<Reply>) -> (u16, mpsc::UnboundedReceiver<SeenRequest>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (seen_tx, seen_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        for reply in script {
            let (stream, _) = listener.accept().await.unwrap();
            let seen = seen_tx.clone();
            tokio::spawn(async move { serve_one(stream, reply, &seen).await });
        }
    });
    (port, seen_rx)
}

/// Watch lines, split so that one event straddles two chunks (the client must join
/// them) and two events share one.
fn watch_chunks() -> Vec<Vec<u8>> {
    let all = read("watch-events.jsonl");
    let first_newline = all.iter().position(|&b| b == b'\n').unwrap();
    let second_newline = first_newline
        + 1
        + all[first_newline + 1..]
            .iter()
            .position(|&b| b == b'\n')
            .unwrap();
    let middle = first_newline + (second_newline - first_newline) / 2;
    vec![all[..middle].to_vec(), all[middle..].to_vec()]
}

fn token_file(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("mapwatch-token-{name}-{}", std::process::id()));
    std::fs::write(&path, "test-token\n").unwrap();
    path
}

fn container(id: &str) -> CgroupContainer {
    CgroupContainer {
        pod_uid: None,
        container_id: id.into(),
        runtime: None,
    }
}

fn identity(namespace: &str, pod: &str, container: &str) -> Option<PodIdentity> {
    Some(PodIdentity {
        namespace: namespace.into(),
        pod: pod.into(),
        container: container.into(),
    })
}

async fn next_request(seen: &mut mpsc::UnboundedReceiver<SeenRequest>) -> SeenRequest {
    tokio::time::timeout(WAIT, seen.recv())
        .await
        .expect("the client made no further request")
        .unwrap()
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_watch_expire_relist_and_rewatch() {
    let (gate_open, gate) = oneshot::channel();
    let bookmark = br#"{"type":"BOOKMARK","object":{"kind":"Pod","apiVersion":"v1","metadata":{"resourceVersion":"48900"}}}
"#;
    let (port, mut seen) = scripted_server(vec![
        Reply::Json(200, read("podlist-initial.json")),
        Reply::Stream {
            chunks: watch_chunks(),
            gate: Some(gate),
            hold: false,
        },
        Reply::Json(200, read("podlist-relist.json")),
        Reply::Json(410, read("status-410.json")),
        Reply::Json(200, read("podlist-relist.json")),
        Reply::Stream {
            chunks: vec![bookmark.to_vec()],
            gate: None,
            hold: true,
        },
    ])
    .await;
    let token = token_file("flow");
    let client = ApiClient::plain_http("127.0.0.1", port, Some(token.clone()));
    let metrics = Metrics::new().unwrap();
    let options = ResolverOptions::new(metrics.kubernetes_api_errors_total.clone());
    let resolver = PodResolver::start(client, NODE.into(), options);

    let list = next_request(&mut seen).await;
    assert_eq!(
        list.target,
        "/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-a&limit=500"
    );
    assert_eq!(list.authorization.as_deref(), Some("Bearer test-token"));
    eventually("the first list", || resolver.is_synced()).await;
    // The worker is still Pending: no container id yet.
    assert_eq!(resolver.resolve(&container(WORKER)), None);

    let watch = next_request(&mut seen).await;
    assert_eq!(
        watch.target,
        "/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-a&watch=true&allowWatchBookmarks=true\
         &timeoutSeconds=300&resourceVersion=48213"
    );
    // A process of the worker is found before the kubelet reported its container; the
    // resolver waits for the MODIFIED event that brings the id.
    let waiting = {
        let resolver = &resolver;
        async move { resolver.resolve_within(&container(WORKER), WAIT).await }
    };
    let (found, ()) = tokio::join!(waiting, async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        gate_open.send(()).unwrap();
    });
    assert_eq!(found, identity("shop", "worker-5f6d7c8b9-q8r7t", "worker"));

    // The stream ends with ERROR 410: relist…
    let relist = next_request(&mut seen).await;
    assert!(relist.target.ends_with("&limit=500"), "{}", relist.target);
    // …watch from the new list's version, refused with HTTP 410: relist again…
    let refused = next_request(&mut seen).await;
    assert!(
        refused.target.ends_with("&resourceVersion=48801"),
        "{}",
        refused.target
    );
    let relist_again = next_request(&mut seen).await;
    assert!(
        relist_again.target.ends_with("&limit=500"),
        "{}",
        relist_again.target
    );
    // …and watch again.
    let rewatch = next_request(&mut seen).await;
    assert!(
        rewatch.target.ends_with("&resourceVersion=48801"),
        "{}",
        rewatch.target
    );
    assert_eq!(rewatch.authorization.as_deref(), Some("Bearer test-token"));
    eventually("the bookmark", || {
        resolver.snapshot().resource_version() == Some("48900")
    })
    .await;

    // The state is the relist's: the job deleted while no watch ran is gone, the new
    // replica and the restarted container are known.
    assert_eq!(resolver.resolve(&container(CRON)), None);
    assert_eq!(
        resolver.resolve(&container(API2_SERVER)),
        identity("shop", "api-7d9f8c6b5-m4n7p", "server")
    );
    assert_eq!(
        resolver.resolve(&container(API_SERVER_RESTARTED)),
        identity("shop", "api-7d9f8c6b5-x2x4q", "server")
    );
    // An unknown container: resolve_within gives up after its wait.
    let started = std::time::Instant::now();
    let unknown = "0".repeat(64);
    assert_eq!(
        resolver
            .resolve_within(&container(&unknown), Duration::from_millis(200))
            .await,
        None
    );
    assert!(started.elapsed() >= Duration::from_millis(200));
    // 410s are routine, not errors.
    assert_eq!(
        metrics
            .render()
            .matches("mapwatch_kubernetes_api_errors_total{kind=")
            .count(),
        8
    );
    assert!(
        !metrics
            .render()
            .lines()
            .any(|l| l.starts_with("mapwatch_kubernetes_api_errors_total") && !l.ends_with(" 0")),
        "{}",
        metrics.render()
    );
    std::fs::remove_file(token).unwrap();
}

#[tokio::test]
async fn missing_permission_is_explained() {
    let (port, _seen) = scripted_server(vec![Reply::Json(403, read("status-403.json"))]).await;
    let client = ApiClient::plain_http("127.0.0.1", port, None);
    let error = client.list_pods(NODE).await.unwrap_err();
    assert!(
        matches!(error, KubeError::Forbidden { code: 403, .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains("cannot list resource \"pods\""),
        "{message}"
    );
    assert!(message.contains("ClusterRole"), "{message}");
    assert!(message.contains("deploy/base"), "{message}");
}

#[tokio::test]
async fn a_rejected_token_is_explained() {
    let (port, _seen) = scripted_server(vec![Reply::Json(401, read("status-401.json"))]).await;
    let token = token_file("rejected");
    let client = ApiClient::plain_http("127.0.0.1", port, Some(token.clone()));
    let error = client.list_pods(NODE).await.unwrap_err();
    assert!(
        matches!(error, KubeError::Unauthorized { code: 401, .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains("Unauthorized"), "{message}");
    assert!(
        message.contains(&token.display().to_string()),
        "names the token file: {message}"
    );
    assert!(message.contains("ServiceAccount"), "{message}");
    std::fs::remove_file(token).unwrap();
}

fn tls_server_config() -> Arc<rustls::ServerConfig> {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(corpus("tls/server.crt"))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::from_pem_file(corpus("tls/server.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    Arc::new(config)
}

/// An HTTPS server with the test CA's certificate for 127.0.0.1, answering one list.
async fn tls_server() -> (u16, mpsc::UnboundedReceiver<SeenRequest>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls_server_config());
    let (seen_tx, seen_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            // A client that rejects the certificate ends the handshake: skip it.
            let Ok(stream) = acceptor.accept(tcp).await else {
                continue;
            };
            serve_one(
                stream,
                Reply::Json(200, read("podlist-initial.json")),
                &seen_tx,
            )
            .await;
        }
    });
    (port, seen_rx)
}

fn in_cluster(port: u16, ca: &str, token: PathBuf) -> InClusterConfig {
    InClusterConfig {
        host: "127.0.0.1".into(),
        port,
        token_path: token,
        ca_path: corpus(ca),
        node_name: NODE.into(),
    }
}

#[tokio::test]
async fn in_cluster_https_trusts_the_service_account_ca_only() {
    let (port, mut seen) = tls_server().await;
    let token = token_file("tls");

    let client = ApiClient::in_cluster(&in_cluster(port, "tls/ca.crt", token.clone())).unwrap();
    let list = client.list_pods(NODE).await.unwrap();
    assert_eq!(list.items.len(), 3);
    assert_eq!(list.metadata.resource_version.as_deref(), Some("48213"));
    let request = next_request(&mut seen).await;
    assert_eq!(request.authorization.as_deref(), Some("Bearer test-token"));

    // A CA that did not sign the server's certificate: refused, and nothing was sent.
    let stranger =
        ApiClient::in_cluster(&in_cluster(port, "tls/other-ca.crt", token.clone())).unwrap();
    let error = stranger.list_pods(NODE).await.unwrap_err();
    assert!(matches!(error, KubeError::Connect { .. }), "{error:?}");
    assert!(error.to_string().contains("https://127.0.0.1:"), "{error}");
    assert!(seen.try_recv().is_err());

    // No CA bundle at all.
    let error = ApiClient::in_cluster(&in_cluster(port, "absent-ca.crt", token.clone()))
        .err()
        .unwrap();
    assert!(error.to_string().contains("absent-ca.crt"), "{error}");
    std::fs::remove_file(token).unwrap();
}
