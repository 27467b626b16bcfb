//! The pod resolver against a Kubernetes API that fails: refuses connections, hangs,
//! answers 5xx, 401/403, garbage, truncated or huge bodies, breaks its watch or sends
//! ERROR events in it, or loses its history (an etcd restore). mapwatch's HTTP stack
//! runs as in the daemon; only the API server is scripted: a plain-HTTP listener that
//! keeps a node's pods, serves them as a list and as a watch from any resourceVersion,
//! and misbehaves as a test says (`kubernetes_api.rs` replays recorded answers instead).
//!
//! Each outage checks that the resolver keeps going, that a pod created meanwhile has
//! no labels (where nothing could have told the resolver of it), that the failure is
//! counted under its `kind` and no other, and that once the API is back the new pod is
//! found within [`LIVENESS`] — a bound on recovery, not on speed. No root, no cluster.
use std::{
    collections::BTreeMap,
    io::Write,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use mapwatch::{
    discover::{
        CgroupContainer, PodIdentity, PodResolver,
        kubernetes::{ApiClient, ApiTimeouts, MAX_EVENT_BYTES, MAX_LIST_BYTES, ResolverOptions},
    },
    metrics::{KubernetesApiErrorKind, Metrics},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::broadcast,
    task::{AbortHandle, JoinHandle},
};

const NODE: &str = "node-a";
/// The pod every outage starts with: known from before, it must stay known.
const KNOWN: u32 = 1;
/// How long recovering may take, far above what it does take: the client's limits
/// below are a few hundred milliseconds.
const LIVENESS: Duration = Duration::from_secs(10);
/// Like the API server's bookmarks (about once a minute against the client's 6-minute
/// idle limit), scaled to the test's limits.
const BOOKMARK_EVERY: Duration = Duration::from_millis(150);

fn timeouts() -> ApiTimeouts {
    ApiTimeouts {
        connect: Duration::from_millis(500),
        response: Duration::from_millis(500),
        watch_idle: Duration::from_millis(600),
    }
}

/// How the fake API answers a list or a watch.
#[derive(Clone)]
enum Answer {
    /// Its pods: a list, or a watch from the asked version on.
    Pods,
    /// Reads the request, then says nothing.
    Hang,
    /// This status, content type and body.
    Reply(u16, &'static str, &'static [u8]),
    /// A 200 whose Content-Length promises more than comes before the connection closes.
    Truncated,
    /// A 200 chunked body of this many bytes without a newline.
    Flood(usize),
    /// A 200 that declares a body of this many bytes, then says nothing.
    Declared(u64),
    /// Watch: a bookmark, half an event, then the connection is cut.
    BreakMidway,
    /// Watch: an ERROR event with this code, reason and message.
    WatchError(u16, &'static str, &'static str),
    /// Watch: the headers, then nothing.
    Silent,
}

#[derive(Clone, Copy, Debug)]
enum Signal {
    /// A pod changed: open watches send what is new.
    Changed,
    /// Open watches end as at the server's timeoutSeconds (not an error), so the next
    /// request meets the current answers.
    End,
}

struct State {
    list: Answer,
    watch: Answer,
    /// uid → pod.
    pods: BTreeMap<String, u32>,
    version: u64,
    /// Watch events after `compacted`, by version.
    log: Vec<(u64, String)>,
    compacted: u64,
}

struct Inner {
    state: Mutex<State>,
    signals: broadcast::Sender<Signal>,
    connections: Mutex<Vec<AbortHandle>>,
    /// Connections held by [`Answer::Hang`] that the client has not closed.
    hanging: AtomicUsize,
}

/// The scripted API server.
struct FakeApi {
    port: u16,
    inner: Arc<Inner>,
    accept: Mutex<Option<JoinHandle<()>>>,
}

fn uid(pod: u32) -> String {
    format!("00000000-0000-4000-8000-{pod:012}")
}

fn container_id(pod: u32) -> String {
    format!("{:064x}", 0x00c0_ffee_0000_u64 + u64::from(pod))
}

fn pod_json(pod: u32, version: u64) -> String {
    format!(
        r#"{{"kind":"Pod","apiVersion":"v1","metadata":{{"name":"app-{pod}","namespace":"shop","uid":"{}","resourceVersion":"{version}"}},"spec":{{"nodeName":"{NODE}"}},"status":{{"phase":"Running","containerStatuses":[{{"name":"app","containerID":"containerd://{}","ready":true}}]}}}}"#,
        uid(pod),
        container_id(pod)
    )
}

fn bookmark(version: u64) -> String {
    format!(
        r#"{{"type":"BOOKMARK","object":{{"kind":"Pod","apiVersion":"v1","metadata":{{"resourceVersion":"{version}"}}}}}}"#
    )
}

impl FakeApi {
    /// A healthy API with these pods.
    async fn start(pods: &[u32]) -> FakeApi {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = FakeApi::new(listener.local_addr().unwrap().port(), pods);
        api.listen(listener);
        api
    }

    /// An API whose port refuses connections until [`FakeApi::come_back`].
    async fn down(pods: &[u32]) -> FakeApi {
        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        FakeApi::new(port, pods)
    }

    fn new(port: u16, pods: &[u32]) -> FakeApi {
        let mut state = State {
            list: Answer::Pods,
            watch: Answer::Pods,
            pods: BTreeMap::new(),
            version: 1000,
            log: Vec::new(),
            compacted: 1000,
        };
        for &pod in pods {
            state.pods.insert(uid(pod), pod);
        }
        FakeApi {
            port,
            inner: Arc::new(Inner {
                state: Mutex::new(state),
                signals: broadcast::channel(1024).0,
                connections: Mutex::new(Vec::new()),
                hanging: AtomicUsize::new(0),
            }),
            accept: Mutex::new(None),
        }
    }

    fn listen(&self, listener: TcpListener) {
        let inner = Arc::clone(&self.inner);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let connection = tokio::spawn(serve(Arc::clone(&inner), stream));
                let mut connections = inner.connections.lock().unwrap();
                connections.retain(|c| !c.is_finished());
                connections.push(connection.abort_handle());
            }
        });
        *self.accept.lock().unwrap() = Some(task);
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Answers lists and watches so from now on; open watches end.
    fn answer(&self, list: Answer, watch: Answer) {
        let mut state = self.inner.state.lock().unwrap();
        state.list = list;
        state.watch = watch;
        let _ = self.inner.signals.send(Signal::End);
    }

    fn heal(&self) {
        self.answer(Answer::Pods, Answer::Pods);
    }

    fn add_pod(&self, pod: u32) {
        let mut state = self.inner.state.lock().unwrap();
        state.version += 1;
        let version = state.version;
        state.pods.insert(uid(pod), pod);
        let event = format!(r#"{{"type":"ADDED","object":{}}}"#, pod_json(pod, version));
        state.log.push((version, event));
        let _ = self.inner.signals.send(Signal::Changed);
    }

    /// The store restored from an older backup: versions start again below the ones
    /// handed out, and nothing before the restore can be watched from.
    fn restore(&self, version: u64) {
        let mut state = self.inner.state.lock().unwrap();
        state.version = version;
        state.compacted = version;
        state.log.clear();
        let _ = self.inner.signals.send(Signal::End);
    }

    /// The server goes away: the port refuses connections, open ones are cut.
    async fn go_down(&self) {
        let accept = self.accept.lock().unwrap().take();
        if let Some(accept) = accept {
            accept.abort();
            let _ = accept.await;
        }
        for connection in self.inner.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }

    async fn come_back(&self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        self.listen(listener);
    }

    fn hanging(&self) -> usize {
        self.inner.hanging.load(Ordering::SeqCst)
    }
}

