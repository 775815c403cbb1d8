//! `order-service`: runs the service (default) or applies migrations (`migrate`).

use clap::Parser;
use order_service::app::{Application, shutdown_signal};
use order_service::config::{Cli, CliCommand};
use order_service::persistence::Stores;
use order_service::telemetry;
use std::process::ExitCode;

/// Every saga step allocates and frees many small buffers (messages, statements, JSON) on
/// two threads; glibc's allocator spends a noticeable share of the CPU on them under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            eprintln!("{}", one_line(&e.to_string()));
            return ExitCode::from(2);
        }
    };
    if let Err(e) = cli.config.validate() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let telemetry = if matches!(cli.command, Some(CliCommand::Healthcheck)) {
        telemetry::Telemetry::default()
    } else {
        match telemetry::init_from_config(&cli.config) {
            Ok(telemetry) => telemetry,
            Err(e) => {
                // Config::validate checked the endpoint; what is left comes from the SDK's
                // own OTEL_EXPORTER_OTLP_* variables (e.g. an unsupported compression).
                eprintln!("error: invalid OTEL_EXPORTER_OTLP_* settings: {e}");
                return ExitCode::from(2);
            }
        }
    };
    let json_logs = cli.config.log_format == order_service::config::LogFormat::Json;
    let result = match cli
        .command
        .unwrap_or(order_service::config::CliCommand::Serve)
    {
        CliCommand::Migrate => {
            migrate(&cli.config.database_url, cli.config.db_max_connections).await
        }
        CliCommand::Serve => serve(cli.config).await,
        CliCommand::Participants => {
            if cli.config.amqp_url.is_none() {
                eprintln!(
                    "error: invalid AMQP_URL: `participants` runs as its own process and needs RabbitMQ"
                );
                return ExitCode::from(2);
            }
            order_service::app::run_participants(cli.config, shutdown_signal()).await
        }
        CliCommand::Healthcheck => healthcheck(cli.config.listen_addr).await,
    };
    let code = match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let message = causes(&e);
            // Once: as a log event where logs are JSON (a pipeline reads them), else on stderr.
            if json_logs {
                tracing::error!(error = message, "fatal");
            } else {
                eprintln!("error: {message}");
            }
            ExitCode::FAILURE
        }
    };
    // Export the spans still buffered (no-op when OTLP export is off).
    telemetry.shutdown().await;
    code
}

/// Clap's error as one line, for log pipelines and humans alike: the message with the valid
/// values and the tip, without the pointer to `--help`.
fn one_line(rendered: &str) -> String {
    let line = rendered
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("For more information"))
        .collect::<Vec<_>>()
        .join(" ");
    if line.is_empty() {
        "error: invalid arguments".to_owned()
    } else {
        line
    }
}

/// The error and its causes, each said once: some errors repeat their source in their
/// own message (sqlx's database errors through SeaORM's `DbErr`).
fn causes(error: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if message.contains(&text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
    }
    message
}

async fn serve(config: order_service::config::Config) -> anyhow::Result<()> {
    let app = Application::build(config).await?;
    app.run_until_stopped(shutdown_signal()).await
}

async fn migrate(database_url: &str, max_connections: u32) -> anyhow::Result<()> {
    let stores = Stores::connect(database_url, max_connections).await?;
    stores.migrate().await?;
    tracing::info!("migrations applied");
    stores.close().await;
    Ok(())
}

async fn healthcheck(addr: std::net::SocketAddr) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A wildcard listen address is probed on loopback.
    let target = if addr.ip().is_unspecified() {
        std::net::SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    };
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect(target).await?;
        stream
            .write_all(b"GET /health/live HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        anyhow::Ok(response)
    };
    let response = tokio::time::timeout(std::time::Duration::from_secs(3), probe).await??;
    let status_line = String::from_utf8_lossy(&response);
    anyhow::ensure!(
        status_line.starts_with("HTTP/1.0 200") || status_line.starts_with("HTTP/1.1 200"),
        "unhealthy: {}",
        status_line.lines().next().unwrap_or_default()
    );
    Ok(())
}
