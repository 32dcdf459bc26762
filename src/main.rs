//! The `berth` binary: command line, logging, configuration (refused with
//! exit code 64 when invalid), and signals; everything else is the library.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// jemalloc rather than glibc's malloc: glibc keeps what berth frees in
/// per-thread arenas (the metadata engine's caches and the hot tier churn many small
/// allocations across the runtime's threads), so an idle berth held twice
/// the memory it used; jemalloc's background threads hand freed pages back
/// to the system within seconds.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Exit code for a configuration error (EX_USAGE / EX_CONFIG family, as sysexits.h).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "berth",
    version,
    about = "A pull-through caching registry for OCI and Docker images"
)]
struct Cli {
    /// Configuration file (TOML). Without one, berth runs on its embedded defaults.
    #[arg(long, short, global = true, env = "BERTH_CONFIG")]
    config: Option<PathBuf>,
    /// Log format: `human` (the default) or `json` (one object a line).
    #[arg(long, global = true, env = "BERTH_LOG_FORMAT", default_value = "human")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the registry API (the default).
    Serve,
    /// Check the configuration and print the effective one (defaults and
    /// environment overrides included) as TOML; exit 64 if it is invalid.
    CheckConfig,
    /// Ask the berth serving this configuration for /healthz (over
    /// loopback, 5 s at most): exit 0 if it answers 200, 1 if not. The
    /// container image's HEALTHCHECK.
    Health,
    /// Re-hash every cached blob and manifest and report any that do not
    /// match their digest (exit 1): on a stopped store, or with --online in
    /// the running berth, at a bounded rate.
    Check {
        /// Remove what does not match, so it is fetched again on demand.
        #[arg(long)]
        repair: bool,
        /// Check the store of the running berth, through its admin
        /// listener (admin_listen), beside its clients.
        #[arg(long)]
        online: bool,
        /// Check the shared tier ([storage.s3]) instead of the local store:
        /// every blob and manifest re-hashed, beside the running replicas.
        #[arg(long, conflicts_with = "online")]
        shared: bool,
        /// With --online or --shared: read at most this much a second
        /// (e.g. 50MiB).
        #[arg(long)]
        rate: Option<bytesize::ByteSize>,
    },
    /// Show what the cache holds, by upstream and repository.
    Du {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// What the shared tier ([storage.s3]) holds, rather than this
        /// replica's near cache.
        #[arg(long)]
        shared: bool,
    },
    /// Pull images, every platform and their referrers (signatures, SBOMs)
    /// into the cache ahead of need. Opens the data directory itself (no
    /// berth may serve from it), or goes through a running berth (--server).
    Warm {
        /// Images as [upstream/]repository[:tag|@digest], e.g.
        /// ghcr.io/org/app:1.0 or library/alpine@sha256:...
        images: Vec<berth::reference::ImageRef>,
        /// Also warm the images listed in this file, one a line (# comments).
        #[arg(long)]
        file: Option<PathBuf>,
        /// Only these platforms of a multi-platform image (os/arch[/variant];
        /// repeatable or comma-separated). Default: all of them.
        #[arg(long = "platform", value_delimiter = ',')]
        platforms: Vec<berth::graph::Platform>,
        /// Leave referrers (signatures, SBOMs, attestations) out.
        #[arg(long)]
        no_referrers: bool,
        /// Pull through the berth serving at this URL (http://host:port)
        /// instead of opening the data directory.
        #[arg(long)]
        server: Option<String>,
    },
    /// Run the configuration's [[sync]] rules once and exit (berth serve
    /// runs them on their intervals). Opens the data directory itself: no
    /// berth may serve from it.
    Sync {
        /// Run the rules once (required: the schedule is berth serve's).
        #[arg(long)]
        once: bool,
        /// Only this rule (by its name).
        #[arg(long)]
        rule: Option<String>,
    },
    /// Write what the cache holds (or the images named, with everything
    /// they reference) as an OCI image layout in a tar, for `berth import`
    /// on a disconnected site. Run it while berth is stopped.
    Export {
        /// The bundle to write (`-` for standard output).
        #[arg(long, short)]
        output: PathBuf,
        /// Only what was stored, used or learnt since then: an RFC 3339
        /// time (2024-05-01T12:00:00Z) or a duration back from now (24h).
        #[arg(long)]
        since: Option<String>,
        /// Images as [upstream/]repository[:tag|@digest]; all when none.
        images: Vec<berth::reference::ImageRef>,
    },
    /// Verify a bundle written by `berth export` whole, then add its
    /// content, tags and referrers to the cache. Run it while berth is stopped.
    Import {
        /// The bundle (`-` for standard input).
        bundle: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _logs = init_logging(cli.log_format);
    let config = match berth::Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(errors) => {
            eprint!("berth: {errors}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig => match config.to_toml() {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        Command::Serve => serve(config),
        Command::Health => match berth::health::probe(&config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("berth: not healthy: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Check {
            repair,
            shared: true,
            rate,
            ..
        } => match berth::commands::check_shared(&config, repair, rate.map(|r| r.as_u64())) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => fail(e),
        },
        Command::Check {
            repair,
            online,
            rate,
            ..
        } => match berth::commands::check(
            &config,
            repair,
            online.then_some(rate.map(|r| r.as_u64())),
        ) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => fail(e),
        },
        Command::Du { json, shared: true } => match berth::commands::du_shared(&config, json) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        },
        Command::Du { json, .. } => match berth::commands::du(&config, json) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        },
        Command::Warm {
            mut images,
            file,
            platforms,
            no_referrers,
            server,
        } => {
            if let Some(file) = file {
                match berth::commands::image_list(&file) {
                    Ok(listed) => images.extend(listed),
                    Err(e) => return usage(&e),
                }
            }
            if images.is_empty() {
                return usage("name at least one image to warm, or --file");
            }
            let options = berth::warm::Options {
                platforms,
                no_referrers,
            };
            match berth::commands::warm(config, &images, &options, server.as_deref()) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => fail(e),
            }
        }
        Command::Sync { once, rule } => {
            if !once {
                return usage(
                    "berth sync runs the rules once and needs --once; berth serve runs them on their intervals",
                );
            }
            if let Err(message) = berth::commands::sync_rules_named(&config, rule.as_deref()) {
                return usage(&message);
            }
            match berth::commands::sync(config, rule.as_deref()) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => fail(e),
            }
        }
        Command::Export {
            output,
            since,
            images,
        } => match berth::commands::export(&config, &images, since.as_deref(), &output) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        },
        Command::Import { bundle } => match berth::commands::import(&config, &bundle) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        },
    }
}

