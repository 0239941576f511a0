//! `GET /metrics`, in the Prometheus text format (version 0.0.4): what the
//! router and deliveries did, what the HL7 v2 feed answered, and what is
//! held in quarantine.

use super::AppState;
use crate::store::StoreError;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

pub async fn metrics(State(state): State<AppState>) -> Response {
    let mut out = String::new();
    state.routing.render_metrics(&mut out).await;
    state.hl7v2.render_metrics(&mut out);
    render_held(&mut out, state.store.held_counts().await);
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

/// `pathway_quarantine_held`: every interface's source, with none held
/// shown as 0 so that an alert on it has a series to watch. Left out if the
/// store cannot say (the other metrics still answer).
fn render_held(out: &mut String, counts: Result<Vec<(String, i64)>, StoreError>) {
    use std::fmt::Write;
    let counts = match counts {
        Ok(counts) => counts,
        Err(err) => {
            tracing::warn!(error = %err, "quarantine counts unavailable for /metrics");
            return;
        }
    };
    let mut sources = counts;
    for known in [
        crate::gp::ingest::SOURCE,
        crate::store::SOURCE_HL7V2_MLLP,
        crate::store::SOURCE_HL7V2_HTTP,
    ] {
        if !sources.iter().any(|(s, _)| s == known) {
            sources.push((known.to_string(), 0));
        }
    }
    sources.sort();
    out.push_str(
        "# HELP pathway_quarantine_held Inputs held in quarantine, by the interface they came in on.\n\
         # TYPE pathway_quarantine_held gauge\n",
    );
    for (source, count) in sources {
        let _ = writeln!(
            out,
            "pathway_quarantine_held{{source=\"{source}\"}} {count}"
        );
    }
}
