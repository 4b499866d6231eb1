//! The admin API, `/api/v1` on the admin listener: approval requests and grants.
//!
//! Every call presents `Authorization: Bearer <JWT>`, authenticated by the gateway's own
//! identity rules (the token a client would present as its password). What the caller may do
//! follows its groups and `[approvals]`: approvers decide requests of the rules they approve,
//! admins manage grants and see every request, everyone sees and cancels their own requests.
//! Every change is written to the audit trail (`admin_action`) before it takes effect; when the
//! trail cannot take it, the call fails with 503 and nothing changes.
//!
//! | Method and path | What |
//! |---|---|
//! | `GET /api/v1/openapi.json` | this API's OpenAPI 3.1 document (no token needed) |
//! | `GET /api/v1/whoami` | the caller's subject, groups and roles |
//! | `GET /api/v1/approvals?state=pending&limit=100` | requests, newest first |
//! | `GET /api/v1/approvals/{id}` | one request |
//! | `POST /api/v1/approvals/{id}/approve` `{"reason": ...}` | approve (counts toward the quorum) |
//! | `POST /api/v1/approvals/{id}/deny` `{"reason": ...}` | deny |
//! | `POST /api/v1/approvals/{id}/cancel` `{"reason": ...}` | withdraw (requester or admin) |
//! | `GET /api/v1/grants?all=true` | grants (in force only, unless `all`) |
//! | `POST /api/v1/grants` `{"subject","target","fingerprint"/"rule","duration","reason"}` | create a grant |
//! | `DELETE /api/v1/grants/{id}` | revoke a grant |
//!
//! The router is built from [`ROUTES`], the same table as above; `docs/openapi.json` describes
//! every route in it (`tests/approvals.rs` checks the document against [`ROUTES`] and calls each
//! route through a running gateway).

use std::net::SocketAddr;
use std::sync::Arc;

use approvals::{ActionError, ActionErrorKind, Approvals, GrantSpec, Recorder, Verb};
use axum::extract::{ConnectInfo, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, MethodRouter};
use axum::{Json, Router};
use gateway_core::{AuditEvent, ClientInfo, Credentials, Gateway, GatewayError, Identity};
use serde::Deserialize;
use serde_json::json;

#[derive(Clone)]
struct Api {
    gateway: Gateway,
    approvals: Arc<Approvals>,
    /// The audit configuration, whose first indexed sink `GET /api/v1/audit` searches.
    audit: Arc<audit::AuditConfig>,
    /// The running policy engine (`None` without `[policy]`).
    policy: Option<Arc<policy::RuleEngine>>,
}

/// What the admin API serves: approvals and grants, and for admins the live sessions, the audit
/// trail and the effective policy.
pub struct ApiParts {
    /// The approval service.
    pub approvals: Arc<Approvals>,
    /// The gateway's `[audit]`, checked.
    pub audit: audit::AuditConfig,
    /// The running policy engine, if `[policy]` is configured.
    pub policy: Option<Arc<policy::RuleEngine>>,
}

/// Every route of the API, `(method, path)`: [`router`] registers exactly these, and
/// `docs/openapi.json` must describe exactly these.
pub(crate) const ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/v1/openapi.json"),
    ("GET", "/api/v1/whoami"),
    ("GET", "/api/v1/approvals"),
    ("GET", "/api/v1/approvals/{id}"),
    ("POST", "/api/v1/approvals/{id}/approve"),
    ("POST", "/api/v1/approvals/{id}/deny"),
    ("POST", "/api/v1/approvals/{id}/cancel"),
    ("GET", "/api/v1/grants"),
    ("POST", "/api/v1/grants"),
    ("DELETE", "/api/v1/grants/{id}"),
    ("GET", "/api/v1/sessions"),
    ("POST", "/api/v1/sessions/{id}/end"),
    ("GET", "/api/v1/audit"),
    ("GET", "/api/v1/policy"),
    ("POST", "/api/v1/policy/explain"),
];

