use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::Parser;
use hourglass::config::{Cli, Command, ServeArgs};
use hourglass::{cli, server};
use tracing_subscriber::EnvFilter;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `hourglass import` finished, but left some of its input out.
const INCOMPLETE: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let threads = match &cli.command {
        Some(Command::Serve(args)) => args.threads,
        None => cli.serve.threads,
        Some(_) => None,
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        runtime.worker_threads(n.into());
    }
    match runtime.enable_all().build() {
        // Blocking work left over (an export a closed connection no longer reads) gets a moment, not for ever.
        Ok(runtime) => {
            let code = runtime.block_on(run(cli));
            runtime.shutdown_timeout(std::time::Duration::from_secs(5));
            code
        }
        Err(e) => {
            eprintln!("hourglass: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> ExitCode {
    // The commands for scripts say only what went wrong; the server says what it does.
    let level = match cli.command {
        Some(Command::Export(_) | Command::Import(_)) => "warn",
        _ => "info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("HOURGLASS_LOG").unwrap_or_else(|_| EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let result = match cli.command {
        Some(Command::Serve(args)) => serve(*args).await,
        None => serve(cli.serve).await,
        Some(Command::Export(args)) => cli::export(args).await,
        Some(Command::Import(args)) => match cli::import(args).await {
            Ok(false) => return ExitCode::from(INCOMPLETE),
            other => other.map(drop),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hourglass: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    hourglass::time::set_clock_offset(args.clock_offset_ms);
    if let Some(log) = args.log.clone() {
        return serve_node(args, log).await;
    }
    let store = server::open_store(args.store_config()).await?;
    let shutdown = server::shutdown_signal();
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let addr = listener.local_addr()?;
    println!("listening on {addr}");
    std::io::stdout().flush()?;
    match (&args.store.archive, args.replica) {
        (Some(archive), true) => {
            let upstream = args.upstream.as_ref().map(ToString::to_string);
            tracing::info!(%addr, %archive, upstream, "serving as a read replica");
        }
        _ => tracing::info!(%addr, data = %args.store.data.display(), "serving"),
    }
    server::run(listener, store, &args, shutdown).await?;
    Ok(())
}

/// One of the nodes on a replicated log: listening at once (standing by until it holds the log's lease).
async fn serve_node(
    args: ServeArgs,
    log: hourglass::ingest::nats::NatsConfig,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let shutdown = server::shutdown_signal();
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let addr = listener.local_addr()?;
    println!("listening on {addr}");
    std::io::stdout().flush()?;
    let me = hourglass::lease::Holder {
        node: args.store_config().node,
        url: args
            .advertise
            .clone()
            .unwrap_or_else(|| format!("http://{addr}")),
    };
    tracing::info!(%addr, node = %me.node, stream = %log.stream, "serving as a node of a replicated log");
    let ttl = std::time::Duration::from_millis(args.lease_ms);
    let lease = hourglass::lease::Lease::open(&log, me, ttl).await?;
    server::run_node(listener, &args, lease, shutdown).await?;
    Ok(())
}
