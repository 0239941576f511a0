//! The real binary, killed with SIGKILL under load and stopped with SIGTERM:
//! every write that was acknowledged is there after a restart.

mod common;

use common::{nhs_number, patient};
use reqwest::StatusCode;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

struct Binary {
    child: Child,
    fhir: String,
    mllp: String,
}

/// A test that fails part-way leaves no gateway running on its deleted
/// store.
impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `pathway-gateway serve` on a free loopback port with its data in `data`.
fn spawn(data: &Path) -> Binary {
    spawn_with(data, None)
}

/// As [`spawn`], with a configuration file.
fn spawn_with(data: &Path, config: Option<&Path>) -> Binary {
    start(command(data, config))
}

/// `pathway-gateway serve` on free loopback ports with its data in `data`.
fn command(data: &Path, config: Option<&Path>) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pathway-gateway"));
    command.arg("serve");
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    command
        .env("PATHWAY_HTTP__LISTEN", "127.0.0.1:0")
        .env("PATHWAY_HL7V2__LISTEN", "127.0.0.1:0")
        .env("PATHWAY_STORE__PATH", data)
        .env("PATHWAY_LOG__FORMAT", "json")
        .env("PATHWAY_HTTP__SHUTDOWN_GRACE_SECS", "5")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    command
}

/// Runs `command` and waits for the gateway to say where it listens.
fn start(mut command: Command) -> Binary {
    let mut child = command.spawn().expect("binary starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let (addr, mllp) = loop {
        let line = lines
            .next()
            .expect("a log line before exit")
            .expect("log line");
        let log: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        if let (Some(addr), Some(mllp)) = (
            log["fields"]["addr"].as_str(),
            log["fields"]["mllp"].as_str(),
        ) {
            break (addr.to_string(), mllp.to_string());
        }
    };
    // Keep draining the log so the gateway never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Binary {
        child,
        fhir: format!("http://{addr}/fhir"),
        mllp,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_creates_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut gateway = spawn(&data);
    let client = reqwest::Client::new();
    let acknowledged: Arc<Mutex<Vec<Value>>> = Arc::default();

    // 16 writers create patients as fast as they can until the process dies.
    let mut writers = Vec::new();
    for w in 0u32..16 {
        let client = client.clone();
        let url = format!("{}/Patient", gateway.fhir);
        let acknowledged = acknowledged.clone();
        writers.push(tokio::spawn(async move {
            for i in 0u32.. {
                let body = patient(&nhs_number(w * 10_000 + i), "Durable");
                let sent = client
                    .post(&url)
                    .header("content-type", "application/fhir+json")
                    .body(body.to_string())
                    .send()
                    .await;
                let Ok(response) = sent else { return };
                if response.status() != StatusCode::CREATED {
                    return;
                }
                let Ok(created) = response.json::<Value>().await else {
                    return;
                };
                acknowledged.lock().unwrap().push(created);
            }
        }));
    }
    // Let them run, then SIGKILL mid-flight.
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if acknowledged.lock().unwrap().len() >= 300 {
            break;
        }
    }
    gateway.child.kill().expect("SIGKILL");
    gateway.child.wait().expect("reaped");
    for writer in writers {
        writer.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() >= 300);

    let mut restarted = spawn(&data);
    for created in &acknowledged {
        let id = created["id"].as_str().unwrap();
        let response = client
            .get(format!("{}/Patient/{id}", restarted.fhir))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "acknowledged Patient/{id} lost"
        );
        let stored: Value = response.json().await.unwrap();
        assert_eq!(&stored, created);
    }
    restarted.child.kill().unwrap();
    restarted.child.wait().unwrap();
}

