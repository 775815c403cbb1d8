//! The operator console in a real browser: Debian's Chromium, driven by selenium (PyPI)
//! through tests/browser/console.py, against the service on PostgreSQL and RabbitMQ. The
//! script logs in, compares the overview with the API, reads an order's timeline, cancels an
//! order, resumes a parked one, replays a dead letter and logs out.
//!
//! Alone: `cargo test --test api browser -- --nocapture`. `CONSOLE_SCREENSHOTS=<dir>` keeps
//! the screenshots of the main pages (docs/console/ holds the committed ones).

use crate::helpers::{ADMIN_TOKEN, TestOptions, spawn_app_with};
use order_service::domain::saga::PaymentMode;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

const INSTALL: &str = "apt-get install chromium chromium-driver && python3 -m pip install selenium";
/// The run is killed (and the test fails) after this long.
const TIME_LIMIT: Duration = Duration::from_secs(240);

#[tokio::test]
async fn the_console_works_in_a_real_browser() {
    for binary in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        assert!(
            std::path::Path::new(binary).exists(),
            "{binary} is missing; install the browser test's tools: {INSTALL}"
        );
    }
    let selenium = tokio::process::Command::new("python3")
        .args(["-c", "import selenium"])
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run python3 ({e}); install: {INSTALL}"));
    assert!(
        selenium.status.success(),
        "selenium is missing for python3 ({}); install: {INSTALL}",
        String::from_utf8_lossy(&selenium.stderr).trim()
    );

    // Manual payment: a new order waits in STOCK_RESERVED, to be cancelled or paid from the
    // console. The actor crashes on the first six payment_charged: a paid order is parked.
    let app = spawn_app_with(TestOptions {
        payment_mode: PaymentMode::Manual,
        dev_endpoints: true,
        admin_token: Some(ADMIN_TOKEN.to_owned()),
        fault_actor_panic: Some("payment_charged:first=6".into()),
        ..TestOptions::default()
    })
    .await;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser/console.py");
    let mut command = tokio::process::Command::new("python3");
    command
        .arg(&script)
        .args(["--url", &app.url("")])
        .args(["--token", ADMIN_TOKEN])
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Ok(dir) = std::env::var("CONSOLE_SCREENSHOTS") {
        command.args(["--screenshots", &dir]);
    }
    let output = tokio::time::timeout(TIME_LIMIT, command.output())
        .await
        .unwrap_or_else(|_| panic!("the browser test ran longer than {TIME_LIMIT:?}"))
        .expect("python3 runs the browser test");
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{report}");
    assert!(
        output.status.success(),
        "the console failed in the browser ({}):\n{report}",
        output.status
    );
}
