//! Sending one delivery: an HTTPS POST of the resource version to
//! `{url}/{resourceType}` over rustls, and what the answer means.

use super::hours::Hours;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Longest part of an answer kept with a delivery.
const KEEP_RESPONSE_BYTES: usize = 4096;

/// `[destinations.NAME]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    /// FHIR base: resources are POSTed to `{url}/{resourceType}`.
    pub url: String,
    /// `HH:MM-HH:MM`, Europe/London; deliveries wait until it opens.
    #[serde(default)]
    pub hours: Option<String>,
    /// PEM file of the CA certificates to trust for this destination, instead
    /// of the system's.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// PEM files of a client certificate (chain) and its private key.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// Sent as `Authorization: Bearer …`.
    #[serde(default)]
    pub bearer_token: Option<String>,
    /// Further headers on every request (`X-Api-Key = "…"`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Time allowed for one attempt, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Attempts in flight at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
}

fn default_timeout_ms() -> u64 {
    10_000
}

fn default_concurrency() -> usize {
    32
}

/// A destination ready to send to.
#[derive(Debug, Clone)]
pub struct Destination {
    pub name: String,
    /// The base URL without a trailing `/`.
    pub base: String,
    pub hours: Option<Hours>,
    pub concurrency: usize,
    client: reqwest::Client,
    headers: HeaderMap,
}

impl Destination {
    /// Checks the configuration and reads the certificate files. Errors name
    /// the destination and the key.
    pub fn build(name: &str, config: &DestinationConfig) -> Result<Destination, String> {
        let at = |key: &str| format!("destinations.{name}.{key}");
        let url = reqwest::Url::parse(&config.url)
            .map_err(|err| format!("{}: `{}` is not a URL: {err}", at("url"), config.url))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "{}: `{}` is not http or https",
                at("url"),
                config.url
            ));
        }
        let hours = config
            .hours
            .as_deref()
            .map(Hours::parse)
            .transpose()
            .map_err(|err| format!("{}: {err}", at("hours")))?;
        if config.timeout_ms == 0 {
            return Err(format!("{}: must be above 0", at("timeout_ms")));
        }
        if config.concurrency == 0 {
            return Err(format!("{}: must be above 0", at("concurrency")));
        }
        let timeout = Duration::from_millis(config.timeout_ms);
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            // A redirected POST would turn into a GET: a redirect is an
            // answer to look at, not to follow.
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(config.concurrency)
            .user_agent(concat!("pathway-gateway/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &config.ca {
            let pem = std::fs::read(ca)
                .map_err(|err| format!("{}: cannot read {}: {err}", at("ca"), ca.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|err| {
                format!(
                    "{}: {} is not PEM certificates: {err}",
                    at("ca"),
                    ca.display()
                )
            })?;
            if certs.is_empty() {
                return Err(format!(
                    "{}: {} holds no certificate",
                    at("ca"),
                    ca.display()
                ));
            }
            builder = builder.tls_certs_only(certs);
        }
        match (&config.client_cert, &config.client_key) {
            (Some(cert), Some(key)) => {
                let mut pem = std::fs::read(cert).map_err(|err| {
                    format!(
                        "{}: cannot read {}: {err}",
                        at("client_cert"),
                        cert.display()
                    )
                })?;
                pem.push(b'\n');
                pem.extend(std::fs::read(key).map_err(|err| {
                    format!("{}: cannot read {}: {err}", at("client_key"), key.display())
                })?);
                let identity = reqwest::Identity::from_pem(&pem).map_err(|err| {
                    format!(
                        "{}: {} and {} are not a PEM certificate and key: {err}",
                        at("client_cert"),
                        cert.display(),
                        key.display()
                    )
                })?;
                builder = builder.identity(identity);
            }
            (None, None) => {}
            _ => {
                return Err(format!(
                    "{}: client_cert and client_key go together",
                    at("client_cert")
                ));
            }
        }
        let mut headers = HeaderMap::new();
        for (key, value) in &config.headers {
            let name = HeaderName::try_from(key.as_str())
                .map_err(|_| format!("{}: `{key}` is not a header name", at("headers")))?;
            let value = HeaderValue::try_from(value.as_str())
                .map_err(|_| format!("{}.{key}: not a valid header value", at("headers")))?;
            headers.insert(name, value);
        }
        if let Some(token) = &config.bearer_token {
            let mut value = HeaderValue::try_from(format!("Bearer {token}"))
                .map_err(|_| format!("{}: not a valid header value", at("bearer_token")))?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let client = builder
            .build()
            .map_err(|err| format!("destinations.{name}: cannot set up its HTTP client: {err}"))?;
        Ok(Destination {
            name: name.to_string(),
            base: config.url.trim_end_matches('/').to_string(),
            hours,
            concurrency: config.concurrency,
            client,
            headers,
        })
    }
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx.
    Delivered { status: u16 },
    /// 408, 409, 423, 425, 429, 5xx, a timeout or a connection failure: try again later
    /// (no sooner than `retry_after`, when the answer said).
    Retry {
        status: Option<u16>,
        error: String,
        retry_after_ms: Option<i64>,
        response: Option<String>,
    },
    /// Any other answer: trying again would get the same.
    Refused {
        status: u16,
        error: String,
        response: String,
    },
}

/// The request headers that identify a delivery.
pub struct Request<'a> {
    pub resource_type: &'a str,
    pub body: String,
    pub idempotency_key: &'a str,
    pub correlation_id: &'a str,
}

