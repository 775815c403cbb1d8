//! `order-service`: runs the service (default) or applies migrations (`migrate`).

use clap::Parser;
use order_service::app::{Application, shutdown_signal};
use order_service::config::{Cli, CliCommand};
use order_service::persistence::Stores;
use order_service::telemetry;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = cli.config.validate() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    telemetry::init(cli.config.log_format);
    let result = match cli
        .command
        .unwrap_or(order_service::config::CliCommand::Serve)
    {
        CliCommand::Migrate => {
            migrate(&cli.config.database_url, cli.config.db_max_connections).await
        }
        CliCommand::Serve => serve(cli.config).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "fatal");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
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
