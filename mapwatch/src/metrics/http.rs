//! /metrics, /healthz, /readyz.
//!
//! Whatever can route to the daemon's port can connect (deploy/base ships a
//! NetworkPolicy that admits only Prometheus, where the network plugin enforces it),
//! so the server bounds what a client can hold: at most [`MAX_CONNECTIONS`] open connections (a new one closes the oldest,
//! so idle connections cannot lock a scraper out), [`HEADER_READ_TIMEOUT`] to send a
//! request's headers (idle keep-alive included), [`CONNECTION_LIFETIME`] in all. Before
//! this, ~20,000 idle connections exhausted the daemon's file descriptors: /metrics
//! stopped answering and /proc scans failed.
use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{Router, extract::State, http::StatusCode, routing::get};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, task::AbortHandle};
use tracing::{debug, warn};

/// Open connections kept at most (Prometheus needs one or two).
pub const MAX_CONNECTIONS: usize = 64;
/// Time a client has to send a request's headers, and to send the next request on a
/// kept-alive connection.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection is closed after this long whatever it does.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// Pause after `accept` fails for lack of file descriptors (it would fail again at once).
const FD_EXHAUSTED_PAUSE: Duration = Duration::from_millis(100);

use super::Metrics;

/// Runs right before each scrape: copies kernel-side counters into the registry.
pub type ScrapeHook = Arc<dyn Fn(&Metrics) + Send + Sync>;

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    before_scrape: ScrapeHook,
}

/// How long a taken port is tried again: a mapwatch that was just killed holds its
/// port while the kernel tears its uprobes down (~0.8 s measured), and a restarting pod
/// must not lose that race.
pub const BIND_RETRY_FOR: Duration = Duration::from_secs(3);

/// Binds `addr`, trying again for [`BIND_RETRY_FOR`] while it is in use.
pub fn bind_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let deadline = std::time::Instant::now() + BIND_RETRY_FOR;
    loop {
        match std::net::TcpListener::bind(addr) {
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            result => return result,
        }
    }
}

/// Binds `addr` now (so a bad address fails before any probe is attached) and returns
/// the server future.
pub fn bind(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    before_scrape: ScrapeHook,
) -> std::io::Result<(SocketAddr, impl Future<Output = std::io::Result<()>>)> {
    serve_bound(bind_listener(addr)?, metrics, ready, before_scrape)
}

/// Like [`bind`], on a socket bound earlier (before privileges were used, so a taken
/// port is reported before anything is loaded into the kernel).
pub fn serve_bound(
    listener: std::net::TcpListener,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    before_scrape: ScrapeHook,
) -> std::io::Result<(SocketAddr, impl Future<Output = std::io::Result<()>>)> {
    listener.set_nonblocking(true)?;
    serve(
        TcpListener::from_std(listener)?,
        metrics,
        ready,
        before_scrape,
    )
}

fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    before_scrape: ScrapeHook,
) -> std::io::Result<(SocketAddr, impl Future<Output = std::io::Result<()>>)> {
    let local = listener.local_addr()?;
    let counted = Arc::clone(&metrics);
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready_handler))
        .with_state(AppState {
            metrics,
            ready,
            before_scrape,
        });
    Ok((local, accept_loop(listener, app, counted)))
}

/// Accepts connections for ever, within the limits in the module doc.
async fn accept_loop(
    listener: TcpListener,
    app: Router,
    metrics: Arc<Metrics>,
) -> std::io::Result<()> {
    let mut open: VecDeque<AbortHandle> = VecDeque::with_capacity(MAX_CONNECTIONS + 1);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                let seen = metrics.http_accept_fd_exhausted_total.get();
                metrics.http_accept_fd_exhausted_total.inc();
                // Logged at 1, 2, 4, 8… so a flood does not flood the log too.
                if seen == 0 || seen.is_power_of_two() {
                    warn!(
                        open = open.len(),
                        "out of file descriptors accepting an HTTP connection ({e}); \
                         {} so far",
                        seen + 1
                    );
                }
                tokio::time::sleep(FD_EXHAUSTED_PAUSE).await;
                continue;
            }
            // The client gave up before we accepted (ECONNABORTED) and the like.
            Err(e) => {
                debug!("accepting an HTTP connection: {e}");
                continue;
            }
        };
        open.retain(|task| !task.is_finished());
        if open.len() >= MAX_CONNECTIONS
            && let Some(oldest) = open.pop_front()
        {
            oldest.abort();
            metrics.http_connections_evicted_total.inc();
        }
        let service = TowerToHyperService::new(app.clone());
        let task = tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            if let Ok(Err(e)) = tokio::time::timeout(CONNECTION_LIFETIME, connection).await {
                debug!("HTTP connection: {e}");
            }
        });
        open.push_back(task.abort_handle());
    }
}

async fn metrics_handler(
    State(state): State<AppState>,
) -> ([(&'static str, &'static str); 1], String) {
    (state.before_scrape)(&state.metrics);
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        state.metrics.render(),
    )
}

async fn ready_handler(State(state): State<AppState>) -> (StatusCode, &'static str) {
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "probes not attached yet\n")
    }
}
