//! A real pathway-service receiver on loopback: takes `POST /fhir/{type}`,
//! records what came (headers, body, what it answered) and answers as the
//! test scripts it: fail the next N, refuse some, stall some, or accept.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// How the receiver answers.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Statuses for the next requests, in order; then `status`.
    pub next: VecDeque<u16>,
    pub status: u16,
    /// A `Retry-After` header on non-2xx answers.
    pub retry_after: Option<String>,
    /// Requests whose body contains the text get this status instead.
    pub refuse_containing: Vec<(String, u16)>,
    /// Requests whose body contains the text are answered only after this.
    pub stall_containing: Vec<(String, Duration)>,
}

impl Default for Plan {
    fn default() -> Self {
        Plan {
            next: VecDeque::new(),
            status: 201,
            retry_after: None,
            refuse_containing: Vec::new(),
            stall_containing: Vec::new(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Received {
    pub resource_type: String,
    pub idempotency_key: String,
    pub correlation_id: String,
    pub authorization: Option<String>,
    pub content_type: String,
    pub headers: HeaderMap,
    pub body: Value,
    pub answered: u16,
    pub at: Instant,
}

impl Received {
    pub fn accepted(&self) -> bool {
        (200..300).contains(&self.answered)
    }
}

#[derive(Default)]
struct Shared {
    plan: Mutex<Plan>,
    log: Mutex<Vec<Received>>,
    changed: Notify,
    /// TLS handshakes that failed (a TLS receiver only).
    tls_failures: std::sync::atomic::AtomicUsize,
    /// Idempotency keys of the requests that have arrived, answered or not
    /// (a stalled one is recorded in `log` only when it is answered).
    arrived: Mutex<Vec<String>>,
}

/// A TLS receiver's certificate, and the CA its clients must have
/// certificates from (mutual TLS) if any.
pub struct Tls {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    pub client_ca: Option<std::path::PathBuf>,
}

pub struct Receiver {
    /// `http://127.0.0.1:PORT/fhir`
    pub base: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    pub async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Receiver::start_on(listener).await
    }

    pub async fn start_on(listener: TcpListener) -> Receiver {
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(Shared::default());
        let app = axum::Router::new()
            .route("/fhir/{type}", axum::routing::post(receive))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            base: format!("http://{addr}/fhir"),
            shared,
            task,
        }
    }

    /// An HTTPS receiver (rustls), requiring client certificates when
    /// `tls.client_ca` is set.
    pub async fn start_tls(tls: Tls) -> Receiver {
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
        use tokio_rustls::rustls::{self, RootCertStore, server::WebPkiClientVerifier};
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let certs: Vec<CertificateDer> = CertificateDer::pem_file_iter(&tls.cert)
            .expect("server certificate")
            .map(|c| c.expect("PEM certificate"))
            .collect();
        let key = PrivateKeyDer::from_pem_file(&tls.key).expect("server key");
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("TLS versions");
        let builder = match &tls.client_ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for cert in CertificateDer::pem_file_iter(ca).expect("client CA") {
                    roots
                        .add(cert.expect("PEM certificate"))
                        .expect("CA certificate");
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .expect("client verifier");
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder
            .with_single_cert(certs, key)
            .expect("server TLS config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(Shared::default());
        let app = axum::Router::new()
            .route("/fhir/{type}", axum::routing::post(receive))
            .with_state(shared.clone());
        let counts = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, app, counts) = (acceptor.clone(), app.clone(), counts.clone());
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        counts
                            .tls_failures
                            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        return;
                    };
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver {
            base: format!("https://{addr}/fhir"),
            shared,
            task,
        }
    }

    /// The idempotency keys of every request that has arrived, in order.
    pub fn arrived(&self) -> Vec<String> {
        self.shared.arrived.lock().unwrap().clone()
    }

    pub fn tls_failures(&self) -> usize {
        self.shared
            .tls_failures
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn plan(&self, change: impl FnOnce(&mut Plan)) {
        change(&mut self.shared.plan.lock().unwrap());
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared.log.lock().unwrap().clone()
    }

    pub fn accepted(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(Received::accepted)
            .collect()
    }

    /// Waits until `done` holds for what was received, or panics after
    /// `timeout` naming `what` and what did arrive.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let changed = self.shared.changed.notified();
            let log = self.received();
            if done(&log) {
                return log;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let seen: Vec<_> = log
                    .iter()
                    .map(|r| format!("{} {} -> {}", r.resource_type, r.body["id"], r.answered))
                    .collect();
                panic!("timed out waiting for {what}; received: {seen:#?}");
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(200)), changed).await;
        }
    }
}

async fn receive(
    State(shared): State<Arc<Shared>>,
    Path(resource_type): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    shared.arrived.lock().unwrap().push(key);
    let text = String::from_utf8_lossy(&body).into_owned();
    let (status, retry_after, stall) = {
        let mut plan = shared.plan.lock().unwrap();
        let stall = plan
            .stall_containing
            .iter()
            .find(|(needle, _)| text.contains(needle.as_str()))
            .map(|(_, d)| *d);
        let refused = plan
            .refuse_containing
            .iter()
            .find(|(needle, _)| text.contains(needle.as_str()))
            .map(|(_, s)| *s);
        let status = match refused {
            Some(status) => status,
            None => plan.next.pop_front().unwrap_or(plan.status),
        };
        (status, plan.retry_after.clone(), stall)
    };
    if let Some(stall) = stall {
        tokio::time::sleep(stall).await;
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let received = Received {
        resource_type,
        idempotency_key: header("idempotency-key").unwrap_or_default(),
        correlation_id: header("x-correlation-id").unwrap_or_default(),
        authorization: header("authorization"),
        content_type: header("content-type").unwrap_or_default(),
        headers: headers.clone(),
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        answered: status,
        at: Instant::now(),
    };
    shared.log.lock().unwrap().push(received);
    shared.changed.notify_waiters();
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if code.is_success() {
        return (code, [("content-type", "application/fhir+json")], text).into_response();
    }
    let outcome = json!({"resourceType": "OperationOutcome", "issue": [{
        "severity": "error", "code": "processing", "diagnostics": format!("test receiver answered {status}")
    }]});
    let mut response = (
        code,
        [("content-type", "application/fhir+json")],
        outcome.to_string(),
    )
        .into_response();
    if let Some(after) = retry_after
        && let Ok(value) = after.parse()
    {
        response.headers_mut().insert("retry-after", value);
    }
    response
}
