//! The HTTP interface: the FHIR REST API under `/fhir`, the feeds under
//! `/ingest`, `/quarantine`, `/routing`, and `/healthz`, `/readyz`, `/metrics`. Handlers parse and check requests, call the [`Store`], and shape
//! FHIR responses; they hold no state of their own.

pub mod bundle;
pub mod capability;
pub mod error;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod operation;
pub mod outcomes;
pub mod quarantine;
pub mod rest;
pub mod routing;

use crate::config::{GpLists, Http};
use crate::fhir::outcome::Issue;
use crate::hl7v2::ingest::Feed;
use crate::store::Store;
use crate::validate::Validator;
use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use error::ApiError;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub http: Arc<Http>,
    /// Set once shutdown has begun: `/readyz` then says 503.
    pub draining: Arc<AtomicBool>,
    /// Base R4 and the enforced profiles: every write passes through it.
    pub validator: Arc<Validator>,
    pub gp_lists: Arc<GpLists>,
    /// The HL7 v2 ADT feed (shared with the MLLP listener).
    pub hl7v2: Arc<Feed>,
    /// Largest single HL7 message in `POST /ingest/hl7v2`.
    pub hl7v2_max_bytes: usize,
    /// The router and delivery scheduler.
    pub routing: Arc<crate::routing::Routing>,
    /// The care-home register (residents, for routing and outcomes).
    pub register: Arc<crate::routing::care_homes::Register>,
    /// Outcome definitions.
    pub outcomes: Arc<crate::outcomes::Settings>,
}

/// The whole HTTP application.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/fhir/metadata", get(capability::metadata))
        .route("/fhir", axum::routing::post(bundle::transaction_or_batch))
        .route("/fhir/", axum::routing::post(bundle::transaction_or_batch))
        .route(
            "/fhir/{type}",
            get(rest::search)
                .post(rest::create)
                .put(rest::conditional_update),
        )
        .route(
            "/fhir/{type}/$validate",
            axum::routing::post(operation::validate),
        )
        .route("/fhir/{type}/{id}", get(rest::read).put(rest::update))
        .route("/fhir/{type}/{id}/_history", get(rest::history))
        .route("/fhir/{type}/{id}/_history/{version}", get(rest::vread))
        .route(
            "/ingest/gp-risk-list",
            axum::routing::post(ingest::gp_risk_list),
        )
        .route("/ingest/hl7v2", axum::routing::post(ingest::hl7v2))
        .route("/quarantine", get(quarantine::list))
        .route(
            "/quarantine/{id}/replay",
            axum::routing::post(quarantine::replay),
        )
        .route(
            "/quarantine/{id}/discard",
            axum::routing::post(quarantine::discard),
        )
        .route("/routing/deliveries", get(routing::list))
        .route(
            "/routing/deliveries/retry",
            axum::routing::post(routing::retry_dead),
        )
        .route("/routing/deliveries/{id}", get(routing::read))
        .route(
            "/routing/deliveries/{id}/retry",
            axum::routing::post(routing::retry),
        )
        .route("/metrics", get(metrics::metrics))
        .route("/outcomes/report", get(outcomes::report_json))
        .route("/outcomes", get(outcomes::dashboard_html))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(log_request))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(on_panic))
        .with_state(state)
}

async fn healthz() -> impl IntoResponse {
    (
        StatusCode::OK,
        axum::Json(serde_json::json!({"status": "ok"})),
    )
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.draining.load(Ordering::Relaxed) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"status": "draining"})),
        )
            .into_response();
    }
    match state.store.check().await {
        Ok(()) => (
            StatusCode::OK,
            axum::Json(serde_json::json!({"status": "ready"})),
        )
            .into_response(),
        Err(err) => {
            tracing::warn!(error = %err, "not ready");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(serde_json::json!({"status": "store unavailable"})),
            )
                .into_response()
        }
    }
}

async fn not_found(request: Request) -> ApiError {
    ApiError::not_found(format!("there is nothing at {}", request.uri().path()))
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        Issue::error(
            "not-supported",
            format!(
                "{} is not supported at {}",
                request.method(),
                request.uri().path()
            ),
        ),
    )
}

/// One log line per request, naming the route template, never the URL: URLs
/// carry NHS numbers in search parameters.
async fn log_request(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let micros = started.elapsed().as_micros() as u64;
    if status >= 500 {
        tracing::warn!(%method, route, status, micros, "request failed");
    } else {
        tracing::debug!(%method, route, status, micros, "request");
    }
    response
}

fn on_panic(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        Issue::error(
            "exception",
            "internal error; the cause is in the gateway's log",
        ),
    )
    .into_response()
}
