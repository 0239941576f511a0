//! Outcome figures from a simulated cohort, driven only through the public
//! interfaces (risk-list CSV, FHIR REST, HL7 v2 over MLLP): the report
//! reproduces the figures the simulator knows to be true, opted-out patients
//! are in no figure but still have their care routed, and the `report`
//! command prints the same report from the store.

mod common;

use common::Gateway;
use common::receiver::Receiver;
use pathway_gateway::config::Config;
use pathway_gateway::outcomes::simulate::{self, Cohort};
use serde_json::Value;
use std::time::Duration;

fn check(report: &Value, cohort: &Cohort) {
    let e = &cohort.expected;
    let pc = &report["proactive_care"];
    let figures = [
        (
            "proactive_care.referrals",
            &pc["referrals"],
            e.referrals as i64,
        ),
        ("proactive_care.cohort", &pc["cohort"], e.cohort as i64),
        (
            "ed_contacts.before",
            &pc["ed_contacts"]["before"],
            e.ed_before,
        ),
        ("ed_contacts.after", &pc["ed_contacts"]["after"], e.ed_after),
        (
            "non_elective.before",
            &pc["non_elective_admissions"]["before"],
            e.nel_before,
        ),
        (
            "non_elective.after",
            &pc["non_elective_admissions"]["after"],
            e.nel_after,
        ),
        (
            "at_home.referrals",
            &report["bromley_at_home"]["referrals"],
            e.at_home_referrals as i64,
        ),
        (
            "at_home.admitted",
            &report["bromley_at_home"]["admitted"],
            e.at_home_admitted as i64,
        ),
        (
            "care_homes.residents",
            &report["care_homes"]["residents"],
            e.residents as i64,
        ),
        (
            "care_homes.discharges",
            &report["care_homes"]["discharges"],
            e.discharges as i64,
        ),
        (
            "care_homes.discharges_reviewed",
            &report["care_homes"]["discharges_reviewed"],
            e.discharges_reviewed as i64,
        ),
        (
            "opted_out_excluded",
            &report["opted_out_excluded"],
            e.opted_out as i64,
        ),
    ];
    for (name, actual, expected) in figures {
        assert_eq!(actual.as_i64(), Some(expected), "{name}\n{report:#}");
    }
    let pct = |part: usize, whole: usize| ((part as f64 * 1000.0 / whole as f64).round()) / 10.0;
    let homes = &report["care_homes"];
    for (name, part) in [
        ("admission_assessment_pct", e.admission_assessed),
        ("assessed_last_6_months_pct", e.assessed_last_6_months),
        (
            "medicines_review_last_12_months_pct",
            e.medicines_reviewed_last_12_months,
        ),
    ] {
        assert_eq!(
            homes[name].as_f64(),
            Some(pct(part, e.residents)),
            "{name}\n{report:#}"
        );
    }
    let ed = &pc["ed_contacts"];
    let fewer = e.ed_before - e.ed_after;
    assert_eq!(ed["fewer"].as_i64(), Some(fewer));
    let saved = ((fewer as f64 * 182.84) * 100.0).round() / 100.0;
    assert_eq!(ed["cost_saved_gbp"].as_f64(), Some(saved));
    assert_eq!(report["window_weeks"], 13);
    assert_eq!(report["bromley_at_home"]["admitted_within_days"], 30);
}