/// The OpenAPI document of these routes, served as is.
const OPENAPI: &str = include_str!("../docs/openapi.json");

/// The handler of one entry of [`ROUTES`].
fn endpoint(method: &str, path: &str) -> Option<MethodRouter<Api>> {
    Some(match (method, path) {
        ("GET", "/api/v1/openapi.json") => get(openapi),
        ("GET", "/api/v1/whoami") => get(whoami),
        ("GET", "/api/v1/approvals") => get(list_requests),
        ("GET", "/api/v1/approvals/{id}") => get(show_request),
        ("POST", "/api/v1/approvals/{id}/approve") => post(approve),
        ("POST", "/api/v1/approvals/{id}/deny") => post(deny),
        ("POST", "/api/v1/approvals/{id}/cancel") => post(cancel),
        ("GET", "/api/v1/grants") => get(list_grants),
        ("POST", "/api/v1/grants") => post(create_grant),
        ("DELETE", "/api/v1/grants/{id}") => delete(revoke_grant),
        ("GET", "/api/v1/sessions") => get(list_sessions),
        ("POST", "/api/v1/sessions/{id}/end") => post(end_session),
        ("GET", "/api/v1/audit") => get(search_audit),
        ("GET", "/api/v1/policy") => get(show_policy),
        ("POST", "/api/v1/policy/explain") => post(explain_policy),
        _ => return None,
    })
}

/// The routes of [`ROUTES`], without their state. Methods of one path are merged by axum.
fn routes() -> Router<Api> {
    ROUTES
        .iter()
        .fold(Router::new(), |router, &(method, path)| {
            let endpoint = endpoint(method, path).unwrap_or_else(|| {
                panic!("admin API: ROUTES names {method} {path}, which has no handler")
            });
            router.route(path, endpoint)
        })
}

/// The `/api/v1` routes.
pub(crate) fn router(gateway: Gateway, parts: ApiParts) -> Router {
    routes().with_state(Api {
        gateway,
        approvals: parts.approvals,
        audit: Arc::new(parts.audit),
        policy: parts.policy,
    })
}

/// A JSON request body; anything that is not the expected JSON is a 400 `{"error": ...}` (not
/// axum's plain-text rejection). The content type is not checked: the body is.
struct Body<T>(T);

impl<T: serde::de::DeserializeOwned> axum::extract::FromRequest<Api> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, api: &Api) -> Result<Self, ApiError> {
        let bytes = axum::body::Bytes::from_request(req, api)
            .await
            .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.body_text()))?;
        serde_json::from_slice(&bytes).map(Body).map_err(|e| {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!("the body is not the JSON this call takes: {e}"),
            )
        })
    }
}

/// An optional JSON body: none, or only white space, is `T::default()`.
struct OptionalBody<T>(T);

impl<T: serde::de::DeserializeOwned + Default> axum::extract::FromRequest<Api> for OptionalBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, api: &Api) -> Result<Self, ApiError> {
        let bytes = axum::body::Bytes::from_request(req, api)
            .await
            .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.body_text()))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalBody(T::default()));
        }
        serde_json::from_slice(&bytes)
            .map(OptionalBody)
            .map_err(|e| {
                ApiError(
                    StatusCode::BAD_REQUEST,
                    format!("the body is not the JSON this call takes: {e}"),
                )
            })
    }
}

/// Query parameters; a malformed query string is a 400 `{"error": ...}`.
struct Params<T>(T);

impl<T: serde::de::DeserializeOwned> FromRequestParts<Api> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Api) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, api)
            .await
            .map(|Query(q)| Params(q))
            .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.body_text()))
    }
}

/// An error answer: `{"error": message}` with its status.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.0, Json(json!({ "error": self.1 }))).into_response();
        if self.0 == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        r
    }
}

