//! Webhook notifications: a request opened, a request decided, a break-glass approval.
//!
//! Never on the statement's path: [`Webhooks::emit`] only queues (a bounded queue; when it is
//! full the notification is dropped and logged), and one background task posts each notification
//! to every webhook that wants it, retrying with backoff (1 s, 2 s, 4 s, ... up to `attempts`)
//! on a connection error or a 5xx/429 answer.
//!
//! Two body formats:
//! - `slack`: `{"text": "..."}`, what Slack's (and Mattermost's, Rocket.Chat's) incoming webhooks
//!   take;
//! - `json`: the notification as a JSON object, signed when a `secret` is set: the header
//!   `X-Portcullis-Signature: sha256=<hex>` is HMAC-SHA-256 of the exact body bytes under the
//!   secret, so that the receiver can check who sent it. `X-Portcullis-Event` names the event.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[[approvals.webhooks]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where to POST (`http://` or `https://`; https is verified against the bundled Mozilla
    /// roots). Required. `${VAR}` is expanded here.
    pub url: String,
    /// `"json"` (default) or `"slack"`.
    #[serde(default)]
    pub format: WebhookFormat,
    /// `json` only: the HMAC-SHA-256 key of the `X-Portcullis-Signature` header. `${VAR}` is
    /// expanded here. Default: unsigned.
    #[serde(default)]
    pub secret: Option<String>,
    /// The events it gets: `requested`, `approved`, `denied`, `cancelled`, `break_glass`.
    /// Default: all of them.
    #[serde(default)]
    pub events: Option<Vec<String>>,
    /// Deliveries tried before a notification is given up (and logged). Default 5.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
}

fn default_attempts() -> u32 {
    5
}

/// A webhook's body format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    /// The notification as a JSON object (optionally signed).
    #[default]
    Json,
    /// `{"text": ...}` for chat incoming webhooks.
    Slack,
}

/// The event names a webhook may ask for.
pub const EVENTS: &[&str] = &[
    "requested",
    "approved",
    "denied",
    "cancelled",
    "break_glass",
];

impl WebhookConfig {
    /// Problems with this entry (`i` is its index).
    pub fn check(&self, i: usize) -> Vec<String> {
        let mut errors = Vec::new();
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            errors.push(format!(
                "`webhooks[{i}].url` must be an http:// or https:// URL"
            ));
        }
        if self.format == WebhookFormat::Slack && self.secret.is_some() {
            errors.push(format!(
                "`webhooks[{i}].secret` signs `json` bodies only; chat webhooks authenticate by their URL"
            ));
        }
        for e in self.events.iter().flatten() {
            if !EVENTS.contains(&e.as_str()) {
                errors.push(format!(
                    "`webhooks[{i}].events`: unknown event `{e}`; known: {}",
                    EVENTS.join(", ")
                ));
            }
        }
        if self.attempts == 0 {
            errors.push(format!("`webhooks[{i}].attempts` must be at least 1"));
        }
        errors
    }

    fn wants(&self, event: &str) -> bool {
        self.events
            .as_ref()
            .is_none_or(|list| list.iter().any(|e| e == event))
    }
}

/// One notification, as the `json` format sends it.
#[derive(Debug, Clone, Serialize)]
pub struct Notification {
    /// `requested`, `approved`, `denied`, `cancelled` or `break_glass`.
    pub event: &'static str,
    /// The request.
    pub request_id: String,
    /// Who asked.
    pub requester: String,
    /// The target.
    pub target: String,
    /// The rule that held the statement.
    pub rule: Option<String>,
    /// The statement text.
    pub sql: String,
    /// Who decided (absent for `requested`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// The reason given with the decision.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Groups that may decide.
    pub approvers: Vec<String>,
    /// Approvals needed.
    pub quorum: u32,
    /// Where to decide it (the admin API's URL of the request), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// When (RFC 3339).
    pub time: String,
}