/// A gateway loaded with a simulated cohort (30 on the pathway), with the
/// MDT at a receiver, the cohort's register and opt-out file configured.
struct Loaded {
    gw: Gateway,
    cohort: Cohort,
    mdt: Receiver,
    config_file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

async fn loaded() -> Loaded {
    let cohort = simulate::generate(pathway_gateway::outcomes::today(), 30, 7);
    assert!(cohort.expected.cohort >= 10 && cohort.expected.ed_before > 0);
    let dir = tempfile::tempdir().unwrap();
    let register = dir.path().join("care-homes.csv");
    std::fs::write(&register, &cohort.register).unwrap();
    let opt_out = dir.path().join("opt-out.txt");
    std::fs::write(&opt_out, cohort.opt_out_file.join("\n")).unwrap();
    let mdt = Receiver::start().await;
    let toml = format!(
        "[destinations.proactive-care-mdt]\nurl = \"{}\"\n[care_homes]\nregister = \"{}\"\n[outcomes]\nopt_out_file = \"{}\"\n",
        mdt.base,
        register.display(),
        opt_out.display()
    );
    let config_file = dir.path().join("gateway.toml");
    std::fs::write(&config_file, &toml).unwrap();
    let loaded = Config::from_toml(&toml, "test", Vec::<(String, String)>::new()).unwrap();
    let gw = common::start_with(|c| {
        c.routing = loaded.routing;
        c.outcomes = loaded.outcomes;
    })
    .await;
    simulate::send(&cohort, &gw.root, &gw.mllp.to_string())
        .await
        .expect("the cohort is sent");
    Loaded {
        gw,
        cohort,
        mdt,
        config_file,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_cohort_reproduces_its_known_figures() {
    let Loaded {
        gw,
        cohort,
        mdt,
        config_file,
        _dir,
    } = loaded().await;

    let url = format!("{}/outcomes/report?as_of={}", gw.root, cohort.as_of);
    let report = gw.get_url(&url).await;
    assert_eq!(report.status, 200, "{}", report.text);
    check(&report.json, &cohort);

    // Opted-out patients are in no figure, but their ED attendances still
    // reach the MDT.
    let opted_out: Vec<String> = gw
        .search_all("Patient?_count=1000")
        .await
        .into_iter()
        .filter(|p| {
            let nhs = p["identifier"][0]["value"].as_str().unwrap().to_string();
            cohort.opt_out_file.contains(&nhs) || cohort.opt_out_flag.contains(&nhs)
        })
        .map(|p| format!("Patient/{}", p["id"].as_str().unwrap()))
        .collect();
    mdt.wait_for(
        "ED attendances of opted-out patients",
        Duration::from_secs(20),
        |log| {
            log.iter().any(|r| {
                r.resource_type == "Encounter"
                    && opted_out.contains(
                        &r.body["subject"]["reference"]
                            .as_str()
                            .unwrap_or("")
                            .to_string(),
                    )
            })
        },
    )
    .await;

    // A period: nothing referred before today.
    let before = gw
        .get_url(&format!(
            "{}/outcomes/report?as_of={}&to={}",
            gw.root,
            cohort.as_of,
            cohort.today.yesterday().unwrap()
        ))
        .await;
    assert_eq!(before.json["proactive_care"]["referrals"], 0);
    assert_eq!(before.json["bromley_at_home"]["referrals"], 0);
    let bad = gw
        .get_url(&format!("{}/outcomes/report?as_of=2026-02-30", gw.root))
        .await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.outcome_issue()["expression"][0], "as_of");
    // The command prints the same report from the store (beside the
    // running gateway: SQLite's WAL lets it read).
    let data = gw.data.clone();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_pathway-gateway"))
        .args([
            "report",
            "--format",
            "json",
            "--as-of",
            &cohort.as_of.to_string(),
            "--config",
        ])
        .arg(&config_file)
        .env("PATHWAY_STORE__PATH", &data)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(printed, report.json);
    let csv = std::process::Command::new(env!("CARGO_BIN_EXE_pathway-gateway"))
        .args([
            "report",
            "--format",
            "csv",
            "--as-of",
            &cohort.as_of.to_string(),
            "--config",
        ])
        .arg(&config_file)
        .env("PATHWAY_STORE__PATH", &data)
        .output()
        .unwrap();
    let csv = String::from_utf8_lossy(&csv.stdout);
    assert!(csv.starts_with("section,measure,value\n"), "{csv}");
    let line = format!(
        "proactive_care,ed_contacts.before,{}",
        cohort.expected.ed_before
    );
    assert!(csv.lines().any(|l| l == line), "{line} not in\n{csv}");
    let table = std::process::Command::new(env!("CARGO_BIN_EXE_pathway-gateway"))
        .args(["report", "--as-of", &cohort.as_of.to_string(), "--config"])
        .arg(&config_file)
        .env("PATHWAY_STORE__PATH", &data)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("proactive_care"), "{table}");
    let cohort_size = cohort.expected.cohort.to_string();
    assert!(
        table
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["cohort", cohort_size.as_str()]),
        "{table}"
    );
    gw.stop().await;
}

