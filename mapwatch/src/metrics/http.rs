//! /metrics, /healthz, /readyz.
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::{Router, extract::State, http::StatusCode, routing::get};
use tokio::net::TcpListener;

use super::Metrics;

/// Runs right before each scrape: copies kernel-side counters into the registry.
pub type ScrapeHook = Arc<dyn Fn(&Metrics) + Send + Sync>;

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    before_scrape: ScrapeHook,
}

/// Binds `addr` now (so a bad address fails before any probe is attached) and returns
/// the server future.
pub async fn bind(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    before_scrape: ScrapeHook,
) -> std::io::Result<(SocketAddr, impl Future<Output = std::io::Result<()>>)> {
    serve(
        TcpListener::bind(addr).await?,
        metrics,
        ready,
        before_scrape,
    )
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
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready_handler))
        .with_state(AppState {
            metrics,
            ready,
            before_scrape,
        });
    Ok((local, async move { axum::serve(listener, app).await }))
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