/// The request target, once its head is read.
async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).ok()?;
    Some(head.split(' ').nth(1)?.to_string())
}

/// Until the client closes the connection.
async fn hold(stream: &mut TcpStream) {
    let mut rest = [0u8; 256];
    while stream.read(&mut rest).await.unwrap_or(0) > 0 {}
}

const CHUNKED_HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";

async fn chunk(stream: &mut TcpStream, data: &[u8]) -> std::io::Result<()> {
    let framed = [format!("{:x}\r\n", data.len()).as_bytes(), data, b"\r\n"].concat();
    stream.write_all(&framed).await
}

async fn reply(stream: &mut TcpStream, code: u16, content_type: &str, body: &[u8]) {
    let head = format!(
        "HTTP/1.1 {code} X\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body).await;
}

async fn serve(inner: Arc<Inner>, mut stream: TcpStream) {
    let Some(target) = read_head(&mut stream).await else {
        return;
    };
    let watch = target.contains("watch=true");
    let from: Option<u64> = target
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix("resourceVersion="))
        .and_then(|v| v.parse().ok());
    let answer = {
        let state = inner.state.lock().unwrap();
        if watch {
            state.watch.clone()
        } else {
            state.list.clone()
        }
    };
    match answer {
        Answer::Pods if watch => {
            let _ = watch_pods(&inner, &mut stream, from).await;
        }
        Answer::Pods => {
            let body = {
                let state = inner.state.lock().unwrap();
                let items: Vec<String> = state
                    .pods
                    .values()
                    .map(|&pod| pod_json(pod, state.version))
                    .collect();
                format!(
                    r#"{{"kind":"PodList","apiVersion":"v1","metadata":{{"resourceVersion":"{}"}},"items":[{}]}}"#,
                    state.version,
                    items.join(",")
                )
            };
            reply(&mut stream, 200, "application/json", body.as_bytes()).await;
        }
        Answer::Hang => {
            inner.hanging.fetch_add(1, Ordering::SeqCst);
            hold(&mut stream).await;
            inner.hanging.fetch_sub(1, Ordering::SeqCst);
        }
        Answer::Reply(code, content_type, body) => {
            reply(&mut stream, code, content_type, body).await;
        }
        Answer::Truncated => {
            let _ = stream
                .write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                      Content-Length: 100000\r\n\r\n{\"kind\":\"PodList\",\"items\":[{\"meta",
                )
                .await;
        }
        Answer::Flood(bytes) => {
            let _ = stream.write_all(CHUNKED_HEAD).await;
            let block = vec![b'x'; 1 << 20];
            let mut sent = 0;
            while sent < bytes {
                let n = block.len().min(bytes - sent);
                if chunk(&mut stream, &block[..n]).await.is_err() {
                    return;
                }
                sent += n;
            }
            hold(&mut stream).await;
        }
        Answer::Declared(bytes) => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {bytes}\r\n\r\n"
            );
            let _ = stream.write_all(head.as_bytes()).await;
            hold(&mut stream).await;
        }
        Answer::BreakMidway => {
            // No further than the client is: a bookmark past events it was not sent
            // would skip them.
            let version = from.unwrap_or(0);
            let _ = stream.write_all(CHUNKED_HEAD).await;
            let _ = chunk(&mut stream, format!("{}\n", bookmark(version)).as_bytes()).await;
            let _ = chunk(&mut stream, br#"{"type":"ADDED","object":{"kind":"Pod","#).await;
        }
        Answer::WatchError(code, reason, message) => {
            let event = format!(
                r#"{{"type":"ERROR","object":{{"kind":"Status","apiVersion":"v1","metadata":{{}},"status":"Failure","message":"{message}","reason":"{reason}","code":{code}}}}}"#
            );
            let _ = stream.write_all(CHUNKED_HEAD).await;
            let _ = chunk(&mut stream, format!("{event}\n").as_bytes()).await;
            let _ = stream.write_all(b"0\r\n\r\n").await;
        }
        Answer::Silent => {
            let _ = stream.write_all(CHUNKED_HEAD).await;
            hold(&mut stream).await;
        }
    }
}

