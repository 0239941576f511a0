//! `pathway-gateway replay DIR --to URL`: sends a folder of test inputs (or
//! one file) to a running gateway, file by file in name order, the way
//! their senders would.
//!
//! - `.hl7`: each message over MLLP (`mllp://host:port`), waiting for its
//!   ACK, or in one `POST /ingest/hl7v2` per file (`http://host:port`);
//! - `.csv`: `POST /ingest/gp-risk-list?practice=…` (HTTP only; needs
//!   `--practice`);
//! - `.json`, `.ndjson`: FHIR resources, a Bundle to `POST /fhir`, anything
//!   else to `POST /fhir/{resourceType}` (HTTP only).
//!
//! Golden expectations (`*.expected.json`) are passed over; other files
//! are skipped and listed as such. Every file is checked against the
//! target before anything is sent, so a replay refused (a CSV over MLLP, a
//! CSV without `--practice`) has sent nothing.

use crate::api::ingest::{before_first_message, message_starts, split_messages};
use crate::hl7v2::client::MllpClient;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `host:port` of an MLLP listener.
    Mllp(String),
    /// Base URL of the HTTP API (no trailing slash).
    Http(String),
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, String> {
        if let Some(addr) = url.strip_prefix("mllp://") {
            return Ok(Target::Mllp(addr.trim_end_matches('/').to_string()));
        }
        if url.starts_with("http://") || url.starts_with("https://") {
            return Ok(Target::Http(url.trim_end_matches('/').to_string()));
        }
        Err(format!(
            "{url:?} is neither mllp://host:port nor http://host:port"
        ))
    }
}

/// One thing sent and what came back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub file: PathBuf,
    /// MSH-10, or the resource type, or the practice.
    pub item: String,
    /// The ACK code (`AA`, `AE`, `AR`) or the HTTP status.
    pub outcome: String,
    pub ok: bool,
}

/// What a replay did: a row per message or resource sent, and the files of
/// the folder it did not know how to send.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replayed {
    pub sent: Vec<Sent>,
    pub skipped: Vec<PathBuf>,
}

/// How long a connection, an ACK, or an HTTP request (of at most
/// [`HTTP_BATCH`] messages) may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Most HL7 v2 messages of a file in one `POST /ingest/hl7v2`: a capture
/// of thousands is sent in parts, each answered well within [`TIMEOUT`]
/// (the gateway answers each message after its commit is synced).
const HTTP_BATCH: usize = 500;

/// What a file is sent as, from its extension (in any case).
fn kind_of(file: &Path, one_file: bool) -> Option<&'static str> {
    let ext = file
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        "hl7" => Some("hl7"),
        "csv" => Some("csv"),
        "json" => Some("json"),
        "ndjson" => Some("ndjson"),
        // A file named alone is sent whatever its name: HL7 v2 unless it
        // says otherwise (captures come as `.txt`, `.msg`, `.dat`).
        _ if one_file => Some("hl7"),
        _ => None,
    }
}