/// Chromium, when installed (CI installs Debian's `chromium`; with
/// `CI_REQUIRE_CHROMIUM=1` a missing one fails the test).
fn chromium() -> Option<std::path::PathBuf> {
    let found = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists());
    if found.is_none() && std::env::var_os("CI_REQUIRE_CHROMIUM").is_some() {
        panic!("CI_REQUIRE_CHROMIUM is set but there is no /usr/bin/chromium");
    }
    found
}

fn headless(
    chromium: &std::path::Path,
    profile: &std::path::Path,
    args: &[&str],
) -> std::process::Output {
    std::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .expect("chromium runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_renders_in_headless_chromium_with_the_headline_figures() {
    let Loaded { gw, cohort, .. } = loaded().await;
    let url = format!("{}/outcomes?as_of={}", gw.root, cohort.as_of);
    let page = gw.get_url(&url).await;
    assert_eq!(page.status, 200);
    assert!(page.header("content-type").starts_with("text/html"));
    assert!(
        !page.text.contains("http://") && !page.text.contains("https://"),
        "no external resources"
    );

    let e = &cohort.expected;
    let tile = |id: &str, value: &str| format!(r#"id="{id}"><div class="n">{value}</div>"#);
    assert!(
        page.text.contains(&tile("cohort", &e.cohort.to_string())),
        "{}",
        page.text
    );
    let Some(chromium) = chromium() else {
        eprintln!("browser part skipped: no chromium (apt-get install chromium)");
        gw.stop().await;
        return;
    };
    let profile = tempfile::tempdir().unwrap();
    let url_for_chromium = url.clone();
    let chromium_for_dom = chromium.clone();
    let profile_path = profile.path().to_path_buf();
    let dom = tokio::task::spawn_blocking(move || {
        headless(
            &chromium_for_dom,
            &profile_path,
            &["--dump-dom", &url_for_chromium],
        )
    })
    .await
    .unwrap();
    assert!(
        dom.status.success(),
        "{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    let dom = String::from_utf8_lossy(&dom.stdout).into_owned();
    assert!(
        dom.contains(&tile("cohort", &e.cohort.to_string())),
        "{dom}"
    );
    let ed_pct = if e.ed_before == 0 {
        0.0
    } else {
        ((e.ed_before - e.ed_after) as f64 * 1000.0 / e.ed_before as f64).round() / 10.0
    };
    assert!(dom.contains(&tile("ed", &format!("{ed_pct:.1}%"))), "{dom}");
    assert!(
        dom.contains(&tile("referrals", &e.referrals.to_string())),
        "{dom}"
    );
    assert!(
        dom.contains(&format!("{} residents;", e.residents)),
        "{dom}"
    );
    assert_eq!(dom.matches("<svg").count(), 4, "four charts");
    let rows = dom.matches("<tr><td>").count();
    let lacking_admission = e.residents - e.admission_assessed;
    assert!(
        rows >= lacking_admission && rows <= e.residents,
        "{rows} overdue rows"
    );
    assert!(dom.contains("no admission assessment"));

    let shot = profile.path().join("dashboard.png");
    let shot_arg = format!("--screenshot={}", shot.display());
    let profile_path = profile.path().to_path_buf();
    let done = tokio::task::spawn_blocking(move || {
        headless(
            &chromium,
            &profile_path,
            &[&shot_arg, "--window-size=1280,2200", &url],
        )
    })
    .await
    .unwrap();
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let png = std::fs::read(&shot).expect("a screenshot");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert_eq!((width, height), (1280, 2200));
    // A blank page compresses to a few kilobytes; charts and tables do not.
    assert!(
        png.len() > 40_000,
        "screenshot of {} bytes looks blank",
        png.len()
    );
    if let Some(dir) = std::env::var_os("DASHBOARD_SCREENSHOT_DIR") {
        std::fs::copy(&shot, std::path::Path::new(&dir).join("dashboard.png")).unwrap();
    }
    gw.stop().await;
}