impl From<ActionError> for ApiError {
    fn from(e: ActionError) -> Self {
        let status = match e.kind {
            ActionErrorKind::NotFound => StatusCode::NOT_FOUND,
            ActionErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ActionErrorKind::Conflict => StatusCode::CONFLICT,
            ActionErrorKind::Invalid => StatusCode::BAD_REQUEST,
            ActionErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError(status, e.message)
    }
}

/// The authenticated caller of one API call.
struct Actor {
    identity: Identity,
    client: ClientInfo,
}

impl FromRequestParts<Api> for Actor {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Api) -> Result<Self, ApiError> {
        let addr = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0)
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError(
                    StatusCode::UNAUTHORIZED,
                    "send `Authorization: Bearer <token>` (a token the gateway's [identity.jwt] accepts)".into(),
                )
            })?;
        let client = ClientInfo {
            addr,
            protocol: "admin",
            tls: false,
            application: parts
                .headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        };
        let credentials = Credentials::BearerToken {
            user: String::new(),
            token: token.to_owned(),
        };
        match api.gateway.authenticate(&credentials, &client).await {
            Ok(identity) => Ok(Actor { identity, client }),
            Err(e) => Err(ApiError(StatusCode::UNAUTHORIZED, e.message)),
        }
    }
}

/// Writes the actor's actions to the gateway's audit trail.
struct TrailRecorder<'a> {
    gateway: &'a Gateway,
    actor: &'a Actor,
}

#[async_trait::async_trait]
impl Recorder for TrailRecorder<'_> {
    async fn record(&self, target: Option<&str>, event: AuditEvent) -> Result<(), GatewayError> {
        self.gateway
            .record_admin(
                &self.actor.identity.subject,
                target,
                self.actor.client.clone(),
                event,
            )
            .await
    }
}

#[derive(Deserialize)]
struct ListQuery {
    state: Option<String>,
    limit: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Decision {
    reason: Option<String>,
}

#[derive(Deserialize)]
struct GrantsQuery {
    all: Option<bool>,
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

async fn whoami(State(api): State<Api>, actor: Actor) -> Json<serde_json::Value> {
    Json(json!({
        "subject": actor.identity.subject,
        "groups": actor.identity.groups,
        "admin": api.approvals.is_admin(&actor.identity),
        "approver": api.approvals.is_approver(&actor.identity),
    }))
}

async fn list_requests(
    State(api): State<Api>,
    actor: Actor,
    Params(q): Params<ListQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let state = match q.state.as_deref() {
        None | Some("") | Some("all") => None,
        Some(s) => Some(approvals::store::State::parse(s).ok_or_else(|| {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!("unknown state `{s}`: pending, approved, denied, expired, cancelled, executed or all"),
            )
        })?),
    };
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let list = api.approvals.list(&actor.identity, state, limit).await?;
    Ok(Json(json!({ "requests": list })))
}

async fn show_request(
    State(api): State<Api>,
    actor: Actor,
    Path(id): Path<String>,
) -> Result<Json<approvals::store::Request>, ApiError> {
    Ok(Json(api.approvals.get(&actor.identity, &id).await?))
}

async fn approve(
    State(api): State<Api>,
    actor: Actor,
    Path(id): Path<String>,
    OptionalBody(body): OptionalBody<Decision>,
) -> Result<Json<approvals::store::Request>, ApiError> {
    decide(api, actor, id, body, Verb::Approve).await
}

async fn deny(
    State(api): State<Api>,
    actor: Actor,
    Path(id): Path<String>,
    OptionalBody(body): OptionalBody<Decision>,
) -> Result<Json<approvals::store::Request>, ApiError> {
    decide(api, actor, id, body, Verb::Deny).await
}

async fn cancel(
    State(api): State<Api>,
    actor: Actor,
    Path(id): Path<String>,
    OptionalBody(body): OptionalBody<Decision>,
) -> Result<Json<approvals::store::Request>, ApiError> {
    decide(api, actor, id, body, Verb::Cancel).await
}

/// One decision route: the actor's decision on request `id`, recorded in the trail first.
async fn decide(
    api: Api,
    actor: Actor,
    id: String,
    body: Decision,
    verb: Verb,
) -> Result<Json<approvals::store::Request>, ApiError> {
    let reason = body.reason;
    let recorder = TrailRecorder {
        gateway: &api.gateway,
        actor: &actor,
    };
    let r = api
        .approvals
        .decide(verb, &actor.identity, &id, reason.as_deref(), &recorder)
        .await?;
    Ok(Json(r))
}

async fn list_grants(
    State(api): State<Api>,
    actor: Actor,
    Params(q): Params<GrantsQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let list = api
        .approvals
        .grants(&actor.identity, !q.all.unwrap_or(false))
        .await?;
    Ok(Json(json!({ "grants": list })))
}

async fn create_grant(
    State(api): State<Api>,
    actor: Actor,
    Body(spec): Body<GrantSpec>,
) -> Result<(StatusCode, Json<approvals::store::Grant>), ApiError> {
    if !api.gateway.targets().iter().any(|t| t.name == spec.target) {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!(
                "`target`: \"{}\" is not a target of this gateway",
                spec.target
            ),
        ));
    }
    let recorder = TrailRecorder {
        gateway: &api.gateway,
        actor: &actor,
    };
    let g = api
        .approvals
        .create_grant(&actor.identity, spec, &recorder)
        .await?;
    Ok((StatusCode::CREATED, Json(g)))
}

