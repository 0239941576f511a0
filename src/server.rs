//! Running the gateway: open the store, serve HTTP until told to stop, then
//! drain in-flight requests (within a grace period) and close the store.

use crate::api::{AppState, app};
use crate::config::Config;
use crate::hl7v2::Frame;
use crate::hl7v2::ingest::{Feed, SOURCE_MLLP};
use crate::hl7v2::listener::{self, AckFuture, Handler, ListenerConfig};
use crate::store::sqlite::SqliteStore;
use crate::store::{Store, StoreError};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::TcpListener;

/// Why serving stopped. The cause is the error's source, which `{:#}`
/// (as `main` logs it) prints after the message.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot open the store")]
    Store(#[from] StoreError),
    #[error("HTTP server error")]
    Io(#[from] std::io::Error),
}

/// Serves the gateway on `listener` (HTTP), and MLLP on the configured
/// address unless it is turned off, until `shutdown` completes.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let mllp = match config.hl7v2.listen {
        Some(addr) => Some(TcpListener::bind(addr).await.map_err(|err| {
            std::io::Error::new(
                err.kind(),
                format!("cannot listen for MLLP on {addr}: {err}"),
            )
        })?),
        None => None,
    };
    run_with(config, listener, mllp, shutdown).await
}

/// As [`run`], with the MLLP listener given (or none).
pub async fn run_with(
    config: Config,
    listener: TcpListener,
    mllp: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    // Only versions of types some rule or trigger looks at go through the
    // outbox.
    let mut options = config.store.clone();
    options.outbox_types = Some(config.routing.routed_types());
    let store = Arc::new(SqliteStore::open_serving(options)?);
    let draining = Arc::new(AtomicBool::new(false));
    let feed = Arc::new(Feed::new(
        store.clone(),
        config.validator.clone(),
        config.hl7v2.cx.clone(),
    ));
    let routing = Arc::new(
        crate::routing::Routing::start(&config.routing, store.clone(), config.validator.clone())
            .await?,
    );
    let state = AppState {
        routing: routing.clone(),
        store: store.clone(),
        http: Arc::new(config.http.clone()),
        draining: draining.clone(),
        validator: config.validator.clone(),
        gp_lists: Arc::new(config.gp_lists.clone()),
        register: config.routing.register.clone(),
        outcomes: Arc::new(config.outcomes.clone()),
        hl7v2: feed.clone(),
        hl7v2_max_bytes: config.hl7v2.max_message_bytes,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    {
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
    }
    let addr = listener.local_addr()?;
    let mllp_addr = match &mllp {
        Some(mllp) => mllp.local_addr()?.to_string(),
        None => "off".to_string(),
    };
    let mllp_task = match mllp {
        Some(mllp) => {
            let mut stopped = stop_rx.clone();
            let options = ListenerConfig {
                max_frame: config.hl7v2.max_message_bytes,
                idle_timeout: config.hl7v2.idle_timeout,
                frame_timeout: config.hl7v2.frame_timeout,
                max_connections: config.hl7v2.max_connections,
                drain_timeout: config.http.shutdown_grace,
            };
            let handler: Arc<dyn Handler> = Arc::new(MllpHandler(feed.clone()));
            Some(tokio::spawn(listener::serve(
                mllp,
                options,
                handler,
                async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                },
            )))
        }
        None => None,
    };
    tracing::info!(%addr, mllp = %mllp_addr, data = %config.store.dir.display(), "pathway-gateway listening");

    let mut stopped = stop_rx.clone();
    let server = axum::serve(listener, app(state)).with_graceful_shutdown(async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    });
    let mut grace = stop_rx;
    let grace_period = config.http.shutdown_grace;
    let served = tokio::select! {
        result = server => result,
        _ = async move {
            let _ = grace.wait_for(|stop| *stop).await;
            draining.store(true, Ordering::Relaxed);
            tracing::info!(grace_secs = grace_period.as_secs(), "shutting down: draining in-flight requests");
            tokio::time::sleep(grace_period).await;
        } => {
            tracing::warn!("grace period over; closing with requests still in flight");
            Ok(())
        }
    };
    // An HTTP server that failed stops the MLLP listener too, which drains
    // before the store closes: the same way out as a shutdown.
    if served.is_err() {
        let _ = stop_tx.send(true);
    }
    if let Some(task) = mllp_task {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::error!(error = %err, "MLLP listener failed"),
            Err(err) => tracing::error!(error = %err, "MLLP listener task failed"),
        }
    }
    routing.stop().await;
    store.close().await;
    tracing::info!("store closed; stopped");
    served?;
    Ok(())
}

/// MLLP frames into the ADT feed. Garbage and oversized frames get an `AR`
/// (they cannot be read, so nothing is kept).
struct MllpHandler(Arc<Feed>);

impl Handler for MllpHandler {
    fn opened(&self, _peer: std::net::SocketAddr) {
        self.0.connections(1);
    }

    fn closed(&self, _peer: std::net::SocketAddr) {
        self.0.connections(-1);
    }

    fn handle(&self, frame: Frame, peer: std::net::SocketAddr) -> AckFuture<'_> {
        Box::pin(async move {
            match frame {
                Frame::Message(bytes) => self.0.receive(&bytes, SOURCE_MLLP).await.into_bytes(),
                Frame::TooLarge { discarded, head } => {
                    tracing::warn!(%peer, discarded, "MLLP frame over the size limit");
                    self.0
                        .too_large(
                            &head,
                            &format!(
                                "the message is over the size limit ({discarded} bytes discarded)"
                            ),
                            SOURCE_MLLP,
                        )
                        .into_bytes()
                }
                Frame::Garbage(bytes) => {
                    tracing::warn!(%peer, bytes = bytes.len(), "bytes outside an MLLP frame");
                    self.0
                        .unreadable(
                            "bytes outside an MLLP frame (0x0B ... 0x1C 0x0D)",
                            SOURCE_MLLP,
                        )
                        .into_bytes()
                }
            }
        })
    }
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
