//! The three bodies a receiver can ask for, cut from one notice at send time.

use super::notice::Notice;
use super::queue::{AmAlert, Queued};
use crate::clock::rfc3339;
use crate::config::alerts::HookFormat;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

/// A firing alert posted now stays firing this many repeat intervals unless posted again,
/// so one lost re-post does not resolve it; an agent that died lets it lapse.
const FIRING_FOR_REPEATS: i64 = 3;

/// The request for one notification: where it goes and what it carries.
pub struct Request {
    pub url: String,
    pub body: Vec<u8>,
}

pub fn request(format: HookFormat, base: &str, q: &Queued, now_ms: i64, repeat_ms: i64) -> Request {
    match format {
        HookFormat::Json => Request {
            url: base.to_string(),
            body: to_vec(&json!(q.notice)),
        },
        HookFormat::Slack => Request {
            url: base.to_string(),
            body: to_vec(&slack(&q.notice)),
        },
        HookFormat::Alertmanager => Request {
            url: alertmanager_url(base),
            body: to_vec(&alertmanager(q, now_ms, repeat_ms)),
        },
    }
}

/// Alertmanager's alerts endpoint, whether the configured `url` is the server's root or
/// the endpoint itself (both are written in the wild; the endpoint twice is a 404).
pub fn alertmanager_url(base: &str) -> String {
    let root = base.trim_end_matches('/');
    let root = root.strip_suffix("/api/v2/alerts").unwrap_or(root);
    format!("{}/api/v2/alerts", root.trim_end_matches('/'))
}

/// Slack's mrkdwn reads `<…>` as links and mentions (`<!channel>`): text from logs,
/// frames or names is escaped so it can ping nobody.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn to_vec(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

/// Slack's incoming webhook: a `text` for notifications and a few blocks for the channel.
fn slack(n: &Notice) -> Value {
    let icon = match (n.event.as_str(), n.severity.as_str()) {
        ("resolved", _) => ":white_check_mark:",
        ("dead", _) => ":skull:",
        (_, "warning") => ":warning:",
        _ => ":rotating_light:",
    };
    let e = slack_escape;
    let text = format!("{icon} hangwatch {}: {}", n.event.as_str(), e(&n.summary));
    let mut facts = vec![format!("incident `{}`", e(&n.incident_id))];
    for (k, v) in n
        .labels
        .iter()
        .filter(|(k, _)| *k == "namespace" || *k == "pod")
    {
        facts.push(format!("{k} `{}`", e(v)));
    }
    for s in &n.suspects {
        let frame = s
            .top_frames
            .first()
            .map(|f| format!(" at `{}`", e(f)))
            .unwrap_or_default();
        let who = match s.rank {
            Some(r) if s.role == "worker" => format!("rank {r}"),
            Some(r) => format!("rank {r} ({})", s.role.replace('_', " ")),
            None => s.role.replace('_', " "),
        };
        facts.push(format!("{who} ({}){frame}", e(&s.reasons.join(", "))));
    }
    facts.push(format!("bundle `{}` on {}", e(&n.bundle), e(&n.node)));
    json!({
        "text": text,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": text}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": facts.join(" · ")}]},
        ],
    })
}

/// Alertmanager's `POST /api/v2/alerts`: every alert the incident has raised, firing
/// ones with an end a few repeats ahead, ended ones with `endsAt` = now.
fn alertmanager(q: &Queued, now_ms: i64, repeat_ms: i64) -> Value {
    let n = &q.notice;
    let alerts: Vec<Value> = q
        .alerts
        .iter()
        .map(|a| {
            let ends = if a.firing {
                now_ms + FIRING_FOR_REPEATS * repeat_ms
            } else {
                now_ms
            };
            let mut labels = json!({
                "alertname": a.alertname,
                "engine": n.engine,
                "node": n.node,
                "severity": n.severity,
                "source": "hangwatch",
            });
            if let Some(m) = labels.as_object_mut() {
                if let Some(r) = a.rank {
                    m.insert("rank".into(), Value::String(r.to_string()));
                }
                if let Some(r) = &a.role {
                    m.insert("role".into(), Value::String(r.clone()));
                }
                // Two pods on one node may serve on the same port: say which. A
                // deployment across nodes: route and group its nodes' alerts together.
                for k in ["namespace", "pod", "deployment", "node_rank"] {
                    if let Some(v) = n.labels.get(k) {
                        m.insert(k.into(), Value::String(v.clone()));
                    }
                }
            }
            json!({
                "labels": labels,
                "annotations": annotations(n, a),
                "startsAt": n.onset_at,
                "endsAt": rfc3339(ends),
            })
        })
        .collect();
    Value::Array(alerts)
}