async fn revoke_grant(
    State(api): State<Api>,
    actor: Actor,
    Path(id): Path<String>,
) -> Result<Json<approvals::store::Grant>, ApiError> {
    let recorder = TrailRecorder {
        gateway: &api.gateway,
        actor: &actor,
    };
    Ok(Json(
        api.approvals
            .revoke_grant(&actor.identity, &id, &recorder)
            .await?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_has_a_handler_and_appears_once() {
        for &(method, path) in ROUTES {
            assert!(
                endpoint(method, path).is_some(),
                "{method} {path} has no handler"
            );
            let n = ROUTES.iter().filter(|r| **r == (method, path)).count();
            assert_eq!(n, 1, "{method} {path} is in ROUTES {n} times");
        }
        // Builds the router as `router` does: axum panics on a path or method registered twice.
        let _ = routes();
    }

    #[test]
    fn the_openapi_document_is_json_with_a_path_for_each_route() {
        let doc: serde_json::Value =
            serde_json::from_str(OPENAPI).expect("docs/openapi.json is JSON");
        for &(method, path) in ROUTES {
            assert!(
                doc["paths"][path][method.to_ascii_lowercase()].is_object(),
                "docs/openapi.json does not describe {method} {path}"
            );
        }
    }
}

/// Admins only: the calls below show and act on the whole gateway.
fn admin_only(api: &Api, actor: &Actor) -> Result<(), ApiError> {
    if api.approvals.is_admin(&actor.identity) {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::FORBIDDEN,
            format!(
                "{} is not in an admin group of [approvals]",
                actor.identity.subject
            ),
        ))
    }
}

async fn list_sessions(
    State(api): State<Api>,
    actor: Actor,
) -> Result<Json<serde_json::Value>, ApiError> {
    admin_only(&api, &actor)?;
    Ok(Json(json!({ "sessions": api.gateway.live_sessions() })))
}

async fn end_session(
    State(api): State<Api>,
    actor: Actor,
    Path(id): Path<String>,
    OptionalBody(body): OptionalBody<Decision>,
) -> Result<Json<gateway_core::LiveSession>, ApiError> {
    admin_only(&api, &actor)?;
    let reason = body
        .reason
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty());
    let Some(live) = api.gateway.live_sessions().into_iter().find(|s| s.id == id) else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no live session {id}"),
        ));
    };
    if live.ending {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!("session {id} is already being ended"),
        ));
    }
    // Recorded before it takes effect.
    TrailRecorder {
        gateway: &api.gateway,
        actor: &actor,
    }
    .record(
        Some(&live.target),
        AuditEvent::AdminAction {
            action: "session_ended",
            id: id.clone(),
            reason: reason.clone(),
            detail: json!({ "subject": live.subject, "client": live.client, "protocol": live.protocol }),
        },
    )
    .await
    .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, e.message))?;
    let why = format!(
        "ended by {}{}",
        actor.identity.subject,
        reason.map(|r| format!(": {r}")).unwrap_or_default()
    );
    api.gateway
        .end_session(&id, &why)
        .map(Json)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no live session {id}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    subject: Option<String>,
    target: Option<String>,
    event: Option<String>,
    verdict: Option<String>,
    node: Option<String>,
    text: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<usize>,
}

