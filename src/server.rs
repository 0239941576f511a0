//! Running the gateway: open the store, serve HTTP until told to stop, then
//! drain in-flight requests (within a grace period) and close the store.

use crate::api::{AppState, app};
use crate::config::Config;
use crate::store::sqlite::SqliteStore;
use crate::store::{Store, StoreError};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::TcpListener;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    #[error("HTTP server error: {0}")]
    Io(#[from] std::io::Error),
}

/// Serves the gateway on `listener` until `shutdown` completes.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let store = Arc::new(SqliteStore::open(config.store.clone())?);
    let draining = Arc::new(AtomicBool::new(false));
    let state = AppState {
        store: store.clone(),
        http: Arc::new(config.http.clone()),
        draining: draining.clone(),
        validator: config.validator.clone(),
        gp_lists: Arc::new(config.gp_lists.clone()),
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let addr = listener.local_addr()?;
    tracing::info!(%addr, data = %config.store.dir.display(), "pathway-gateway listening");

    let mut stopped = stop_rx.clone();
    let server = axum::serve(listener, app(state)).with_graceful_shutdown(async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    });
    let mut grace = stop_rx;
    let grace_period = config.http.shutdown_grace;
    tokio::select! {
        result = server => result?,
        _ = async move {
            let _ = grace.wait_for(|stop| *stop).await;
            draining.store(true, Ordering::Relaxed);
            tracing::info!(grace_secs = grace_period.as_secs(), "shutting down: draining in-flight requests");
            tokio::time::sleep(grace_period).await;
        } => {
            tracing::warn!("grace period over; closing with requests still in flight");
        }
    }
    store.close().await;
    tracing::info!("store closed; stopped");
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