/// Sends every input file of `dir`, or `dir` itself when it is a file (as
/// HL7 v2 unless it is named `.csv`, `.json` or `.ndjson`). A transport
/// failure (no connection, no answer in time) is the last row and stops the
/// replay: what was answered before it is kept. `Err` (nothing sent) for a
/// folder that cannot be read, a CSV or FHIR file with an MLLP target, or a
/// CSV without `practice`.
pub async fn replay(
    dir: &Path,
    target: &Target,
    practice: Option<&str>,
) -> Result<Replayed, String> {
    let one_file = dir.is_file();
    let mut files: Vec<PathBuf> = if one_file {
        vec![dir.to_path_buf()]
    } else {
        std::fs::read_dir(dir)
            .map_err(|err| format!("cannot read {}: {err}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && !p.to_string_lossy().ends_with(".expected.json"))
            .collect()
    };
    // In the order a person reads the names: `adt-2` before `adt-10`.
    files.sort_by(|a, b| natural_order(&a.to_string_lossy(), &b.to_string_lossy()));
    let mut skipped = Vec::new();
    let mut inputs = Vec::new();
    for file in files {
        match kind_of(&file, one_file) {
            None => skipped.push(file),
            Some("hl7") => inputs.push((file, "hl7")),
            Some(kind) if matches!(target, Target::Mllp(_)) => {
                return Err(format!(
                    "{}: only .hl7 files go over MLLP (this is .{kind}); use an http:// URL",
                    file.display()
                ));
            }
            Some("csv") if practice.is_none() => {
                return Err(format!("{}: a CSV needs --practice ODS", file.display()));
            }
            Some(kind) => inputs.push((file, kind)),
        }
    }
    let sent = send_all(inputs, target, practice).await;
    Ok(Replayed { sent, skipped })
}

/// Sends checked inputs in order (see [`replay`]).
async fn send_all(
    inputs: Vec<(PathBuf, &'static str)>,
    target: &Target,
    practice: Option<&str>,
) -> Vec<Sent> {
    let http = reqwest::Client::new();
    let mut mllp: Option<MllpClient> = None;
    let mut sent = Vec::new();
    // A row for what could not be sent or answered; `Err` stops the replay.
    let failed = |file: &Path, item: &str, why: String| Sent {
        file: file.to_path_buf(),
        item: item.to_string(),
        outcome: why,
        ok: false,
    };
    for (file, ext) in inputs {
        let bytes = match std::fs::read(&file) {
            Ok(bytes) => bytes,
            Err(err) => {
                sent.push(failed(&file, "(the file)", format!("cannot read: {err}")));
                continue;
            }
        };
        match (ext, target) {
            ("hl7", Target::Mllp(addr)) => {
                if mllp.is_none() {
                    match MllpClient::connect(addr.as_str(), TIMEOUT).await {
                        Ok(client) => mllp = Some(client),
                        Err(err) => {
                            let why = format!("cannot connect to {addr}: {err}");
                            sent.push(failed(&file, "(connection)", why));
                            return sent;
                        }
                    }
                }
                let Some(client) = mllp.as_mut() else {
                    continue;
                };
                if before_first_message(&bytes).is_some() {
                    sent.push(Sent {
                        file: file.clone(),
                        item: "(bytes before the first MSH segment)".into(),
                        outcome: "not a message, not sent".into(),
                        ok: false,
                    });
                }
                let messages = split_messages(&bytes);
                if messages.is_empty() && before_first_message(&bytes).is_none() {
                    sent.push(failed(&file, "(the file)", "no message in it".into()));
                }
                for (n, message) in messages.into_iter().enumerate() {
                    // ER7 segments end with `\r` on the wire; the bytes are
                    // sent as they are (a Windows-1252 file stays one).
                    let wire = cr_segments(message);
                    match client.send(&wire).await {
                        Ok(ack) => sent.push(from_ack(&file, &ack)),
                        Err(err) => {
                            let item = format!("(message {} of the file)", n + 1);
                            sent.push(failed(&file, &item, format!("no ACK: {err}")));
                            return sent;
                        }
                    }
                }
            }
            ("hl7", Target::Http(base)) => {
                let url = format!("{base}/ingest/hl7v2");
                // The file in parts of at most HTTP_BATCH messages, each
                // part from one message's MSH to the next part's (the first
                // from the file's start: what stands before its first MSH
                // is answered by the gateway).
                let cuts = http_parts(&bytes, HTTP_BATCH);
                for (part, window) in cuts.windows(2).enumerate() {
                    let body = bytes[window[0]..window[1]].to_vec();
                    let item = match cuts.len() {
                        2 => "(the file)".to_string(),
                        _ => format!("(messages from {} of the file)", part * HTTP_BATCH + 1),
                    };
                    let (status, reply) =
                        match post(&http, &url, "x-application/hl7-v2+er7", body).await {
                            Ok(reply) => reply,
                            Err(err) => {
                                sent.push(failed(&file, &item, err));
                                return sent;
                            }
                        };
                    let acks: Vec<&str> =
                        reply.split('\n').filter(|a| a.starts_with("MSH")).collect();
                    // A refused body (400, 413, 415, …) answers no ACK: the
                    // file is a failure, not silently nothing.
                    if !(200..300).contains(&status) || acks.is_empty() {
                        let why: String = reply.chars().take(200).collect();
                        sent.push(failed(&file, &item, format!("HTTP {status}: {why}")));
                    }
                    for ack in acks {
                        sent.push(from_ack(&file, ack.as_bytes()));
                    }
                }
            }
            ("csv", Target::Http(base)) => {
                let practice = practice.unwrap_or_default();
                let url = format!("{base}/ingest/gp-risk-list?practice={practice}");
                match post(&http, &url, "text/csv", bytes).await {
                    Ok((status, _)) => sent.push(status_of(&file, practice, status)),
                    Err(err) => {
                        sent.push(failed(&file, practice, err));
                        return sent;
                    }
                }
            }
            ("json" | "ndjson", Target::Http(base)) => {
                let text = String::from_utf8_lossy(&bytes);
                let resources: Vec<&str> = if ext == "ndjson" {
                    text.lines().filter(|l| !l.trim().is_empty()).collect()
                } else {
                    vec![&text]
                };
                for resource in resources {
                    let ty = serde_json::from_str::<serde_json::Value>(resource)
                        .ok()
                        .and_then(|v| v["resourceType"].as_str().map(str::to_string))
                        .unwrap_or_default();
                    let url = match ty.as_str() {
                        "Bundle" => format!("{base}/fhir"),
                        _ => format!("{base}/fhir/{ty}"),
                    };
                    let body = resource.as_bytes().to_vec();
                    match post(&http, &url, "application/fhir+json", body).await {
                        Ok((status, _)) => sent.push(status_of(&file, &ty, status)),
                        Err(err) => {
                            sent.push(failed(&file, &ty, err));
                            return sent;
                        }
                    }
                }
            }
            // Refused by `replay` before anything was sent.
            _ => {}
        }
    }
    sent
}

/// Where a file's requests over HTTP start and end: at most `batch`
/// messages each, every part from a message's MSH to the next part's first
/// (the first part from the file's start, so what stands before its first
/// MSH goes, and is answered, too).
fn http_parts(bytes: &[u8], batch: usize) -> Vec<usize> {
    let mut cuts: Vec<usize> = message_starts(bytes)
        .into_iter()
        .step_by(batch)
        .skip(1)
        .collect();
    cuts.insert(0, 0);
    cuts.push(bytes.len());
    cuts
}

/// `message` with every line ending (`\r\n`, `\n`) as ER7's `\r`, bytes
/// untouched otherwise.
fn cr_segments(message: &[u8]) -> Vec<u8> {
    let mut wire = Vec::with_capacity(message.len());
    let mut bytes = message.iter().copied().peekable();
    while let Some(b) = bytes.next() {
        match b {
            b'\r' if bytes.peek() == Some(&b'\n') => {}
            b'\n' => wire.push(b'\r'),
            b => wire.push(b),
        }
    }
    wire
}

async fn post(
    http: &reqwest::Client,
    url: &str,
    content_type: &str,
    body: Vec<u8>,
) -> Result<(u16, String), String> {
    let response = http
        .post(url)
        .header("content-type", content_type)
        .timeout(TIMEOUT)
        .body(body)
        .send()
        .await
        .map_err(|err| format!("POST {url}: {err}"))?;
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    Ok((status, text))
}

fn from_ack(file: &Path, ack: &[u8]) -> Sent {
    let text = String::from_utf8_lossy(ack);
    let msa: Vec<&str> = text
        .split('\r')
        .find(|s| s.starts_with("MSA"))
        .map(|s| s.split('|').collect())
        .unwrap_or_default();
    let code = msa.get(1).copied().unwrap_or("?").to_string();
    // Enhanced mode's accept: `CA` without an ERR (with one, the message
    // is held in quarantine).
    let held = text.split('\r').any(|s| s.starts_with("ERR"));
    Sent {
        file: file.to_path_buf(),
        item: msa.get(2).copied().unwrap_or("").to_string(),
        ok: code == "AA" || (code == "CA" && !held),
        outcome: code,
    }
}

fn status_of(file: &Path, item: &str, status: u16) -> Sent {
    Sent {
        file: file.to_path_buf(),
        item: item.to_string(),
        outcome: status.to_string(),
        ok: (200..300).contains(&status),
    }
}

/// Names compared with each run of digits read as a number (`adt-2.hl7`
/// before `adt-10.hl7`), the rest character by character; names equal that
/// way (`a-01`, `a-1`) fall back to their text.
fn natural_order(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let (mut x, mut y) = (a, b);
    loop {
        let (Some(c), Some(d)) = (x.chars().next(), y.chars().next()) else {
            return x.len().cmp(&y.len()).then_with(|| a.cmp(b));
        };
        if c.is_ascii_digit() && d.is_ascii_digit() {
            let digits = |s: &str| s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
            let (m, n) = (digits(x), digits(y));
            let (p, q) = (
                x[..m].trim_start_matches('0'),
                y[..n].trim_start_matches('0'),
            );
            let order = p.len().cmp(&q.len()).then_with(|| p.cmp(q));
            if order != Ordering::Equal {
                return order;
            }
            (x, y) = (&x[m..], &y[n..]);
        } else {
            if c != d {
                return c.cmp(&d);
            }
            (x, y) = (&x[c.len_utf8()..], &y[d.len_utf8()..]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{from_ack, http_parts, natural_order};
    use std::path::Path;

    /// A file of five messages, after a line that is none, in parts of two:
    /// three requests, each starting at an MSH but the first, which starts
    /// at the file's start.
    #[test]
    fn a_capture_goes_over_http_in_parts() {
        let message = |n: usize| format!("MSH|^~\\&|PAS|RJZ|GW|OB|2026||ADT^A08|M{n}|P|2.4\r");
        let file = format!("junk\r{}", (1..=5).map(message).collect::<String>());
        let cuts = http_parts(file.as_bytes(), 2);
        let parts: Vec<&str> = cuts.windows(2).map(|w| &file[w[0]..w[1]]).collect();
        assert_eq!(parts.len(), 3, "{parts:?}");
        assert_eq!(parts.concat(), file);
        assert!(parts[0].starts_with("junk\rMSH") && parts[0].contains("|M2|"));
        assert!(
            parts[1].starts_with("MSH") && parts[1].contains("|M3|") && parts[1].contains("|M4|")
        );
        assert!(parts[2].starts_with("MSH") && parts[2].contains("|M5|"));
        assert_eq!(http_parts(b"", 2), [0, 0]);
        assert_eq!(http_parts(message(1).as_bytes(), 500).len(), 2);
    }

    /// `AA`, or enhanced mode's `CA` without an ERR, is a message taken; a
    /// `CA` with an ERR is one held in quarantine.
    #[test]
    fn an_accept_is_a_message_taken_unless_it_carries_an_error() {
        let row = |ack: &str| {
            let sent = from_ack(Path::new("a.hl7"), ack.as_bytes());
            (sent.outcome, sent.ok)
        };
        let msh = "MSH|^~\\&|GW|OB|PAS|RJZ|2026||ACK^A01^ACK|A1|P|2.4\r";
        assert_eq!(row(&format!("{msh}MSA|AA|M1\r")), ("AA".into(), true));
        assert_eq!(row(&format!("{msh}MSA|CA|M1\r")), ("CA".into(), true));
        let held =
            format!("{msh}MSA|CA|M1|a reason\rERR||PID^1^8|103^Table value not found^HL70357|E\r");
        assert_eq!(row(&held), ("CA".into(), false));
        assert_eq!(row(&format!("{msh}MSA|AE|M1\r")), ("AE".into(), false));
    }

    #[test]
    fn files_are_sent_in_the_order_their_names_read() {
        let mut names = vec![
            "dir/adt-10.hl7",
            "dir/adt-2.hl7",
            "dir/adt-1.hl7",
            "dir/adt-02.hl7",
            "dir/b.hl7",
            "dir/adt-100.hl7",
            "dir/adt.hl7",
            "dir/adt-9a.hl7",
            "dir/adt-9.hl7",
        ];
        names.sort_by(|a, b| natural_order(a, b));
        assert_eq!(
            names,
            [
                "dir/adt-1.hl7",
                "dir/adt-02.hl7",
                "dir/adt-2.hl7",
                "dir/adt-9.hl7",
                "dir/adt-9a.hl7",
                "dir/adt-10.hl7",
                "dir/adt-100.hl7",
                "dir/adt.hl7",
                "dir/b.hl7",
            ]
        );
    }
}