pub async fn attempt(destination: &Destination, request: Request<'_>, now_ms: i64) -> Outcome {
    let url = format!("{}/{}", destination.base, request.resource_type);
    let sent = destination
        .client
        .post(&url)
        .headers(destination.headers.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/fhir+json")
        .header(reqwest::header::ACCEPT, "application/fhir+json")
        .header("Idempotency-Key", request.idempotency_key)
        .header("X-Correlation-ID", request.correlation_id)
        .body(request.body)
        .send()
        .await;
    let mut response = match sent {
        Ok(response) => response,
        Err(err) => {
            let error = if err.is_timeout() {
                format!("no answer from {url} in time")
            } else if err.is_connect() {
                format!("cannot connect to {url}: {}", source_chain(&err))
            } else {
                format!("sending to {url} failed: {}", source_chain(&err))
            };
            return Outcome::Retry {
                status: None,
                error,
                retry_after_ms: None,
                response: None,
            };
        }
    };
    let status = response.status();
    let retry_after_ms = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| retry_after(v, now_ms));
    let location = response
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    // Keep the start of the answer; stop reading there.
    let mut kept = Vec::new();
    let mut body_error = None;
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = KEEP_RESPONSE_BYTES.saturating_sub(kept.len());
                kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if kept.len() >= KEEP_RESPONSE_BYTES {
                    break;
                }
            }
            Ok(None) => break,
            Err(err) => {
                body_error = Some(err);
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&kept).into_owned();
    let code = status.as_u16();
    if status.is_success() {
        // A 2xx whose body broke off is still an accepted delivery.
        return Outcome::Delivered { status: code };
    }
    if let Some(err) = body_error {
        return Outcome::Retry {
            status: Some(code),
            error: format!("{url} answered {status} and then failed: {err}"),
            retry_after_ms,
            response: Some(text),
        };
    }
    // 408 and 429 by definition; 409 and 425 are what a receiver that
    // honours Idempotency-Key answers while the first request with the key
    // is still being processed; 423 is a resource locked for now.
    if matches!(code, 408 | 409 | 423 | 425 | 429) || status.is_server_error() {
        return Outcome::Retry {
            status: Some(code),
            error: format!("{url} answered {status}"),
            retry_after_ms,
            response: Some(text),
        };
    }
    // 401 and 403 are about who is sending (an expired token, a client
    // certificate not yet allowed), not about this resource: every
    // delivery to the destination gets them until its setup is put right,
    // and then each goes without a manual retry (within `max_attempts`).
    if matches!(code, 401 | 403) {
        return Outcome::Retry {
            status: Some(code),
            error: format!(
                "{url} answered {status}: the destination refused the gateway's credentials (check its bearer_token, headers or client certificate)"
            ),
            retry_after_ms,
            response: Some(text),
        };
    }
    let error = match (status.is_redirection(), location) {
        (true, Some(to)) => format!(
            "{url} answered {status}, redirecting to {to}; redirects are not followed: set the destination's url"
        ),
        _ => format!("{url} answered {status}"),
    };
    Outcome::Refused {
        status: code,
        error,
        response: text,
    }
}

/// `Retry-After` as a delay in ms: delta-seconds or an HTTP-date.
pub fn retry_after(value: &str, now_ms: i64) -> Option<i64> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<i64>() {
        return (seconds >= 0).then(|| seconds.saturating_mul(1000));
    }
    let date = jiff::fmt::rfc2822::parse(value).ok()?;
    Some((date.timestamp().as_millisecond() - now_ms).max(0))
}

/// An error and its causes, each once (reqwest's own message is terse).
fn source_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_and_http_dates() {
        let now = "2026-11-22T10:00:00Z"
            .parse::<jiff::Timestamp>()
            .unwrap()
            .as_millisecond();
        assert_eq!(retry_after("120", now), Some(120_000));
        assert_eq!(
            retry_after("Sun, 22 Nov 2026 10:00:30 GMT", now),
            Some(30_000)
        );
        assert_eq!(retry_after("Sun, 22 Nov 2026 09:00:00 GMT", now), Some(0));
        assert_eq!(retry_after("-5", now), None);
        assert_eq!(retry_after("soon", now), None);
    }

    fn config(url: &str) -> DestinationConfig {
        toml::from_str(&format!("url = \"{url}\"")).unwrap()
    }

    #[test]
    fn destinations_are_checked_naming_the_key() {
        let err = Destination::build("mdt", &config("ftp://x")).unwrap_err();
        assert!(err.starts_with("destinations.mdt.url"), "{err}");
        let mut bad = config("https://x.example/fhir/");
        bad.hours = Some("8am-8pm".into());
        let err = Destination::build("mdt", &bad).unwrap_err();
        assert!(err.starts_with("destinations.mdt.hours"), "{err}");
        let mut bad = config("https://x.example/fhir/");
        bad.client_cert = Some("/nonexistent.pem".into());
        let err = Destination::build("mdt", &bad).unwrap_err();
        assert!(err.contains("go together"), "{err}");
        let mut bad = config("https://x.example/fhir/");
        bad.ca = Some("/nonexistent/ca.pem".into());
        let err = Destination::build("mdt", &bad).unwrap_err();
        assert!(err.starts_with("destinations.mdt.ca: cannot read"), "{err}");
        let good = Destination::build("mdt", &config("https://x.example/fhir/")).unwrap();
        assert_eq!(good.base, "https://x.example/fhir");
    }
}