impl Notification {
    fn text(&self) -> String {
        let what = match self.event {
            "requested" => format!(
                "{} asks to run a statement on {} (rule {}); {} approval{} from {} needed",
                self.requester,
                self.target,
                self.rule.as_deref().unwrap_or("-"),
                self.quorum,
                if self.quorum == 1 { "" } else { "s" },
                self.approvers.join(", ")
            ),
            "break_glass" => format!(
                ":rotating_light: BREAK GLASS: {} approved their own statement on {}",
                self.by.as_deref().unwrap_or("?"),
                self.target
            ),
            other => format!(
                "{} {} the statement of {} on {}",
                self.by.as_deref().unwrap_or("?"),
                other,
                self.requester,
                self.target
            ),
        };
        let mut text = format!("[portcullis] request {}: {what}", self.request_id);
        if let Some(r) = &self.reason {
            text.push_str(&format!(" (reason: {r})"));
        }
        text.push_str(&format!("\n```{}```", truncate(&self.sql, 1000)));
        if let Some(url) = &self.url {
            text.push_str(&format!("\n{url}"));
        }
        text
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The webhook sender. Cheap to clone; without webhooks, `emit` does nothing.
#[derive(Clone, Default)]
pub struct Webhooks {
    queue: Option<tokio::sync::mpsc::Sender<Notification>>,
}

/// Notifications that may wait for the sender before new ones are dropped.
const QUEUE: usize = 1024;

impl Webhooks {
    /// Starts the background sender for `hooks` (none: nothing is started). Needs a tokio
    /// runtime.
    pub fn start(hooks: Vec<WebhookConfig>) -> Self {
        if hooks.is_empty() {
            return Self::default();
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Notification>(QUEUE);
        let hooks = Arc::new(hooks);
        let agent = agent();
        tokio::spawn(async move {
            while let Some(n) = rx.recv().await {
                for hook in hooks.iter().filter(|h| h.wants(n.event)) {
                    // Each delivery on its own, so that one slow receiver delays no other.
                    let (hook, agent, n) = (hook.clone(), agent.clone(), n.clone());
                    tokio::spawn(deliver(agent, hook, n));
                }
            }
        });
        Self { queue: Some(tx) }
    }

    /// Queues `n` for every webhook that wants its event. Never waits.
    pub fn emit(&self, n: Notification) {
        if let Some(q) = &self.queue {
            if let Err(e) = q.try_send(n) {
                tracing::error!(error = %e, "webhook queue full: a notification was dropped");
            }
        }
    }
}

fn agent() -> ureq::Agent {
    // The provider is passed explicitly: rustls here is built with aws-lc-rs only.
    let tls = ureq::tls::TlsConfig::builder()
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .build();
    ureq::Agent::config_builder()
        .tls_config(tls)
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent()
}

/// The body and headers of `n` for `hook`.
pub fn render(hook: &WebhookConfig, n: &Notification) -> (String, Vec<(String, String)>) {
    let mut headers = vec![("X-Portcullis-Event".to_owned(), n.event.to_owned())];
    let body = match hook.format {
        WebhookFormat::Slack => serde_json::json!({ "text": n.text() }).to_string(),
        WebhookFormat::Json => serde_json::to_string(n).unwrap_or_default(),
    };
    if let (WebhookFormat::Json, Some(secret)) = (hook.format, &hook.secret) {
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret.as_bytes());
        let tag = aws_lc_rs::hmac::sign(&key, body.as_bytes());
        headers.push((
            "X-Portcullis-Signature".to_owned(),
            format!("sha256={}", hex::encode(tag.as_ref())),
        ));
    }
    (body, headers)
}

async fn deliver(agent: ureq::Agent, hook: WebhookConfig, n: Notification) {
    let (body, headers) = render(&hook, &n);
    let mut delay = Duration::from_secs(1);
    for attempt in 1..=hook.attempts {
        let (agent, url, body, headers) = (
            agent.clone(),
            hook.url.clone(),
            body.clone(),
            headers.clone(),
        );
        let sent = tokio::task::spawn_blocking(move || {
            let mut request = agent.post(&url).content_type("application/json");
            for (k, v) in &headers {
                request = request.header(k, v);
            }
            request.send(body).map(|r| r.status().as_u16())
        })
        .await;
        let retry = match sent {
            Ok(Ok(status)) if (200..300).contains(&status) => return,
            Ok(Ok(status)) if status == 429 || status >= 500 => format!("HTTP {status}"),
            Ok(Ok(status)) => {
                tracing::error!(url = %redact(&hook.url), status, event = n.event, request = %n.request_id, "webhook refused the notification; not retried");
                return;
            }
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        if attempt == hook.attempts {
            tracing::error!(url = %redact(&hook.url), error = %retry, attempts = attempt, event = n.event, request = %n.request_id, "webhook notification given up");
            return;
        }
        tracing::warn!(url = %redact(&hook.url), error = %retry, attempt, "webhook delivery failed; retrying");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(60));
    }
}

/// The URL without its path and query: chat webhook URLs carry their secret in the path.
fn redact(url: &str) -> String {
    match url
        .find("://")
        .and_then(|i| url[i + 3..].find('/').map(|j| i + 3 + j))
    {
        Some(end) => format!("{}/...", &url[..end]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note() -> Notification {
        Notification {
            event: "requested",
            request_id: "apr_x".into(),
            requester: "alice".into(),
            target: "app".into(),
            rule: Some("ledger".into()),
            sql: "insert into ledger values (1)".into(),
            by: None,
            reason: None,
            approvers: vec!["dba".into()],
            quorum: 1,
            url: None,
            time: "2026-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn json_bodies_are_signed_over_their_exact_bytes() {
        let hook: WebhookConfig =
            toml::from_str("url = \"http://x/hook\"\nsecret = \"s3cret\"").unwrap();
        let (body, headers) = render(&hook, &note());
        let sig = headers
            .iter()
            .find(|(k, _)| k == "X-Portcullis-Signature")
            .map(|(_, v)| v.clone())
            .expect("signed");
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, b"s3cret");
        let expected = hex::encode(aws_lc_rs::hmac::sign(&key, body.as_bytes()).as_ref());
        assert_eq!(sig, format!("sha256={expected}"));
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["event"], "requested");
        assert_eq!(v["request_id"], "apr_x");
    }

    #[test]
    fn slack_bodies_are_text_and_checks_name_the_entry() {
        let hook: WebhookConfig =
            toml::from_str("url = \"https://hooks.example/T/B/x\"\nformat = \"slack\"").unwrap();
        let (body, headers) = render(&hook, &note());
        assert!(headers.iter().all(|(k, _)| k != "X-Portcullis-Signature"));
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let text = v["text"].as_str().unwrap();
        assert!(text.contains("request apr_x: alice asks"), "{text}");
        assert_eq!(redact(&hook.url), "https://hooks.example/...");
        let bad: WebhookConfig = toml::from_str(
            "url = \"ftp://x\"\nformat = \"slack\"\nsecret = \"s\"\nevents = [\"exploded\"]\nattempts = 0",
        )
        .unwrap();
        assert_eq!(bad.check(2).len(), 4, "{:?}", bad.check(2));
    }
}