/// A watch as the API server runs one: every change after `from`, then bookmarks and
/// changes as they come, until [`Signal::End`]. A version the store no longer holds is
/// refused with an ERROR 410, one it never reached with the ERROR an API server sends
/// for "too large resource version".
async fn watch_pods(
    inner: &Inner,
    stream: &mut TcpStream,
    from: Option<u64>,
) -> std::io::Result<()> {
    let mut signals = inner.signals.subscribe();
    stream.write_all(CHUNKED_HEAD).await?;
    let (current, compacted) = {
        let state = inner.state.lock().unwrap();
        (state.version, state.compacted)
    };
    let mut sent = from.unwrap_or(current);
    let refusal = if sent > current {
        Some(format!(
            r#"{{"type":"ERROR","object":{{"kind":"Status","apiVersion":"v1","metadata":{{}},"status":"Failure","message":"Timeout: Too large resource version: {sent}, current: {current}","reason":"Timeout","details":{{"causes":[{{"reason":"ResourceVersionTooLarge","message":"Too large resource version"}}]}},"code":504}}}}"#
        ))
    } else if sent < compacted {
        Some(format!(
            r#"{{"type":"ERROR","object":{{"kind":"Status","apiVersion":"v1","metadata":{{}},"status":"Failure","message":"too old resource version: {sent} ({compacted})","reason":"Expired","code":410}}}}"#
        ))
    } else {
        None
    };
    if let Some(refusal) = refusal {
        chunk(stream, format!("{refusal}\n").as_bytes()).await?;
        return stream.write_all(b"0\r\n\r\n").await;
    }
    loop {
        let new: Vec<String> = {
            let state = inner.state.lock().unwrap();
            let new = state
                .log
                .iter()
                .filter(|(version, _)| *version > sent)
                .map(|(_, event)| format!("{event}\n"))
                .collect();
            sent = sent.max(state.version);
            new
        };
        for event in new {
            chunk(stream, event.as_bytes()).await?;
        }
        tokio::select! {
            signal = signals.recv() => match signal {
                Ok(Signal::End) => return stream.write_all(b"0\r\n\r\n").await,
                Ok(Signal::Changed) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            () = tokio::time::sleep(BOOKMARK_EVERY) => {
                chunk(stream, format!("{}\n", bookmark(sent)).as_bytes()).await?;
            }
        }
    }
}

/// What the resolver logs, for every test of this binary (each finds its own lines by
/// its API's address).
fn logs() -> &'static Mutex<Vec<u8>> {
    static LOGS: OnceLock<&'static Mutex<Vec<u8>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer: &'static Mutex<Vec<u8>> = Box::leak(Box::new(Mutex::new(Vec::new())));
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing_subscriber::filter::LevelFilter::INFO)
            .with_writer(move || LogWriter(buffer))
            .init();
        buffer
    })
}