/// HL7 v2 over MLLP: 8 connections stream ADT messages until SIGKILL;
/// every message that got an AA has its Encounter after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_hl7_messages_survive_kill_9() {
    use pathway_gateway::hl7v2::client::MllpClient;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut gateway = spawn(&data);
    // Visits answered `AA`, and messages answered `AE` (held in quarantine:
    // told so, they must be there too), over MLLP and over HTTP.
    let acknowledged: Arc<Mutex<Vec<String>>> = Arc::default();
    let held: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut senders = Vec::new();
    let ingest = gateway.fhir.replace("/fhir", "/ingest/hl7v2");
    for conn in 0u32..10 {
        let addr = gateway.mllp.clone();
        let ingest = ingest.clone();
        let (acknowledged, held) = (acknowledged.clone(), held.clone());
        senders.push(tokio::spawn(async move {
            // Eight connections over MLLP, two senders over HTTP.
            let mut mllp = None;
            let http = reqwest::Client::new();
            if conn < 8 {
                match MllpClient::connect(addr.as_str(), Duration::from_secs(10)).await {
                    Ok(client) => mllp = Some(client),
                    Err(_) => return,
                }
            }
            for i in 0u32.. {
                let visit = format!("K{conn}x{i}");
                // Every fifth has a patient class the mapping does not take.
                let class = if i % 5 == 4 { "Q" } else { "E" };
                let message = format!(
                    "MSH|^~\\&|PAS|RJZ|PATHWAY|ONEBROMLEY|202611031940||ADT^A04|{visit}|P|2.4\rEVN|A04|202611031940\rPID|1||{}^^^NHS^NH\rPV1|1|{class}|ED^^^RJZ30|A|||||||||||||||{visit}^^^RJZ^VN\r",
                    nhs_number(50_000 + conn * 10_000 + i)
                );
                let ack = match mllp.as_mut() {
                    Some(client) => match client.send(message.as_bytes()).await {
                        Ok(ack) => String::from_utf8_lossy(&ack).into_owned(),
                        Err(_) => return,
                    },
                    None => {
                        let sent = http
                            .post(&ingest)
                            .header("content-type", "x-application/hl7-v2+er7")
                            .body(message)
                            .send()
                            .await;
                        match sent {
                            Ok(response) => response.text().await.unwrap_or_default(),
                            Err(_) => return,
                        }
                    }
                };
                if ack.contains("MSA|AA|") {
                    acknowledged.lock().unwrap().push(visit);
                } else if ack.contains("MSA|AE|") {
                    held.lock().unwrap().push(visit);
                } else {
                    return;
                }
            }
        }));
    }
    // Killed once 200 visits are answered AA, both HTTP senders among
    // them, and 20 messages answered AE.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(std::time::Instant::now() < deadline, "senders stalled");
        let answered = acknowledged.lock().unwrap();
        let over_http = ["K8x", "K9x"]
            .iter()
            .all(|http| answered.iter().any(|v| v.starts_with(http)));
        if answered.len() >= 200 && over_http && held.lock().unwrap().len() >= 20 {
            break;
        }
    }
    gateway.child.kill().expect("SIGKILL");
    gateway.child.wait().expect("reaped");
    for sender in senders {
        sender.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() >= 200);
    let held = held.lock().unwrap().clone();
    assert!(held.len() >= 20, "{} held", held.len());
    for over_http in ["K8x", "K9x"] {
        assert!(
            acknowledged.iter().any(|v| v.starts_with(over_http)),
            "no HTTP sender was answered"
        );
    }

    let mut restarted = spawn(&data);
    let client = reqwest::Client::new();
    let quarantine = get_json(
        &client,
        restarted.fhir.replace("/fhir", "/quarantine?limit=1000"),
    )
    .await;
    let entries = quarantine["entries"].as_array().unwrap();
    assert!(
        quarantine.get("next").is_none_or(Value::is_null),
        "one page"
    );
    for visit in &held {
        let location = format!("MSH-10 {visit}");
        assert!(
            entries.iter().any(|e| e["location"] == location.as_str()),
            "held message {visit} lost"
        );
    }
    for visit in &acknowledged {
        let found = get_json(
            &client,
            format!("{}/Encounter?identifier={visit}", restarted.fhir),
        )
        .await;
        assert_eq!(
            found["entry"].as_array().map(Vec::len),
            Some(1),
            "acknowledged visit {visit} lost"
        );
    }
    restarted.child.kill().unwrap();
    restarted.child.wait().unwrap();
}

