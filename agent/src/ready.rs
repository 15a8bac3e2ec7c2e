//! Readiness per engine, for load balancers and orchestrators (`GET
//! /engines/{id}/ready`, `GET /ready?namespace=NS&pod=NAME`): vLLM's own `/health` stays
//! 200 while its engine hangs, so a balancer that asks hangwatch takes a hung engine out
//! of rotation within seconds. It reveals a state only, like `/healthz`.

use crate::status::StatusSource;
use hangwatch_rules::{EngineFacts, EngineState, Verdict};
use serde_json::{json, Value};

/// Ready: serving or able to (idle, busy). A long step past its limit (a warning, every
/// rank still at work) stays ready: slow is not hung.
pub fn is_ready(v: &Verdict) -> bool {
    match v.state {
        EngineState::Idle | EngineState::Busy => true,
        EngineState::Stalled => v.long_step && v.severity() == "warning",
        EngineState::Starting | EngineState::Dead => false,
    }
}

/// One engine's readiness: (HTTP status, body); 404 for an engine not on this node.
pub fn of_engine(source: &StatusSource, engine: &str) -> (u16, Value) {
    match source.verdicts.iter().find(|v| v.engine == engine) {
        Some(v) => answer(source, &[v]),
        None => (
            404,
            json!({ "error": format!("no engine {engine:?} on this node") }),
        ),
    }
}

/// The readiness of a pod's engines (all of them must be ready).
pub fn of_pod(source: &StatusSource, namespace: &str, pod: &str) -> (u16, Value) {
    let named = |e: &EngineFacts| {
        e.pod.as_ref().is_some_and(|p| {
            p.namespace.as_deref() == Some(namespace) && p.pod.as_deref() == Some(pod)
        })
    };
    answer_for(
        source,
        named,
        &format!("no engine of pod {namespace}/{pod}"),
    )
}

/// The readiness of the engines serving on `port` (a balancer's check per backend).
pub fn of_port(source: &StatusSource, port: u16) -> (u16, Value) {
    let serving = |e: &EngineFacts| e.port == Some(port);
    answer_for(
        source,
        serving,
        &format!("no engine serving on port {port}"),
    )
}

/// The readiness of every engine this agent watches (404 when it watches none).
pub fn of_node(source: &StatusSource) -> (u16, Value) {
    answer_for(source, |_| true, "no engine")
}

/// The engines that `pick` chooses, all of which must be ready; 404 with `none` when
/// there is none on this node.
fn answer_for(
    source: &StatusSource,
    pick: impl Fn(&EngineFacts) -> bool,
    none: &str,
) -> (u16, Value) {
    let picked = |id: &str| source.snap.engines.iter().any(|e| e.id == id && pick(e));
    let mine: Vec<&Verdict> = source
        .verdicts
        .iter()
        .filter(|v| picked(&v.engine))
        .collect();
    if mine.is_empty() {
        return (404, json!({ "error": format!("{none} on this node") }));
    }
    answer(source, &mine)
}

fn answer(source: &StatusSource, verdicts: &[&Verdict]) -> (u16, Value) {
    let ready = verdicts.iter().all(|v| is_ready(v));
    let engines: Vec<Value> = verdicts
        .iter()
        .map(|v| {
            let incident = source
                .incidents
                .iter()
                .find(|i| i.engine == v.engine)
                .map(|i| i.id.clone());
            json!({
                "engine": v.engine,
                "state": v.state.as_str(),
                "ready": is_ready(v),
                "reason": (!is_ready(v)).then(|| v.headline()),
                "incident": incident,
            })
        })
        .collect();
    let code = if ready { 200 } else { 503 };
    (code, json!({ "ready": ready, "engines": engines }))
}