fn annotations(n: &Notice, a: &AmAlert) -> Value {
    let reasons = a
        .role
        .as_ref()
        .and_then(|role| {
            n.suspects
                .iter()
                .find(|s| s.rank == a.rank && &s.role == role)
        })
        .map(|s| s.reasons.join(", "))
        .unwrap_or_else(|| n.engine_reasons.join(", "));
    let mut v = json!({
        "summary": n.summary,
        "description": format!("incident {} ({}); evidence: {reasons}", n.incident_id, n.event.as_str()),
        "bundle": n.bundle,
        "incident_id": n.incident_id,
    });
    if let (Some(d), Some(m)) = (n.deadline_left_seconds, v.as_object_mut()) {
        m.insert(
            "deadline_left_seconds".into(),
            Value::String(format!("{d:.0}")),
        );
    }
    v
}

/// `sha256=<hex>` of HMAC-SHA256 over `<timestamp>.<body>`: binding the timestamp lets a
/// receiver refuse a replayed request.
pub fn signature(key: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(key.as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(), // HMAC takes keys of any length
    };
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::notice::{Event, NoticeSuspect, SCHEMA};

    #[test]
    fn signature_matches_an_independent_hmac() {
        // Python: hmac.new(b"Jefe", b'1700000000.{"a":1}', hashlib.sha256).hexdigest()
        let s = signature("Jefe", "1700000000", br#"{"a":1}"#);
        assert_eq!(
            s,
            "sha256=fa5f6481efc59da48b19c9dc10196c9953e5651f8304b3a318b6b87d70272e0a"
        );
    }

    fn queued(event: Event, firing: bool) -> Queued {
        Queued {
            notice: Notice {
                schema: SCHEMA.into(),
                id: "i/opened/1".into(),
                event,
                incident_id: "i".into(),
                engine: "vllm-8000".into(),
                node: "n1".into(),
                verdict: "stalled".into(),
                severity: "critical".into(),
                suspects: vec![NoticeSuspect {
                    rank: Some(1),
                    role: "worker".into(),
                    pid: 7,
                    node: None,
                    reasons: vec!["process_stopped".into()],
                    confidence: 0.99,
                    top_frames: vec!["dequeue (shm_broadcast.py:512)".into()],
                }],
                engine_reasons: vec![],
                summary: "engine vllm-8000 on n1: rank 1 (pid 7) is stuck".into(),
                onset_at: "2026-12-06T09:00:00Z".into(),
                opened_at: "2026-12-06T09:00:02Z".into(),
                event_at: "2026-12-06T09:00:02Z".into(),
                deadline_left_seconds: Some(296.0),
                bundle: "/var/lib/hangwatch/bundles/i".into(),
                labels: Default::default(),
            },
            alerts: vec![AmAlert {
                alertname: "HangwatchRankStuck".into(),
                rank: Some(1),
                role: Some("worker".into()),
                firing,
            }],
            refresh: false,
            queued_ms: 0,
        }
    }

    #[test]
    fn alertmanager_alerts_fire_ahead_and_end_now() {
        let now = 1_780_000_000_000;
        let r = request(
            HookFormat::Alertmanager,
            "http://am:9093/",
            &queued(Event::Opened, true),
            now,
            60_000,
        );
        assert_eq!(r.url, "http://am:9093/api/v2/alerts");
        let v: Value = serde_json::from_slice(&r.body).expect("json");
        let a = &v[0];
        assert_eq!(a["labels"]["rank"], "1");
        assert_eq!(a["labels"]["source"], "hangwatch");
        assert_eq!(a["annotations"]["deadline_left_seconds"], "296");
        assert_eq!(a["endsAt"], rfc3339(now + 180_000));
        let r = request(
            HookFormat::Alertmanager,
            "http://am:9093",
            &queued(Event::Resolved, false),
            now,
            60_000,
        );
        let v: Value = serde_json::from_slice(&r.body).expect("json");
        assert_eq!(v[0]["endsAt"], rfc3339(now));
    }

    /// Both ways users write Alertmanager's address reach the same endpoint.
    #[test]
    fn an_alertmanager_url_with_or_without_the_endpoint() {
        for base in [
            "http://am:9093",
            "http://am:9093/",
            "http://am:9093/api/v2/alerts",
            "http://am:9093/api/v2/alerts/",
        ] {
            assert_eq!(
                alertmanager_url(base),
                "http://am:9093/api/v2/alerts",
                "{base}"
            );
        }
        assert_eq!(
            alertmanager_url("https://x/alertmanager/"),
            "https://x/alertmanager/api/v2/alerts"
        );
    }

    /// Text from the engine (a frame, a model name in the summary) cannot ping a channel
    /// or forge a link; the pod is said.
    #[test]
    fn slack_text_is_escaped_and_names_the_pod() {
        let mut q = queued(Event::Opened, true);
        q.notice.summary = "rank 1 <!channel> & <https://evil|click>".into();
        q.notice.suspects[0].top_frames = vec!["f (<@U123>.py:1)".into()];
        q.notice.labels.insert("namespace".into(), "ml".into());
        q.notice.labels.insert("pod".into(), "vllm-0".into());
        let r = request(HookFormat::Slack, "https://hooks.slack.com/x", &q, 0, 1);
        let body = String::from_utf8_lossy(&r.body).to_string();
        assert!(
            !body.contains("<!channel>") && !body.contains("<@U123>"),
            "{body}"
        );
        assert!(!body.contains("<https://evil"), "{body}");
        assert!(body.contains("&lt;!channel&gt; &amp;"), "{body}");
        assert!(
            body.contains("pod `vllm-0`") && body.contains("namespace `ml`"),
            "{body}"
        );
        let r = request(HookFormat::Alertmanager, "http://am:9093", &q, 0, 1);
        let v: Value = serde_json::from_slice(&r.body).expect("json");
        assert_eq!(v[0]["labels"]["pod"], "vllm-0");
        assert_eq!(v[0]["labels"]["namespace"], "ml");
    }

    /// Alertmanager groups a deployment's nodes by these labels.
    #[test]
    fn alertmanager_alerts_carry_the_deployment_and_the_node_rank() {
        let mut q = queued(Event::Opened, true);
        q.notice
            .labels
            .insert("deployment".into(), "vllm-10.0.0.1-29501".into());
        q.notice.labels.insert("node_rank".into(), "1".into());
        let r = request(HookFormat::Alertmanager, "http://am:9093", &q, 0, 1);
        let v: Value = serde_json::from_slice(&r.body).expect("json");
        assert_eq!(v[0]["labels"]["deployment"], "vllm-10.0.0.1-29501");
        assert_eq!(v[0]["labels"]["node_rank"], "1");
    }

    #[test]
    fn slack_says_the_summary_and_the_top_frame() {
        let r = request(
            HookFormat::Slack,
            "https://hooks.slack.com/x",
            &queued(Event::Opened, true),
            0,
            1,
        );
        let v: Value = serde_json::from_slice(&r.body).expect("json");
        let text = v["text"].as_str().unwrap_or("");
        assert!(
            text.contains("opened") && text.contains("rank 1 (pid 7) is stuck"),
            "{text}"
        );
        let ctx = v["blocks"][1]["elements"][0]["text"].as_str().unwrap_or("");
        assert!(
            ctx.contains("shm_broadcast.py:512") && ctx.contains("/var/lib/hangwatch/bundles/i"),
            "{ctx}"
        );
    }
}