/// The store's files cannot grow (a full disk, here the kernel's file size
/// limit on the gateway: its writes fail with `EFBIG`): the message that
/// meets it, and every one after, gets `AR` with 207 ("send again"), never
/// `AA`; the gateway stays up, and once there is room again the same
/// messages sent again are taken. Every message that got `AA` is there,
/// once, and still after a `kill -9` and a restart.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_messages_until_there_is_room_again() {
    use pathway_gateway::hl7v2::client::MllpClient;
    use std::os::unix::process::CommandExt;
    const ROOM: libc::rlim_t = 2 * 1024 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut command = command(&data, None);
    // The hard limit this process runs under, kept: the gateway's soft
    // limit goes back up to it once there is room.
    let mut hard = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a plain system call writing into a valid `rlimit`.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_FSIZE, &mut hard) }, 0);
    let hard = hard.rlim_max;
    assert!(
        hard > ROOM,
        "this machine limits file sizes to {hard} bytes"
    );
    // SAFETY: only async-signal-safe system calls (signal, setrlimit)
    // between fork and exec. SIGXFSZ ignored: a write past the limit then
    // fails with EFBIG, as one on a full disk fails with ENOSPC, instead of
    // killing the process.
    unsafe {
        command.pre_exec(move || {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let limit = libc::rlimit {
                rlim_cur: ROOM,
                rlim_max: hard,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut gateway = start(command);
    let message = |i: u32| {
        format!(
            "MSH|^~\\&|PAS|RJZ|PATHWAY|ONEBROMLEY|202611031940||ADT^A04|F{i}|P|2.4\rEVN|A04|202611031940\r\
             PID|1||H{i:06}^^^RJZ^MR||FULL^Disk^^^MRS^^L||19410612|F|||{i} Long Road^^Bromley^^BR1 1AA^GBR^H\r\
             PV1|1|E|ED^^^RJZ30|A|||||||||||||||V{i:06}^^^RJZ^VN\r"
        )
    };
    let mut client = MllpClient::connect(gateway.mllp.as_str(), Duration::from_secs(10))
        .await
        .unwrap();
    // Until five in a row are refused (a smaller commit may still fit in
    // what is left after a larger one failed).
    let mut acknowledged = Vec::new();
    let mut refused = Vec::new();
    let mut in_a_row = 0;
    for i in 0u32..5_000 {
        let ack = client.send(message(i).as_bytes()).await.unwrap();
        let ack = String::from_utf8_lossy(&ack).to_string();
        if ack.contains("MSA|AA|") {
            acknowledged.push(i);
            in_a_row = 0;
            continue;
        }
        assert!(ack.contains("MSA|AR|"), "{ack}");
        assert!(
            ack.contains("|207^Application internal error^HL70357|"),
            "{ack}"
        );
        assert!(ack.contains("send again"), "{ack}");
        refused.push(i);
        in_a_row += 1;
        if in_a_row == 5 {
            break;
        }
    }
    assert_eq!(in_a_row, 5, "the file size limit was never met");
    assert!(acknowledged.len() >= 10, "{acknowledged:?}");
    assert!(
        gateway.child.try_wait().unwrap().is_none(),
        "the gateway stopped"
    );
    // What was refused is not there; what was taken is.
    let http = reqwest::Client::new();
    for i in &refused {
        let found = encounters(&http, &gateway.fhir, &format!("identifier=V{i:06}")).await;
        assert_eq!(found, Some(0), "refused visit V{i:06} stored");
    }
    assert_eq!(
        encounters(&http, &gateway.fhir, "_count=1").await,
        Some(acknowledged.len() as u64)
    );

    // Room again.
    let room = libc::rlimit {
        rlim_cur: hard,
        rlim_max: hard,
    };
    let pid = libc::pid_t::try_from(gateway.child.id()).unwrap();
    // SAFETY: a plain system call on the child's limit, with valid pointers.
    assert_eq!(
        unsafe { libc::prlimit(pid, libc::RLIMIT_FSIZE, &room, std::ptr::null_mut()) },
        0
    );
    for &i in &refused {
        let ack = client.send(message(i).as_bytes()).await.unwrap();
        let ack = String::from_utf8_lossy(&ack).to_string();
        assert!(ack.contains("MSA|AA|"), "resent {i}: {ack}");
    }
    // A repeat of one taken before: AA, nothing new.
    let ack = client.send(message(0).as_bytes()).await.unwrap();
    assert!(String::from_utf8_lossy(&ack).contains("MSA|AA|"));
    let taken: Vec<u32> = acknowledged.iter().chain(&refused).copied().collect();

    let check = async |fhir: &str| {
        for i in &taken {
            let found = encounters(&http, fhir, &format!("identifier=V{i:06}")).await;
            assert_eq!(found, Some(1), "visit V{i:06}");
        }
        let all = encounters(&http, fhir, "_count=1").await;
        assert_eq!(all, Some(taken.len() as u64));
    };
    check(&gateway.fhir).await;
    gateway.child.kill().expect("SIGKILL");
    gateway.child.wait().expect("reaped");
    let restarted = spawn(&data);
    check(&restarted.fhir).await;
}

/// The `total` of an Encounter search (`query`) at `fhir`.
/// `GET url`'s JSON body.
async fn get_json(http: &reqwest::Client, url: impl reqwest::IntoUrl) -> Value {
    http.get(url).send().await.unwrap().json().await.unwrap()
}

async fn encounters(http: &reqwest::Client, fhir: &str, query: &str) -> Option<u64> {
    let found = get_json(http, format!("{fhir}/Encounter?{query}")).await;
    found["total"].as_u64()
}

#[tokio::test]
async fn sigterm_drains_and_closes_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut gateway = spawn(&data);
    let client = reqwest::Client::new();
    let created: Value = client
        .post(format!("{}/Patient", gateway.fhir))
        .header("content-type", "application/fhir+json")
        .body(patient("9995260182", "Term").to_string())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(gateway.child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let exit = gateway.child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
    // A clean close checkpoints the WAL into the database file.
    let wal = data.join("gateway.sqlite-wal");
    assert!(!wal.exists() || std::fs::metadata(&wal).unwrap().len() == 0);

    let mut again = spawn(&data);
    let id = created["id"].as_str().unwrap();
    let read = client
        .get(format!("{}/Patient/{id}", again.fhir))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), StatusCode::OK);
    again.child.kill().unwrap();
    again.child.wait().unwrap();
}

/// Routing: referrals queued while their receiver is down survive a SIGKILL
/// of the gateway, and all of them are delivered once the receiver is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_deliveries_survive_kill_9_and_go_out_when_the_receiver_is_back() {
    use common::receiver::Receiver;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // The receiver's port, reserved and let go: nothing listens there yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[destinations.proactive-care-mdt]\nurl = \"http://127.0.0.1:{port}/fhir\"\n\
             [delivery]\ninitial_backoff_ms = 50\nmax_backoff_ms = 200\nmax_attempts = 1000\n"
        ),
    )
    .unwrap();
    let mut gateway = spawn_with(&data, Some(&config));
    let root = gateway.fhir.trim_end_matches("/fhir").to_string();
    let client = reqwest::Client::new();
    let mut csv = String::from("nhs_number,family_name,birth_date,efi_category\n");
    for n in 0..40 {
        csv.push_str(&format!(
            "{},Queued,1938-03-05,severe\n",
            nhs_number(700 + n)
        ));
    }
    let report: Value = client
        .post(format!("{root}/ingest/gp-risk-list?practice=G84001"))
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(report["referrals_created"], 40, "{report}");
    // Every delivery has been tried against the closed port.
    let mut tried = 0;
    for _ in 0..200 {
        let list = get_json(
            &client,
            format!("{root}/routing/deliveries?status=pending&limit=100"),
        )
        .await;
        let list = list["deliveries"].as_array().unwrap().clone();
        tried = list
            .iter()
            .filter(|d| {
                d["attempts"].as_i64().unwrap() >= 1
                    && d["last_error"]
                        .as_str()
                        .unwrap_or("")
                        .contains("cannot connect")
            })
            .count();
        if tried == 40 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        tried, 40,
        "all 40 deliveries failed to connect at least once"
    );
    gateway.child.kill().expect("SIGKILL");
    gateway.child.wait().expect("reaped");

    let mut restarted = spawn_with(&data, Some(&config));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("the receiver's port is free again");
    let receiver = Receiver::start_on(listener).await;
    let log = receiver
        .wait_for("all 40 referrals", Duration::from_secs(30), |log| {
            log.iter()
                .filter(|r| r.accepted())
                .map(|r| r.idempotency_key.clone())
                .collect::<std::collections::HashSet<_>>()
                .len()
                == 40
        })
        .await;
    let delivered: std::collections::HashSet<String> = log
        .iter()
        .map(|r| r.body["id"].as_str().unwrap().to_string())
        .collect();
    let stored = get_json(
        &client,
        format!("{}/ServiceRequest?_count=100", restarted.fhir),
    )
    .await;
    let stored: std::collections::HashSet<String> = stored["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(delivered, stored, "every referral, and only those");
    restarted.child.kill().unwrap();
    restarted.child.wait().unwrap();
}