/// Logs go to stderr: human-readable (coloured on a terminal), or JSON,
/// written in batches by a thread of their own (`berth::logging`) so that a
/// busy server pays neither a syscall nor a thread wake-up per request line.
/// The returned guard writes what is left when dropped: keep it until the end
/// of `main`.
fn init_logging(format: LogFormat) -> Option<berth::logging::Guard> {
    match berth::logging::batched(std::io::stderr()) {
        Ok((writer, guard)) => {
            install_subscriber(format, writer);
            Some(guard)
        }
        Err(e) => {
            // No thread for the writer: log straight to stderr instead.
            install_subscriber(format, std::io::stderr);
            tracing::warn!(error = %e, "cannot start the log writer thread; logging unbatched");
            None
        }
    }
}

fn install_subscriber<W>(format: LogFormat, writer: W)
where
    W: for<'a> tracing_subscriber::fmt::MakeWriter<'a> + Send + Sync + 'static,
{
    use std::io::IsTerminal;
    let asked = std::env::var("BERTH_LOG").unwrap_or_default();
    let mut filter = tracing_subscriber::EnvFilter::try_new(&asked)
        .ok()
        .filter(|_| !asked.is_empty())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    // The metadata engine reports every tree it opens at info: warnings
    // only, unless BERTH_LOG names it.
    for engine in ["fjall", "lsm_tree"] {
        if !asked.contains(engine) {
            if let Ok(directive) = format!("{engine}=warn").parse() {
                filter = filter.add_directive(directive);
            }
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_timer(berth::logging::Timestamp)
        .with_writer(writer);
    match format {
        LogFormat::Human if std::io::stderr().is_terminal() => builder.with_ansi(true).init(),
        LogFormat::Human => builder
            .with_ansi(false)
            .fmt_fields(berth::logging::plain_fields())
            .init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn usage(message: &str) -> ExitCode {
    eprintln!("berth: {message}");
    ExitCode::from(EXIT_CONFIG)
}

/// A command that could not do its work: exit code 2.
fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("berth: {e}");
    ExitCode::from(2)
}

fn serve(config: berth::Config) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berth: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| {
                berth::Error::Io(std::io::Error::new(
                    e.kind(),
                    format!("cannot listen on {}: {e}", config.listen),
                ))
            })?;
        let shutdown = shutdown_signal()?;
        let app = berth::App::new(config)?;
        let result = berth::serve(app.clone(), listener, shutdown).await;
        // The store is closed (flushed, marked clean) by now; tearing down
        // its in-memory structures, the metadata engine's among them, would
        // cost time that grows with what the cache holds. The process is
        // about to exit, which frees it all at once.
        std::mem::forget(app);
        result
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is_config() => {
            eprintln!("berth: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(e) => {
            eprintln!("berth: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Installs the SIGTERM and SIGINT handlers now, before berth reports that
/// it serves (a signal in between would otherwise kill it outright), and
/// returns a future that resolves at the first of them.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}