/// `since` / `until`, read as `portcullis audit search` reads them.
fn time_arg(key: &str, text: &str) -> Result<std::time::SystemTime, ApiError> {
    audit::parse_time(text).map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("`{key}`: {e}")))
}

async fn search_audit(
    State(api): State<Api>,
    actor: Actor,
    Params(q): Params<AuditQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    admin_only(&api, &actor)?;
    let filter = audit::SearchFilter {
        node: q.node,
        subject: q.subject,
        target: q.target,
        since: q
            .since
            .as_deref()
            .map(|t| time_arg("since", t))
            .transpose()?,
        until: q
            .until
            .as_deref()
            .map(|t| time_arg("until", t))
            .transpose()?,
        event: q.event,
        verdict: q.verdict,
        text: q.text,
    };
    // The sink `portcullis audit search` reads.
    let chosen = api.audit.search_sink().cloned().ok_or_else(|| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "no audit sink is configured".into(),
        )
    })?;
    let unavailable =
        |e: audit::SinkError| ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
    let sink = audit::open_sink(&chosen, audit::OpenMode::Read)
        .await
        .map_err(unavailable)?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let found = audit::search(&*sink, &filter, limit)
        .await
        .map_err(unavailable)?;
    let records: Vec<serde_json::Value> = found
        .iter()
        .map(|r| {
            let payload: serde_json::Value =
                serde_json::from_slice(&r.payload).unwrap_or(serde_json::Value::Null);
            json!({ "node": r.node, "seq": r.seq, "hash": r.hash.to_hex(), "record": payload })
        })
        .collect();
    Ok(Json(json!({ "records": records })))
}

async fn show_policy(
    State(api): State<Api>,
    actor: Actor,
) -> Result<Json<serde_json::Value>, ApiError> {
    admin_only(&api, &actor)?;
    Ok(Json(match &api.policy {
        Some(engine) => json!({ "policy": engine.rules() }),
        None => json!({
            "policy": null,
            "note": "no [policy]: every authenticated identity has read-write access to every target and may run any statement",
        }),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExplainRequest {
    subject: String,
    #[serde(default)]
    groups: Vec<String>,
    target: String,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    default_schema: Option<String>,
    sql: String,
}

async fn explain_policy(
    State(api): State<Api>,
    actor: Actor,
    Body(req): Body<ExplainRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    admin_only(&api, &actor)?;
    let Some(engine) = &api.policy else {
        return Err(ApiError(
            StatusCode::CONFLICT,
            "no [policy] is configured: every authenticated identity may run anything".into(),
        ));
    };
    let target = api
        .gateway
        .targets()
        .iter()
        .find(|t| {
            t.name == req.target
                && req
                    .protocol
                    .as_deref()
                    .is_none_or(|p| t.protocol.as_str() == p)
        })
        .cloned()
        .ok_or_else(|| {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!(
                    "`target`: \"{}\" is not a target of this gateway",
                    req.target
                ),
            )
        })?;
    let identity = Identity {
        subject: req.subject,
        groups: req.groups,
        auth_method: gateway_core::AuthMethod::Jwt,
        claims: Default::default(),
    };
    let settings = gateway_core::SqlSettings {
        default_schema: req.default_schema.as_deref().map(Arc::from),
        ..gateway_core::SqlSettings::default()
    };
    let explanation = engine.explain(&identity, &target, &settings, &req.sql);
    Ok(Json(serde_json::to_value(&explanation).unwrap_or_default()))
}