/// Deliveries in flight when the gateway is killed (the receiver has the
/// requests but has not answered) are made again after the restart, with
/// the same idempotency keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_in_flight_at_a_crash_are_made_again_after_restart() {
    use common::receiver::Receiver;
    let receiver = Receiver::start().await;
    receiver
        .plan(|p| p.stall_containing = vec![("ServiceRequest".into(), Duration::from_secs(3600))]);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[destinations.proactive-care-mdt]\nurl = \"{}\"\ntimeout_ms = 600000\n",
            receiver.base
        ),
    )
    .unwrap();
    let mut gateway = spawn_with(&data, Some(&config));
    let root = gateway.fhir.trim_end_matches("/fhir").to_string();
    let client = reqwest::Client::new();
    let mut csv = String::from("nhs_number,family_name,birth_date,efi_category\n");
    for n in 0..10 {
        csv.push_str(&format!(
            "{},InFlight,1938-03-05,severe\n",
            nhs_number(800 + n)
        ));
    }
    let response = client
        .post(format!("{root}/ingest/gp-risk-list?practice=G84001"))
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    for _ in 0..200 {
        if receiver.arrived().len() == 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let in_flight: std::collections::HashSet<String> = receiver.arrived().into_iter().collect();
    assert_eq!(in_flight.len(), 10, "all ten in flight, none answered");
    assert!(receiver.received().is_empty());
    gateway.child.kill().expect("SIGKILL");
    gateway.child.wait().expect("reaped");

    receiver.plan(|p| p.stall_containing.clear());
    let mut restarted = spawn_with(&data, Some(&config));
    let log = receiver
        .wait_for("the ten made again", Duration::from_secs(30), |log| {
            log.iter().filter(|r| r.accepted()).count() == 10
        })
        .await;
    let again: std::collections::HashSet<String> =
        log.iter().map(|r| r.idempotency_key.clone()).collect();
    assert_eq!(again, in_flight, "the same ten keys, made again");
    assert_eq!(
        receiver.arrived().len(),
        20,
        "each referral twice: in flight, then again"
    );
    restarted.child.kill().unwrap();
    restarted.child.wait().unwrap();
}

