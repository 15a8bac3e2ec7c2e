//! The HTTP server: `/metrics` for Prometheus, `/healthz` for liveness probes,
//! `/status` for people and scripts, `POST /capture` for a bundle on demand.

use crate::clock::now_ms;
use crate::limits::Bounded;
use crate::shared::{CaptureRequest, Shared};
use crate::tls::TlsListener;
use anyhow::Context;
use axum::extract::RawQuery;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// A connection that moves no byte this long is dropped (headers trickled, a client
/// that connects and waits).
const CONNECTION_IDLE: std::time::Duration = std::time::Duration::from_secs(10);
/// No connection lives longer (Prometheus reconnects; a slow reader gives its place up).
const CONNECTION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(120);

pub async fn serve(
    addr: SocketAddr,
    shared: Arc<Shared>,
    tls: Option<TlsAcceptor>,
    max_connections: usize,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/status", get(status))
        .route("/engines/{id}/ready", get(engine_ready))
        .route("/ready", get(pod_ready))
        .route("/capture", post(capture))
        .route(
            "/peers/report",
            post(peer_report).layer(axum::extract::DefaultBodyLimit::max(
                crate::peers::MAX_REPORT_BYTES,
            )),
        )
        .route("/", get(index))
        .with_state(shared);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    tracing::info!(max_connections, "serving HTTP");
    let listener = Bounded::new(
        listener,
        max_connections,
        CONNECTION_IDLE,
        CONNECTION_LIFETIME,
    );
    match tls {
        None => axum::serve(listener, app)
            .with_graceful_shutdown(shutdown_signal())
            .await
            .context("HTTP server")?,
        Some(acceptor) => {
            let listener = TlsListener::new(listener, acceptor).context("TLS listener")?;
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown_signal())
                .await
                .context("HTTPS server")?
        }
    }
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
    "hangwatch: /metrics, /healthz, /status, /engines/ID/ready, /ready[?port=P|?namespace=NS&pod=NAME]; POST /capture?engine=ID, POST /peers/report (with a token)\n"
}

fn json(status: u16, body: String) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn error(status: u16, message: &str) -> Response {
    json(status, serde_json::json!({ "error": message }).to_string())
}

/// What `hangwatch status --json` prints, as of the last tick, with each engine's
/// verdict and the open incidents.
async fn status(State(s): State<Arc<Shared>>) -> Response {
    json(200, source(&s).render())
}

/// The status source of the last tick.
fn source(s: &Shared) -> Arc<crate::status::StatusSource> {
    s.status
        .lock()
        .map(|b| b.clone())
        .unwrap_or_else(|p| p.into_inner().clone())
}

/// 200 while the engine is idle or busy, 503 while starting, stalled or dead
/// (`ready.rs`); unauthenticated like `/healthz`: it reveals a state only.
async fn engine_ready(
    State(s): State<Arc<Shared>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    let (code, body) = crate::ready::of_engine(&source(&s), &id);
    json(code, body.to_string())
}

/// The same for a group of this node's engines: `GET /ready?namespace=NS&pod=NAME` (a
/// pod's), `GET /ready?port=P` (the one serving on port P: a balancer checks every node
/// with one URL), `GET /ready` (every engine this agent watches).
async fn pod_ready(State(s): State<Arc<Shared>>, RawQuery(q): RawQuery) -> Response {
    let q = q.unwrap_or_default();
    let param = |k: &str| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
            .unwrap_or("")
            .to_string()
    };
    let (ns, pod, port) = (param("namespace"), param("pod"), param("port"));
    let (code, body) = if !port.is_empty() {
        match port.parse::<u16>() {
            Ok(p) => crate::ready::of_port(&source(&s), p),
            Err(_) => return error(400, "port: a number, GET /ready?port=8000"),
        }
    } else if ns.is_empty() && pod.is_empty() {
        crate::ready::of_node(&source(&s))
    } else if ns.is_empty() || pod.is_empty() || ns.len() > 253 || pod.len() > 253 {
        return error(400, "say which pod: GET /ready?namespace=NS&pod=NAME");
    } else {
        crate::ready::of_pod(&source(&s), &ns, &pod)
    };
    json(code, body.to_string())
}

/// Peer reports answered per minute at most: one a second from each follower part of
/// up to a few hundred nodes; bad tokens get a window of their own, as for capture.
const PEER_CALLS_PER_MINUTE: usize = 30_000;

/// A follower node's agent reports its part of a deployment; the answer is this node's
/// view of it (`peers/`). Token as for capture, body capped, parsed whole or refused.
async fn peer_report(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Some(desk) = &s.peers else {
        return error(403, "peers are off: set peers.token_file");
    };
    let given = bearer(&headers);
    let good = same(given.as_bytes(), desk.token.expose().as_bytes());
    let (window, max) = if good {
        (&desk.calls, PEER_CALLS_PER_MINUTE)
    } else {
        (&desk.denials, CAPTURE_CALLS_PER_MINUTE)
    };
    if !window.admit(now_ms(), max) {
        return error(429, "too many peer reports; try again in a minute");
    }
    if !good {
        return error(401, "a bearer token is required (peers.token_file)");
    }
    match desk.receive(&body, now_ms()) {
        Ok(view) => json(200, serde_json::to_string(&view).unwrap_or_default()),
        Err(e) => error(400, &e),
    }
}

/// The bearer token of a request, trimmed; empty when there is none.
fn bearer(headers: &HeaderMap) -> &str {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .trim()
}

/// Capture requests answered per minute at most, counted apart for good and bad tokens:
/// a guessing client gets nowhere fast and locks nobody out, and a loop cannot make the
/// agent dump stacks without end.
const CAPTURE_CALLS_PER_MINUTE: usize = 20;
/// How long the server waits for the tick to take a request.
const CAPTURE_ANSWER_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

async fn capture(
    State(s): State<Arc<Shared>>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let (Some(tx), Some(token)) = (&s.captures, &s.capture_token) else {
        return error(403, "capture is off: set http.capture_token_file");
    };
    let good = same(bearer(&headers).as_bytes(), token.expose().as_bytes());
    // Two windows: guessers are slowed among themselves and never use up the
    // operators' captures.
    let window = if good {
        &s.capture_calls
    } else {
        &s.capture_denials
    };
    if !window.admit(now_ms(), CAPTURE_CALLS_PER_MINUTE) {
        return error(429, "too many capture requests; try again in a minute");
    }
    if !good {
        let mut r = error(401, "a bearer token is required (http.capture_token_file)");
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return r;
    }
    let engine = q
        .as_deref()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("engine="))
        .unwrap_or("")
        .to_string();
    if engine.is_empty() || engine.len() > 200 {
        return error(
            400,
            "say which engine: POST /capture?engine=ID (ids: GET /status)",
        );
    }
    let (reply, answer) = std::sync::mpsc::sync_channel(1);
    let sent = tx
        .lock()
        .map(|t| t.send(CaptureRequest { engine, reply }).is_ok())
        .unwrap_or(false);
    if !sent {
        return error(503, "the agent is stopping");
    }
    let got = tokio::task::spawn_blocking(move || answer.recv_timeout(CAPTURE_ANSWER_WITHIN)).await;
    match got {
        Ok(Ok(a)) => json(a.status, a.body.to_string()),
        _ => error(503, "the tick did not take the request in time"),
    }
}

/// Equal in time independent of where they differ (a token compare).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
