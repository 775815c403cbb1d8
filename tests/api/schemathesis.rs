//! Schemathesis (property-based API testing, from PyPI) against the served OpenAPI document:
//! every check, every phase (examples, coverage, fuzzing, stateful through the document's
//! links), on PostgreSQL and RabbitMQ with the admin token and the dev endpoints on. Any
//! finding is a bug in the service or in its document, never in the check.
//!
//! Alone: `cargo test --test api schemathesis -- --nocapture`. `SCHEMATHESIS_SEED` picks
//! another seed, `SCHEMATHESIS_MAX_EXAMPLES` another number of examples per operation.
//! Configuration: tests/schemathesis/ (the catalogue dictionary, the unique
//! Idempotency-Key hook, and why a valid order may still be a 422).

use crate::helpers::{ADMIN_TOKEN, TestOptions, spawn_app_with};
use order_service::domain::saga::PaymentMode;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// The version this suite is written for (its checks and configuration format).
const VERSION: &str = "4.32.5";
const INSTALL: &str = "python3 -m pip install schemathesis==4.32.5";
/// Examples per operation and phase: some 3,000 requests and 200 stateful scenarios.
const MAX_EXAMPLES: u32 = 200;
const SEED: u64 = 20_261_204;
/// The run is killed (and the test fails) after this long.
const TIME_LIMIT: Duration = Duration::from_secs(170);

/// `python3 -m schemathesis.cli`: the module of the installed package, whatever directory
/// pip put its `st` script in.
fn schemathesis() -> tokio::process::Command {
    let mut command = tokio::process::Command::new("python3");
    command.args(["-m", "schemathesis.cli"]);
    command
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test]
async fn schemathesis_finds_nothing_in_the_served_contract() {
    let version = schemathesis()
        .arg("--version")
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run python3 ({e}); install schemathesis: {INSTALL}"));
    let reported = String::from_utf8_lossy(&version.stdout);
    assert!(
        version.status.success() && reported.trim_end().ends_with(&format!("version {VERSION}")),
        "schemathesis {VERSION} is required (found: {:?}{}); install it with: {INSTALL}",
        reported.trim(),
        String::from_utf8_lossy(&version.stderr).trim()
    );

    // Manual payment mode: orders wait for the pay endpoint, so the stateful phase can pay
    // and cancel them instead of finding them already finished.
    let app = spawn_app_with(TestOptions {
        payment_mode: PaymentMode::Manual,
        dev_endpoints: true,
        admin_token: Some(ADMIN_TOKEN.to_owned()),
        ..TestOptions::default()
    })
    .await;
    let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis");
    let workdir = std::env::temp_dir().join(format!("schemathesis-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&workdir).expect("a working directory");
    let seed: u64 = env_or("SCHEMATHESIS_SEED", SEED);
    let max_examples: u32 = env_or("SCHEMATHESIS_MAX_EXAMPLES", MAX_EXAMPLES);

    let started = Instant::now();
    let run = schemathesis()
        .arg("--config-file")
        .arg(config.join("schemathesis.toml"))
        .arg("run")
        .arg(app.url("/api-docs/openapi.json"))
        .args(["--checks", "all"])
        .args(["--header", &format!("Authorization: Bearer {ADMIN_TOKEN}")])
        .args(["--max-examples", &max_examples.to_string()])
        .args(["--seed", &seed.to_string()])
        .args(["--generation-database", "none"])
        .args(["--output-sanitize", "false", "--no-color"])
        .env("SCHEMATHESIS_HOOKS", config.join("hooks.py"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .current_dir(&workdir)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(TIME_LIMIT, run).await;
    let _ = std::fs::remove_dir_all(&workdir);
    let output = output
        .unwrap_or_else(|_| panic!("schemathesis ran longer than {TIME_LIMIT:?} (seed {seed})"))
        .expect("schemathesis runs");
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{report}\nschemathesis took {:?}", started.elapsed());
    assert!(
        output.status.success(),
        "schemathesis found problems ({}, seed {seed}):\n{report}",
        output.status
    );
}