struct LogWriter(&'static Mutex<Vec<u8>>);

impl Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Log lines of this level about this API.
fn log_lines(level: &str, api: &FakeApi) -> Vec<String> {
    let field = format!("api={} ", api.endpoint());
    String::from_utf8_lossy(&logs().lock().unwrap())
        .lines()
        .filter(|line| line.contains(level) && line.contains(&field))
        .map(str::to_string)
        .collect()
}

fn container(pod: u32) -> CgroupContainer {
    CgroupContainer {
        pod_uid: None,
        container_id: container_id(pod),
        runtime: None,
    }
}

fn identity(pod: u32) -> PodIdentity {
    PodIdentity {
        namespace: "shop".into(),
        pod: format!("app-{pod}"),
        container: "app".into(),
    }
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + LIVENESS;
    while !check() {
        assert!(Instant::now() < deadline, "not within {LIVENESS:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What becomes of a pod created during an outage.
#[derive(Clone, Copy, PartialEq, Eq)]
enum NewPod {
    /// Lists fail, so the resolver knows it is failing: no labels, and lookups do not
    /// wait for them.
    Unlabelled,
    /// No labels, but watches open before they fail, so lookups may wait (and the log
    /// may see the API come and go).
    Unseen,
    /// Lists still work, so a relist may find it.
    MayBeFound,
}

use KubernetesApiErrorKind as Kind;

struct Harness {
    api: FakeApi,
    metrics: Metrics,
    resolver: PodResolver,
}

impl Harness {
    fn start(api: FakeApi) -> Harness {
        logs();
        let metrics = Metrics::new().unwrap();
        let client = ApiClient::plain_http("127.0.0.1", api.port, None).with_timeouts(timeouts());
        let options = ResolverOptions {
            api_errors: metrics.kubernetes_api_errors_total.clone(),
            retry_min: Duration::from_millis(50),
            retry_max: Duration::from_millis(200),
        };
        let resolver = PodResolver::start(client, NODE.into(), options);
        Harness {
            api,
            metrics,
            resolver,
        }
    }

    fn errors(&self) -> BTreeMap<&'static str, u64> {
        Kind::ALL
            .iter()
            .map(|kind| {
                let counter = &self.metrics.kubernetes_api_errors_total;
                (
                    kind.label(),
                    counter.with_label_values(&[kind.label()]).get(),
                )
            })
            .collect()
    }

    fn knows(&self, pod: u32) -> bool {
        self.resolver.resolve(&container(pod)) == Some(identity(pod))
    }

    async fn found(&self, pod: u32, when: &str) {
        eventually(&format!("pod {pod} labelled {when}"), || self.knows(pod)).await;
    }

    /// Waits until failures of each of `kinds` were counted since `before`, at least
    /// `at_least` in all, and none of another kind.
    async fn counted(&self, before: &BTreeMap<&str, u64>, kinds: &[Kind], at_least: u64) {
        let moved = |after: &BTreeMap<&str, u64>, kind: &Kind| -> u64 {
            after[kind.label()] - before[kind.label()]
        };
        eventually(&format!("{at_least} failures of {kinds:?} counted"), || {
            let after = self.errors();
            kinds.iter().all(|k| moved(&after, k) > 0)
                && kinds.iter().map(|k| moved(&after, k)).sum::<u64>() >= at_least
        })
        .await;
        let after = self.errors();
        for (kind, count) in &after {
            if !kinds.iter().any(|k| k.label() == *kind) {
                assert_eq!(count, &before[kind], "kind {kind} moved: {after:?}");
            }
        }
    }

    /// One outage: the API answers `list` and `watch` while pod `new` is created;
    /// failures must be counted as `kinds` (and retried: at least twice) and logged
    /// once (once a kind); then it heals, `new` must be found and the log must say so.
    async fn outage(&self, list: Answer, watch: Answer, kinds: &[Kind], new: u32, pod: NewPod) {
        let before = self.errors();
        let warned = log_lines("WARN", &self.api).len();
        let back = log_lines("INFO", &self.api).len();
        self.api.answer(list, watch);
        self.api.add_pod(new);
        self.counted(&before, kinds, 2).await;
        if pod != NewPod::MayBeFound {
            assert!(!self.knows(new), "pod {new} labelled during the outage");
        }
        // Nothing a bad answer says replaces what a good one said.
        assert!(self.knows(KNOWN), "pod {KNOWN} forgotten during the outage");
        if pod != NewPod::Unseen {
            let warnings = log_lines("WARN", &self.api);
            assert!(
                (warned + 1..=warned + kinds.len()).contains(&warnings.len()),
                "{:#?}",
                &warnings[warned..]
            );
        }
        if pod == NewPod::Unlabelled {
            assert!(!self.knows(new), "pod {new} labelled during the outage");
            assert!(self.resolver.is_failing());
            // No wait for a pod the index cannot learn of while the API fails: the
            // daemon attaches one process at a time.
            let started = Instant::now();
            let found = self
                .resolver
                .resolve_within(&container(new), LIVENESS)
                .await;
            assert_eq!(found, None);
            assert!(started.elapsed() < LIVENESS, "resolve_within waited");
        }
        self.api.heal();
        self.found(new, "after the API healed").await;
        if pod != NewPod::Unseen {
            eventually("the recovery logged", || {
                log_lines("INFO", &self.api).len() == back + 1
            })
            .await;
        } else {
            // Let the outage end before the next one begins.
            eventually("the recovery logged", || {
                log_lines("INFO", &self.api).len() > back
            })
            .await;
        }
        assert!(!self.resolver.is_failing());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_at_start_then_up() {
    let api = FakeApi::down(&[1]).await;
    let h = Harness::start(api);
    h.counted(&h.errors(), &[Kind::Connect], 3).await;
    assert!(!h.resolver.is_synced());
    assert!(!h.knows(1));
    let started = Instant::now();
    assert_eq!(
        h.resolver.resolve_within(&container(1), LIVENESS).await,
        None
    );
    assert!(started.elapsed() < LIVENESS, "resolve_within waited");

    h.api.come_back().await;
    h.found(1, "once the API is up").await;
    h.api.add_pod(2);
    h.found(2, "through the watch").await;
    assert_eq!(log_lines("WARN", &h.api).len(), 1, "one warning per outage");
    eventually("one line when it is back", || {
        log_lines("INFO", &h.api).len() == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_down_then_back() {
    let h = Harness::start(FakeApi::start(&[1]).await);
    h.found(1, "at start").await;

    let before = h.errors();
    h.api.go_down().await;
    h.api.add_pod(2);
    // The cut watch, then refused connections: retried, and counted each time.
    h.counted(&before, &[Kind::Broken, Kind::Connect], 6).await;
    assert_eq!(h.errors()["broken"] - before["broken"], 1);
    assert!(h.knows(1), "what was known stays known");
    assert!(!h.knows(2));
    assert!(h.resolver.is_failing());
    // Once when it broke, once more when the failure changed from a cut connection to
    // a refused one; not once per attempt.
    let warnings = log_lines("WARN", &h.api);
    assert_eq!(warnings.len(), 2, "{warnings:#?}");
    assert!(warnings[0].contains("kind=\"broken\""), "{}", warnings[0]);
    assert!(warnings[1].contains("kind=\"connect\""), "{}", warnings[1]);

    h.api.come_back().await;
    h.found(2, "after the API came back").await;
    // And the watch goes on.
    h.api.add_pod(3);
    h.found(3, "through the resumed watch").await;
    eventually("one line when it is back", || {
        log_lines("INFO", &h.api).len() == 1
    })
    .await;
    let back = log_lines("INFO", &h.api);
    assert!(back[0].contains("answers again"), "{}", back[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_api_times_out_but_a_long_watch_is_not_cut() {
    let h = Harness::start(FakeApi::start(&[1]).await);
    h.found(1, "at start").await;

    // A watch far longer than the response and idle limits, kept alive by bookmarks.
    let before = h.errors();
    h.api.add_pod(2);
    tokio::time::sleep(timeouts().watch_idle * 3).await;
    assert!(h.knows(2));
    assert_eq!(h.errors(), before, "a live watch was cut");

    // Accepted, never answered: lists and watches time out.
    h.outage(
        Answer::Hang,
        Answer::Hang,
        &[Kind::Timeout],
        3,
        NewPod::Unlabelled,
    )
    .await;
    // The connections given up on were closed, not left open.
    eventually("hanging connections closed", || h.api.hanging() == 0).await;

    // A watch that answers, then goes silent: presumed dead, and watched again.
    h.outage(
        Answer::Pods,
        Answer::Silent,
        &[Kind::Timeout],
        4,
        NewPod::Unseen,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_statuses() {
    let h = Harness::start(FakeApi::start(&[1]).await);
    h.found(1, "at start").await;
    let internal = br#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"etcdserver: request timed out","reason":"InternalError","code":500}"#;
    h.outage(
        Answer::Reply(500, "application/json", internal),
        Answer::Reply(500, "application/json", internal),
        &[Kind::HttpStatus],
        2,
        NewPod::Unlabelled,
    )
    .await;
    // A load balancer's page while the API servers restart.
    let page: &[u8] =
        b"<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n\
        <body>\r\n<center><h1>503 Service Temporarily Unavailable</h1></center>\r\n\
        <hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";
    h.outage(
        Answer::Reply(503, "text/html", page),
        Answer::Reply(503, "text/html", page),
        &[Kind::HttpStatus],
        3,
        NewPod::Unlabelled,
    )
    .await;
    let warnings = log_lines("WARN", &h.api);
    assert_eq!(warnings.len(), 2, "one per outage: {warnings:#?}");
    assert!(
        warnings[1].contains("503 Service Temporarily Unavailable"),
        "{}",
        warnings[1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_credentials() {
    let h = Harness::start(FakeApi::start(&[1]).await);
    h.found(1, "at start").await;
    let unauthorized = br#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}"#;
    h.outage(
        Answer::Reply(401, "application/json", unauthorized),
        Answer::Reply(401, "application/json", unauthorized),
        &[Kind::Unauthorized],
        2,
        NewPod::Unlabelled,
    )
    .await;
    let forbidden = br#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"pods is forbidden: User \"system:serviceaccount:mapwatch:mapwatch\" cannot watch resource \"pods\" in API group \"\" at the cluster scope","reason":"Forbidden","details":{"kind":"pods"},"code":403}"#;
    h.outage(
        Answer::Reply(403, "application/json", forbidden),
        Answer::Reply(403, "application/json", forbidden),
        &[Kind::Unauthorized],
        3,
        NewPod::Unlabelled,
    )
    .await;
    // The log says what to do.
    let warnings = log_lines("WARN", &h.api);
    assert_eq!(warnings.len(), 2, "{warnings:#?}");
    assert!(warnings[0].contains("ServiceAccount"), "{}", warnings[0]);
    assert!(warnings[1].contains("ClusterRole"), "{}", warnings[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_answers() {
    let h = Harness::start(FakeApi::start(&[1]).await);
    h.found(1, "at start").await;
    let mut pod = 1;
    for (what, body, kind) in [
        (
            "invalid JSON",
            &br#"{"kind":"PodList","items":[{"metadata":"#[..],
            Kind::Decode,
        ),
        (
            "a success Status instead of a list",
            br#"{"kind":"Status","apiVersion":"v1","status":"Success"}"#,
            Kind::Decode,
        ),
        ("an empty object", b"{}", Kind::Decode),
        (
            "an HTML page with a 200",
            b"<!DOCTYPE html>\n<html><body>Please sign in</body></html>\n",
            Kind::Decode,
        ),
    ] {
        pod += 1;
        eprintln!("{what}");
        h.outage(
            Answer::Reply(200, "application/json", body),
            Answer::Reply(200, "application/json", body),
            &[kind],
            pod,
            NewPod::Unlabelled,
        )
        .await;
    }
    // A list cut short of its Content-Length (after a watch error asked for one).
    h.outage(
        Answer::Truncated,
        Answer::WatchError(500, "InternalError", "etcdserver: leader changed"),
        &[Kind::WatchError, Kind::Broken],
        pod + 1,
        NewPod::Unlabelled,
    )
    .await;
    // A watch that breaks off in the middle of an event.
    h.outage(
        Answer::Pods,
        Answer::BreakMidway,
        &[Kind::Broken],
        pod + 2,
        NewPod::Unseen,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_answers() {
    let h = Harness::start(FakeApi::start(&[1]).await);
    h.found(1, "at start").await;
    // Streamed past the caps: read up to them, then refused.
    h.outage(
        Answer::Flood(MAX_LIST_BYTES + 1),
        Answer::Flood(MAX_EVENT_BYTES + 1),
        &[Kind::TooLarge],
        2,
        NewPod::Unlabelled,
    )
    .await;
    // Declared past the cap: refused before reading, not after the response time limit
    // (a watch error asks for the list).
    h.outage(
        Answer::Declared(1 << 40),
        Answer::WatchError(500, "InternalError", "etcdserver: leader changed"),
        &[Kind::WatchError, Kind::TooLarge],
        3,
        NewPod::Unlabelled,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_error_events() {
    let h = Harness::start(FakeApi::start(&[1]).await);
    h.found(1, "at start").await;
    // Lists work: a relist may find the new pod during the outage.
    h.outage(
        Answer::Pods,
        Answer::WatchError(500, "InternalError", "etcdserver: leader changed"),
        &[Kind::WatchError],
        2,
        NewPod::MayBeFound,
    )
    .await;
    let before = h.errors();
    h.api.add_pod(3);
    h.found(3, "through the watch").await;
    assert_eq!(h.errors(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_restore_is_followed_by_a_relist() {
    let h = Harness::start(FakeApi::start(&[1]).await);
    h.found(1, "at start").await;
    h.api.add_pod(2);
    h.found(2, "through the watch").await;
    // The store comes back from a backup older than the resolver's version: watching
    // from that version is refused as too large, however often it is tried.
    let before = h.errors();
    h.api.restore(900);
    h.api.add_pod(3);
    h.counted(&before, &[Kind::WatchError], 1).await;
    h.found(3, "after the restore").await;
    h.api.add_pod(4);
    h.found(4, "through the new watch").await;
}
