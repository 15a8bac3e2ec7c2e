//! The HTTP server: `/metrics` for Prometheus, `/healthz` for liveness probes.

use crate::clock::now_ms;
use crate::shared::Shared;
use anyhow::Context;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub async fn serve(addr: SocketAddr, shared: Arc<Shared>) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/", get(index))
        .with_state(shared);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("HTTP server")?;
    tracing::info!("shutting down");
    Ok(())
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
}

async fn metrics(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    let body = {
        let _guard = s.lock.lock().unwrap_or_else(|p| p.into_inner());
        s.metrics.render()
    };
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
}

/// Healthy while the tick loop keeps ticking (a stuck collector must show).
async fn healthz(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    let last = s.last_tick_ms.load(Ordering::Relaxed);
    let allowed = (s.interval.as_millis() as i64) * 3 + 2_000;
    let age = now_ms() - last;
    if last > 0 && age <= allowed {
        (StatusCode::OK, "ok\n".to_string())
    } else if last == 0 {
        (StatusCode::SERVICE_UNAVAILABLE, "no tick yet\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("last tick {age} ms ago\n"),
        )
    }
}

async fn index() -> &'static str {
    "hangwatch: see /metrics and /healthz\n"
}