#[test]
fn bad_configuration_stops_the_binary_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, "[http]\nlisten = \"127.0.0.1:8080\"\nport = 9\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_pathway-gateway"))
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("Invalid configuration"), "{stderr}");
    assert!(stderr.contains("port"), "{stderr}");
}

/// Two gateways writing one store would each answer reads from what it
/// wrote itself: the second is refused at start, and the store is free again
/// once the first is gone, even by SIGKILL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_gateway_on_one_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut first = spawn(&data);
    let client = reqwest::Client::new();
    let created: Value = client
        .post(format!("{}/Patient", first.fhir))
        .header("content-type", "application/fhir+json")
        .body(patient(&nhs_number(7), "Alone").to_string())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_pathway-gateway"))
        .arg("serve")
        .env("PATHWAY_HTTP__LISTEN", "127.0.0.1:0")
        .env("PATHWAY_HL7V2__LISTEN", "127.0.0.1:0")
        .env("PATHWAY_STORE__PATH", &data)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("in use by another running gateway"),
        "{stderr}"
    );
    // The first is unharmed.
    let id = created["id"].as_str().unwrap();
    let read = client
        .get(format!("{}/Patient/{id}", first.fhir))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), StatusCode::OK);
    first.child.kill().expect("SIGKILL");
    first.child.wait().expect("reaped");
    let mut next = spawn(&data);
    let read = get_json(&client, format!("{}/Patient/{id}", next.fhir)).await;
    assert_eq!(read["name"], created["name"]);
    next.child.kill().expect("SIGKILL");
    next.child.wait().expect("reaped");
}
