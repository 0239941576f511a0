//! The `pathway-gateway` command: parses the command line and calls into the
//! library.

use anyhow::Context;
use clap::{Parser, Subcommand};
use pathway_gateway::config::Config;
use pathway_gateway::gp::dry_run;
use pathway_gateway::gp::layout::Format;
use pathway_gateway::server;
use pathway_gateway::validate::{Validator, files};
use std::path::PathBuf;

/// mimalloc rather than glibc malloc: see Cargo.toml.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "pathway-gateway",
    version,
    about = "FHIR R4 interoperability gateway for NHS care pathways"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the gateway (embedded store in ./data unless configured).
    Serve {
        /// Configuration file (default: ./gateway.toml if present).
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
    },
    /// Validates resources, Bundles or NDJSON files against base R4, the
    /// profiles they claim and any named; exit 1 if any has an error.
    Validate {
        /// A profile canonical every resource must also meet (repeatable).
        #[arg(long, value_name = "URL")]
        profile: Vec<String>,
        /// Profiles directory to use instead of the built-in copy of profiles/.
        #[arg(long, value_name = "DIR")]
        profiles: Option<PathBuf>,
        /// One OperationOutcome per resource, as NDJSON, instead of text.
        #[arg(long)]
        json: bool,
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Dry run: prints what an input would become (a FHIR transaction
    /// Bundle), with row errors and validation issues; exit 1 if any row fails.
    Map {
        /// The kind of input: gp-csv or hl7v2.
        #[arg(long, value_name = "KIND")]
        from: String,
        /// ODS code of the sending practice (gp-csv).
        #[arg(long, value_name = "ODS")]
        practice: Option<String>,
        /// Column preset: emis, systmone or generic (default: by header).
        #[arg(long, value_name = "FORMAT")]
        format: Option<String>,
        /// The receipt time to stamp (default: now), FHIR dateTime.
        #[arg(long, value_name = "DATETIME")]
        received: Option<String>,
        /// Configuration file, for column overrides and the risk threshold.
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Sends a folder of inputs (or one file, HL7 v2 whatever its name) to a
    /// running gateway: `.hl7` over MLLP (mllp://host:port) or HTTP, `.csv`
    /// risk lists and FHIR `.json` / `.ndjson` over HTTP; exit 1 unless
    /// every one was accepted.
    Replay {
        #[arg(value_name = "DIR|FILE")]
        dir: PathBuf,
        /// mllp://host:port or http://host:port.
        #[arg(long, value_name = "URL")]
        to: String,
        /// ODS code of the practice, for `.csv` risk lists.
        #[arg(long, value_name = "ODS")]
        practice: Option<String>,
    },
    /// Prints the pathway outcome report computed from the store (the one
    /// `serve` uses): a table, or `--format json|csv`.
    Report {
        /// The reporting date (default: today in London), YYYY-MM-DD.
        #[arg(long, value_name = "DATE")]
        as_of: Option<String>,
        /// Count referrals and discharges from this date (default: all).
        #[arg(long, value_name = "DATE")]
        from: Option<String>,
        /// ... up to this date (default: --as-of).
        #[arg(long, value_name = "DATE")]
        to: Option<String>,
        /// table, json or csv.
        #[arg(long, value_name = "FORMAT", default_value = "table")]
        format: String,
        /// Configuration file (default: ./gateway.toml if present).
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
    },
    /// A simulated cohort, for demos: `--out DIR` writes its care-home
    /// register, opt-out list and a gateway.toml that uses them (serve with
    /// it); `--to URL` sends its feeds to that running gateway (risk list and
    /// FHIR over HTTP, ADT over MLLP) and prints the figures the report and
    /// dashboard must show.
    Simulate {
        /// Patients on the pathway (half as many @Home and care-home patients).
        #[arg(long, default_value_t = 100)]
        size: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// The gateway's HTTP root, e.g. http://127.0.0.1:8080.
        #[arg(long, value_name = "URL")]
        to: Option<String>,
        /// The gateway's MLLP listener.
        #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:2575")]
        mllp: String,
    },
    /// Lints a profiles directory (default ./profiles): unknown paths,
    /// unresolvable bindings and extensions, unsupported rules.
    CheckProfiles {
        #[arg(value_name = "DIR", default_value = "profiles")]
        dir: PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate {
            profile,
            profiles,
            json,
            files,
        } => validate(profiles.as_deref(), &profile, json, &files),
        Command::CheckProfiles { dir } => check_profiles(&dir),
        Command::Simulate {
            size,
            seed,
            out,
            to,
            mllp,
        } => match simulate(size, seed, out, to, &mllp) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("pathway-gateway simulate: {err:#}");
                std::process::ExitCode::FAILURE
            }
        },
        Command::Report {
            as_of,
            from,
            to,
            format,
            config,
        } => match report(as_of, from, to, &format, config) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("pathway-gateway report: {err:#}");
                std::process::ExitCode::from(2)
            }
        },
        Command::Replay { dir, to, practice } => replay(&dir, &to, practice.as_deref()),
        Command::Map {
            from,
            practice,
            format,
            received,
            config,
            file,
        } => map(&from, practice, format, received, config, &file),
        Command::Serve { config } => {
            let config = match Config::load(config.as_deref(), std::env::vars()) {
                Ok(config) => config,
                Err(err) => {
                    eprintln!("{err}");
                    return std::process::ExitCode::from(2);
                }
            };
            init_logging(&config);
            // A panic's message could quote what a sender sent; log where it
            // happened, not what it said.
            std::panic::set_hook(Box::new(|info| {
                let at = info
                    .location()
                    .map(|l| format!("{}:{}", l.file(), l.line()))
                    .unwrap_or_default();
                tracing::error!(at, "panic (message withheld: it may carry patient data)");
            }));
            match serve(config) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(err) => {
                    tracing::error!("{err:#}");
                    eprintln!("pathway-gateway: {err:#}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
    }
}

fn simulate(
    size: usize,
    seed: u64,
    out: Option<PathBuf>,
    to: Option<String>,
    mllp: &str,
) -> anyhow::Result<()> {
    use pathway_gateway::outcomes::{self, simulate};
    if out.is_none() && to.is_none() {
        anyhow::bail!(
            "give --out DIR (files for the gateway's configuration), --to URL (send), or both"
        );
    }
    let cohort = simulate::generate(outcomes::today(), size, seed);
    if let Some(dir) = &out {
        std::fs::create_dir_all(dir)?;
        let dir = std::fs::canonicalize(dir)?;
        let register = dir.join("care-homes.csv");
        let opt_outs = dir.join("opt-outs.txt");
        std::fs::write(&register, &cohort.register)?;
        std::fs::write(&opt_outs, cohort.opt_out_file.join("\n") + "\n")?;
        let config = dir.join("gateway.toml");
        std::fs::write(
            &config,
            format!(
                "# A simulated cohort's care homes and opt-outs.\n[care_homes]\nregister = \"{}\"\n\n[outcomes]\nopt_out_file = \"{}\"\n",
                register.display(),
                opt_outs.display()
            ),
        )?;
        println!(
            "wrote {}, {} and {}",
            register.display(),
            opt_outs.display(),
            config.display()
        );
        println!(
            "serve with: pathway-gateway serve --config {}",
            config.display()
        );
    }
    if let Some(base) = &to {
        let runtime = tokio::runtime::Runtime::new()?;
        runtime
            .block_on(simulate::send(&cohort, base, mllp))
            .map_err(anyhow::Error::msg)?;
        let e = &cohort.expected;
        println!(
            "sent: a risk list of {} rows, {} assessments, {} requests, {} ADT messages",
            cohort.gp_list.lines().count() - 1,
            cohort.assessments.len(),
            cohort.requests.len(),
            cohort.adt.len()
        );
        println!("report date: {}", cohort.as_of);
        println!(
            "  {}/outcomes?as_of={}",
            base.trim_end_matches('/'),
            cohort.as_of
        );
        println!(
            "expected: referrals {}, cohort {}, ED contacts {} -> {}, non-elective admissions {} -> {}, \
             @Home referrals {} (admitted {}), care-home residents {} (discharges {}, reviewed {}), opted out {}",
            e.referrals,
            e.cohort,
            e.ed_before,
            e.ed_after,
            e.nel_before,
            e.nel_after,
            e.at_home_referrals,
            e.at_home_admitted,
            e.residents,
            e.discharges,
            e.discharges_reviewed,
            e.opted_out
        );
    }
    Ok(())
}

fn report(
    as_of: Option<String>,
    from: Option<String>,
    to: Option<String>,
    format: &str,
    config: Option<PathBuf>,
) -> anyhow::Result<()> {
    use pathway_gateway::outcomes;
    if !matches!(format, "table" | "json" | "csv") {
        anyhow::bail!("--format {format}: not table, json or csv");
    }
    let config = Config::load(config.as_deref(), std::env::vars())?;
    let date = |name: &str, text: Option<String>| {
        text.map(|t| outcomes::parse_date(name, &t))
            .transpose()
            .map_err(anyhow::Error::msg)
    };
    let period = outcomes::measure::Period::new(
        date("--as-of", as_of)?,
        date("--from", from)?,
        date("--to", to)?,
    )
    .map_err(anyhow::Error::msg)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let report = runtime.block_on(async {
        use pathway_gateway::store::Store;
        let store = pathway_gateway::store::sqlite::SqliteStore::open(config.store.clone())
            .with_context(|| format!("cannot open the store in {}", config.store.dir.display()))?;
        let report =
            outcomes::report(&store, &config.routing.register, &config.outcomes, period).await;
        store.close().await;
        anyhow::Ok(report?)
    })?;
    let value = serde_json::to_value(&report)?;
    match format {
        "json" => println!("{}", serde_json::to_string_pretty(&value)?),
        "csv" => {
            println!("section,measure,value");
            for (section, measure, value) in outcomes::rows(&value) {
                println!("{section},{measure},{}", outcomes::csv_field(&value));
            }
        }
        _ => {
            let rows = outcomes::rows(&value);
            let width = rows.iter().map(|(_, m, _)| m.len()).max().unwrap_or(0);
            let mut section_now = String::from("-");
            for (section, measure, value) in rows {
                if section != section_now {
                    println!(
                        "{}",
                        if section.is_empty() {
                            "report"
                        } else {
                            &section
                        }
                    );
                    section_now = section;
                }
                println!("  {measure:<width$}  {value}");
            }
        }
    }
    Ok(())
}

fn validate(
    profiles: Option<&std::path::Path>,
    requested: &[String],
    json: bool,
    files: &[PathBuf],
) -> std::process::ExitCode {
    let validator = match Validator::load(profiles, &[]) {
        Ok(v) => v,
        Err(err) => {
            eprintln!("pathway-gateway: {err}");
            return std::process::ExitCode::from(2);
        }
    };
    let mut out = std::io::stdout().lock();
    match files::validate_files(&validator, files, requested, json, &mut out) {
        Ok(summary) if summary.invalid == 0 => std::process::ExitCode::SUCCESS,
        Ok(_) => std::process::ExitCode::FAILURE,
        Err(err) => {
            eprintln!("pathway-gateway: {err}");
            std::process::ExitCode::from(2)
        }
    }
}

fn map(
    from: &str,
    practice: Option<String>,
    format: Option<String>,
    received: Option<String>,
    config: Option<PathBuf>,
    file: &std::path::Path,
) -> std::process::ExitCode {
    let usage = |message: String| {
        eprintln!("pathway-gateway map: {message}");
        std::process::ExitCode::from(2)
    };
    let config = match Config::load(config.as_deref(), std::env::vars()) {
        Ok(config) => config,
        Err(err) => return usage(err.to_string()),
    };
    match from {
        "gp-csv" => {}
        "hl7v2" => return map_hl7v2(&config, file),
        other => return usage(format!("--from {other:?}: gp-csv or hl7v2")),
    }
    let Some(practice) = practice.map(|p| p.to_ascii_uppercase()) else {
        return usage("--practice ODS is required for gp-csv".to_string());
    };
    let format = match format.as_deref().map(Format::parse) {
        None => None,
        Some(Some(f)) => Some(f),
        Some(None) => return usage("--format must be emis, systmone or generic".to_string()),
    };
    let bytes = match std::fs::read(file) {
        Ok(bytes) => bytes,
        Err(err) => return usage(format!("cannot read {}: {err}", file.display())),
    };
    let received = received.unwrap_or_else(|| {
        jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string()
    });
    let options = config
        .gp_lists
        .list_options(&practice, format, false, received);
    match dry_run::map_list(
        &bytes,
        format,
        &options.overrides,
        &options.cx,
        &config.validator,
    ) {
        Ok(run) => {
            println!("{}", serde_json::to_string_pretty(&run).unwrap_or_default());
            if run.rejected == 0 {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::FAILURE
            }
        }
        Err(err) => {
            eprintln!(
                "{}: not a risk list this gateway can read: {err}",
                file.display()
            );
            std::process::ExitCode::FAILURE
        }
    }
}

/// `map --from hl7v2`: the Bundle, and per message its ACK code, errors,
/// unmapped fields and notes; exit 1 if any message would not get `AA`.
fn map_hl7v2(config: &Config, file: &std::path::Path) -> std::process::ExitCode {
    let bytes = match std::fs::read(file) {
        Ok(bytes) => bytes,
        Err(err) => {
            eprintln!("pathway-gateway map: cannot read {}: {err}", file.display());
            return std::process::ExitCode::from(2);
        }
    };
    let text = pathway_gateway::gp::read::utf8_or_windows_1252(&bytes);
    let run =
        pathway_gateway::hl7v2::dry_run::map_messages(&text, &config.hl7v2.cx, &config.validator);
    println!("{}", serde_json::to_string_pretty(&run).unwrap_or_default());
    if run.messages.iter().all(|m| m.ack == "AA") && !run.messages.is_empty() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

fn replay(dir: &std::path::Path, to: &str, practice: Option<&str>) -> std::process::ExitCode {
    use pathway_gateway::replay::{Target, replay};
    let target = match Target::parse(to) {
        Ok(t) => t,
        Err(err) => {
            eprintln!("pathway-gateway replay: --to {err}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(err) => {
            eprintln!("pathway-gateway replay: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(replay(dir, &target, practice)) {
        Ok(replayed) => {
            let sent = replayed.sent;
            for s in &sent {
                println!("{}\t{}\t{}", s.file.display(), s.item, s.outcome);
            }
            for file in &replayed.skipped {
                println!(
                    "{}\t(skipped)\tnot .hl7, .csv, .json or .ndjson",
                    file.display()
                );
            }
            let accepted = sent.iter().filter(|s| s.ok).count();
            println!(
                "{accepted} of {} accepted, {} file(s) skipped",
                sent.len(),
                replayed.skipped.len()
            );
            if accepted == sent.len() && !sent.is_empty() {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::FAILURE
            }
        }
        Err(err) => {
            eprintln!("pathway-gateway replay: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn check_profiles(dir: &std::path::Path) -> std::process::ExitCode {
    let validator = match Validator::load(Some(dir), &[]) {
        Ok(v) => v,
        Err(err) => {
            eprintln!("{}: {err}", dir.display());
            return std::process::ExitCode::FAILURE;
        }
    };
    let set = validator.profiles();
    for problem in set.problems() {
        println!("{problem}");
    }
    let mut urls: Vec<&str> = set.urls().collect();
    urls.sort_unstable();
    println!(
        "{}: {} StructureDefinitions compiled, {} problem{}",
        dir.display(),
        urls.len(),
        set.problems().len(),
        if set.problems().len() == 1 { "" } else { "s" }
    );
    if set.problems().is_empty() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.http.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.http.listen))?;
        server::run(config, listener, server::shutdown_signal()).await?;
        Ok(())
    })
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    if config.log.json {
        builder.json().init();
    } else {
        builder.init();
    }
}
