//! The one error type of the HTTP edge: every failure becomes an
//! OperationOutcome with the right status. Faults of the sender are answered
//! in detail; faults of the gateway are logged and answered vaguely.

use crate::fhir::outcome::{Issue, operation_outcome};
use crate::fhir::resource::Rejection;
use crate::store::{MutationError, StoreError};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub issues: Vec<Issue>,
}

impl ApiError {
    pub fn new(status: StatusCode, issue: Issue) -> Self {
        ApiError {
            status,
            issues: vec![issue],
        }
    }

    pub fn bad_request(issue: Issue) -> Self {
        Self::new(StatusCode::BAD_REQUEST, issue)
    }

    pub fn not_found(diagnostics: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            Issue::error("not-found", diagnostics),
        )
    }

    /// A failed mutation: 412 for If-Match and multiple matches, 409 for two
    /// entries of a transaction changing one resource, an id already in
    /// use or a create raced by another, 400 otherwise.
    pub fn from_mutation(error: &MutationError, expression: Option<String>) -> Self {
        let status = match error {
            MutationError::VersionConflict { .. } | MutationError::MultipleMatches => {
                StatusCode::PRECONDITION_FAILED
            }
            MutationError::Conflict(_) => StatusCode::BAD_REQUEST,
            MutationError::SameResource { .. }
            | MutationError::IdInUse(_)
            | MutationError::CreatedMeanwhile(_) => StatusCode::CONFLICT,
        };
        let code = match error {
            MutationError::VersionConflict { .. } => "conflict",
            MutationError::MultipleMatches => "multiple-matches",
            MutationError::Conflict(_) => "invalid",
            MutationError::SameResource { .. }
            | MutationError::IdInUse(_)
            | MutationError::CreatedMeanwhile(_) => "conflict",
        };
        let mut issue = Issue::error(code, error.to_string());
        if let Some(expression) = expression {
            issue = issue.at(expression);
        }
        Self::new(status, issue)
    }
}

impl From<Rejection> for ApiError {
    fn from(rejection: Rejection) -> Self {
        let status = match &rejection {
            Rejection::Malformed(_) => StatusCode::BAD_REQUEST,
            Rejection::UnsupportedType(_) => StatusCode::NOT_FOUND,
            Rejection::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
        };
        ApiError {
            status,
            issues: rejection.issues(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Closed => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                Issue::error(
                    "transient",
                    "the gateway is shutting down; try again shortly",
                ),
            ),
            other => {
                tracing::error!(error = %other, "store failure");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Issue::error(
                        "exception",
                        "the gateway could not complete the request; nothing was stored; the cause is in the gateway's log",
                    ),
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        super::http::fhir_json(self.status, operation_outcome(&self.issues).to_string())
    }
}
