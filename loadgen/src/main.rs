//! `loadgen`: load generator and end-to-end checker for the order service.
//!
//! Creates orders through `POST /api/orders` (closed loop: `--concurrency` workers, each
//! waiting for its order's saga to be terminal before the next one; open loop: `--rate`
//! orders/s, latency from the scheduled start), follows every created order to its terminal
//! state with the long poll `GET /api/orders/{id}?wait_ms=…` (or, `--follow poll`, by
//! polling), and at the end prints throughput, HDR latency percentiles, terminal states and
//! errors, and checks the invariants through the API (`GET /api/admin/invariants`, stock
//! conservation of the SKUs used).
//! `cargo run --release -p loadgen -- --help`.

mod checks;
mod cli;
mod driver;
mod events;
mod report;
mod targets;

use anyhow::Context;
use clap::Parser;
use cli::{Args, FollowMode, Mode, Stop};
use driver::{Plan, PollConfig, Shared};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use report::{DeclineCheck, Latency, Report, Retries, SkuEntry, StockCheck, UrlRequests};
use std::collections::{BTreeMap, VecDeque};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use targets::Targets;
use tokio::time::{Instant, sleep};

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = args.validate() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads as usize)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the tokio runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(report) if report.passed => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<Report> {
    // Already checked by `validate`.
    let targets = Targets::new(args.base_urls().map_err(anyhow::Error::msg)?);
    let base = targets.first().to_owned();
    let client = reqwest::Client::builder()
        // Only ever the service at --url: never an environment proxy. One pool for all the
        // URLs: reqwest keeps idle connections per host.
        .no_proxy()
        .timeout(args.timeout)
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(90))
        .build()
        .context("building the HTTP client")?;
    // Every URL, so that a wrong one fails now rather than as errors in the report.
    for url in targets.bases() {
        checks::live(&client, url).await?;
    }

    let mix = args.sku_mix();
    let token = args.admin_token.as_deref().filter(|t| !t.is_empty());
    if args.stock.is_some() && token.is_none() {
        anyhow::bail!("--stock needs a non-empty --admin-token (or ADMIN_TOKEN)");
    }

    // Stock before the run (set first with --stock).
    let mut before = Vec::with_capacity(mix.len());
    for s in &mix {
        let current = checks::stock(&client, &base, &s.sku).await?;
        let view = match (args.stock, token) {
            (Some(available), Some(token)) => {
                let price = args
                    .price_cents
                    .or(current.as_ref().map(|c| c.price_cents))
                    .unwrap_or(1000);
                checks::put_stock(&client, &base, token, &s.sku, available, price).await?
            }
            _ => current.with_context(|| {
                format!(
                    "SKU {} is not in the catalogue; create it with --stock N --admin-token …",
                    s.sku
                )
            })?,
        };
        before.push(view);
    }
    if token.is_none() {
        eprintln!(
            "note: no --admin-token / ADMIN_TOKEN: the service's invariant report is not checked"
        );
    }

    let plan = Plan::new(mix.clone(), args.quantity, &args.customer_id)?;
    let poll = PollConfig {
        mode: args.follow,
        long_poll: args.long_poll,
        max_waits: args.max_waits,
        min: args.poll_min,
        max: args.poll_max,
        budget_per_sec: args.poll_budget,
        request_timeout: args.timeout,
    };
    let follow = !args.no_follow;
    let shared = Arc::new(Shared::new(
        client.clone(),
        targets,
        plan,
        poll,
        follow,
        args.max_retries,
    ));
    // --follow events: the stream is open before the first order is created.
    let stream = match (args.follow, token) {
        (FollowMode::Events, Some(token)) if follow => Some(
            events::start(
                client.clone(),
                shared.targets.first().to_owned(),
                token.to_owned(),
                Arc::clone(&shared.dispatch),
                shared.stopped(),
            )
            .await
            .context("opening the event stream (--follow events)")?,
        ),
        _ => None,
    };
    let mode = args.mode();
    let stop = args.stop();
    let started_at = chrono::Utc::now();

    // Progress bar on stderr (hidden when stderr is not a terminal, or with --quiet).
    let bar = progress_bar(&args, stop);
    let load_done = Arc::new(AtomicBool::new(false));
    let ticker = tokio::spawn(tick(
        Arc::clone(&shared),
        bar.clone(),
        stop,
        Arc::clone(&load_done),
    ));

    let start = Instant::now();
    driver::run_load(
        Arc::clone(&shared),
        mode,
        stop,
        args.max_in_flight,
        args.drain_timeout,
    )
    .await;
    let load_elapsed = start.elapsed();
    load_done.store(true, Ordering::Relaxed);
    let completed_during_load = shared.counters.completed.load(Ordering::Relaxed);

    let drain_elapsed = if follow {
        driver::drain(&shared, args.drain_timeout).await
    } else {
        Duration::ZERO
    };
    ticker.abort();
    if let Some(stream) = stream {
        stream.abort();
    }
    bar.finish_and_clear();

    // After the drain: wait (bounded) for the checks to settle. Inventory marks stock sold
    // when it consumes `order.confirmed`, slightly after the order shows CONFIRMED.
    let (unfinished, confirmed_qty, gave_up, parked_seen) = {
        let stats = shared.stats();
        let gave_up: u64 = stats
            .errors
            .iter()
            .filter(|(k, _)| k.contains("gave up"))
            .map(|(_, v)| *v)
            .sum();
        (
            stats.unfinished.len() as u64,
            stats.confirmed_qty.clone(),
            gave_up,
            !stats.parked.is_empty(),
        )
    };
    let sold_check_skipped = if !follow {
        Some("--no-follow: CONFIRMED quantities not observed".to_owned())
    } else if args.shared {
        Some("--shared: other clients may sell stock too".to_owned())
    } else if unfinished > 0 || parked_seen {
        Some("some orders did not reach a terminal state".to_owned())
    } else if gave_up > 0 {
        Some(format!(
            "{gave_up} create calls gave up after retries: their outcome is unknown"
        ))
    } else {
        None
    };
    let settle_deadline = Instant::now()
        + if follow {
            args.settle_timeout
        } else {
            // Nothing observed the sagas: give them the drain time to finish.
            args.drain_timeout + args.settle_timeout
        };
    let (stock, invariants, invariants_error) = loop {
        let mut stock = Vec::with_capacity(mix.len());
        for (i, (s, b)) in mix.iter().zip(&before).enumerate() {
            let after = checks::stock(&client, &base, &s.sku)
                .await?
                .with_context(|| format!("SKU {} disappeared during the run", s.sku))?;
            let sold_delta = after.sold - b.sold;
            stock.push(StockCheck {
                sku: s.sku.clone(),
                conserved: after.total() == b.total(),
                sold_delta,
                confirmed_quantity: confirmed_qty[i],
                sold_matches: sold_check_skipped
                    .is_none()
                    .then_some(sold_delta == confirmed_qty[i]),
                before: b.clone(),
                after,
            });
        }
        let stock_ok = stock
            .iter()
            .all(|s| s.conserved && s.sold_matches != Some(false));
        // The invariant report reads every order (seconds on a large database): ask for it
        // once the cheap stock check has settled, or when time is up.
        if !stock_ok && Instant::now() < settle_deadline {
            sleep(Duration::from_millis(500)).await;
            continue;
        }
        let (invariants, invariants_error) = match token {
            Some(t) => match checks::invariants(&client, &base, t).await {
                Ok(r) => (Some(r), None),
                Err(e) => (None, Some(format!("{e:#}"))),
            },
            None => (None, None),
        };
        let invariants_ok = token.is_none() || invariants.as_ref().is_some_and(|r| r.holds);
        if (stock_ok && invariants_ok) || Instant::now() >= settle_deadline {
            break (stock, invariants, invariants_error);
        }
        sleep(Duration::from_millis(500)).await;
    };

    let c = &shared.counters;
    let stats = shared.stats();
    let created = c.created.load(Ordering::Relaxed);
    let completed = c.completed.load(Ordering::Relaxed);
    let polls = c.polls.load(Ordering::Relaxed);
    let load_s = load_elapsed.as_secs_f64().max(1e-9);
    let total_s = (load_elapsed + drain_elapsed).as_secs_f64().max(1e-9);
    let terminal: BTreeMap<String, u64> = stats
        .terminal
        .iter()
        .map(|(k, v)| ((*k).to_owned(), *v))
        .collect();
    let count_of = |s: &str| terminal.get(s).copied().unwrap_or(0);
    let decline = args
        .expect_decline_rate
        .and_then(|p| DeclineCheck::new(p, count_of("CONFIRMED"), count_of("REVERSED")));

    let mut failures = Vec::new();
    if created == 0 {
        failures.push("no order was created".to_owned());
    }
    if unfinished > 0 {
        failures.push(format!(
            "{unfinished} orders not terminal after the {}s drain timeout",
            args.drain_timeout.as_secs_f64()
        ));
    }
    if !stats.parked.is_empty() {
        failures.push(format!("{} orders parked", stats.parked.len()));
    }
    for s in &stock {
        if !s.conserved {
            failures.push(format!(
                "stock of {} not conserved: available+reserved+sold {} before, {} after",
                s.sku,
                s.before.total(),
                s.after.total()
            ));
        }
        if s.sold_matches == Some(false) {
            failures.push(format!(
                "{} sold +{} but CONFIRMED orders took {}",
                s.sku, s.sold_delta, s.confirmed_quantity
            ));
        }
    }
    if let Some(r) = &invariants
        && !r.holds
    {
        failures.push(format!(
            "invariant report: holds=false (in_flight {}, parked {}, {} violations)",
            r.in_flight,
            r.parked,
            r.violations.len()
        ));
    }
    if let Some(e) = &invariants_error {
        failures.push(format!("invariant report unavailable: {e}"));
    }

    let (concurrency, closed_on, rate) = match mode {
        Mode::Closed { concurrency, on } => (Some(concurrency), Some(on.as_str().to_owned()), None),
        Mode::Open { rate } => (None, None, Some(rate)),
    };
    let wait_mode = follow && args.follow == FollowMode::Wait;
    let report = Report {
        label: args.label.clone(),
        url: base.clone(),
        urls: if shared.targets.bases().len() > 1 {
            shared
                .targets
                .sent()
                .into_iter()
                .map(|(url, requests)| UrlRequests { url, requests })
                .collect()
        } else {
            Vec::new()
        },
        mode: match mode {
            Mode::Closed { .. } => "closed",
            Mode::Open { .. } => "open",
        }
        .to_owned(),
        concurrency,
        closed_on,
        rate,
        duration_s: match stop {
            Stop::Duration(d) => Some(d.as_secs_f64()),
            Stop::Orders(_) => None,
        },
        orders_limit: match stop {
            Stop::Orders(n) => Some(n),
            Stop::Duration(_) => None,
        },
        skus: mix
            .iter()
            .map(|s| SkuEntry {
                sku: s.sku.clone(),
                weight: s.weight,
            })
            .collect(),
        quantity: args.quantity,
        follow,
        follow_mode: follow.then(|| args.follow.as_str().to_owned()),
        long_poll_ms: wait_mode
            .then_some(u64::try_from(args.long_poll.as_millis()).unwrap_or(60_000)),
        max_waits: wait_mode.then_some(args.max_waits),
        started_at: started_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        load_seconds: load_elapsed.as_secs_f64(),
        drain_seconds: drain_elapsed.as_secs_f64(),
        created,
        created_per_sec: created as f64 / load_s,
        completed,
        completed_during_load,
        completed_per_sec: completed_during_load as f64 / load_s,
        completed_per_sec_overall: completed as f64 / total_s,
        error_count: c.errors.load(Ordering::Relaxed),
        errors: stats.errors.clone(),
        retries: Retries {
            status_503: c.retries_503.load(Ordering::Relaxed),
            transport: c.retries_transport.load(Ordering::Relaxed),
            key_in_flight: c.retries_in_flight_key.load(Ordering::Relaxed),
        },
        idempotent_replays: c.replays.load(Ordering::Relaxed),
        dropped: c.dropped.load(Ordering::Relaxed),
        polls,
        polls_per_saga: polls as f64 / (completed + unfinished).max(1) as f64,
        polls_delayed: c.polls_delayed.load(Ordering::Relaxed),
        poll_budget: args.poll_budget,
        waits_expired: c.waits_expired.load(Ordering::Relaxed),
        waits_early: c.waits_early.load(Ordering::Relaxed),
        waits_queued: c.waits_queued.load(Ordering::Relaxed),
        poll_errors: stats.poll_errors.clone(),
        create_latency: Latency::of(&stats.create),
        send_lag: Latency::of(&stats.send_lag),
        saga_latency: Latency::of(&stats.saga),
        saga_server_latency: Latency::of(&stats.saga_server),
        terminal,
        unfinished,
        unfinished_sample: stats
            .unfinished
            .iter()
            .take(20)
            .map(|(id, status)| format!("{id} {status}"))
            .collect(),
        parked: stats.parked.iter().map(|id| id.to_string()).collect(),
        decline,
        stock,
        sold_check_skipped,
        invariants,
        invariants_skipped: if token.is_none() {
            Some("no admin token".to_owned())
        } else {
            invariants_error
        },
        passed: failures.is_empty(),
        failures,
    };
    drop(stats);

    print!("{}", report.render());
    if let Some(path) = &args.json {
        let json = serde_json::to_vec_pretty(&report).context("serializing the report")?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report)
}

fn progress_bar(args: &Args, stop: Stop) -> ProgressBar {
    let target = if args.quiet {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr_with_hz(4)
    };
    let length = match stop {
        Stop::Orders(n) => n,
        Stop::Duration(d) => u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
    };
    let bar = ProgressBar::with_draw_target(Some(length), target);
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Refreshes the progress bar: created, completed, errors, in flight, current create rate.
async fn tick(shared: Arc<Shared>, bar: ProgressBar, stop: Stop, load_done: Arc<AtomicBool>) {
    let start = Instant::now();
    let mut window: VecDeque<(Instant, u64)> = VecDeque::with_capacity(16);
    let mut interval = tokio::time::interval(Duration::from_millis(250));
    loop {
        interval.tick().await;
        let c = &shared.counters;
        let created = c.created.load(Ordering::Relaxed);
        let completed = c.completed.load(Ordering::Relaxed);
        let errors = c.errors.load(Ordering::Relaxed);
        let following = c.following.load(Ordering::Relaxed);
        let now = Instant::now();
        window.push_back((now, created));
        while window.len() > 9 {
            window.pop_front();
        }
        let rate = match window.front() {
            Some((t, n)) if now > *t => (created - n) as f64 / (now - *t).as_secs_f64(),
            _ => 0.0,
        };
        if load_done.load(Ordering::Relaxed) {
            bar.set_message(format!(
                "draining: {following} sagas in flight; completed {completed}, errors {errors}"
            ));
        } else {
            let position = match stop {
                Stop::Orders(_) => created + errors + c.dropped.load(Ordering::Relaxed),
                Stop::Duration(_) => u64::try_from(start.elapsed().as_millis()).unwrap_or(0),
            };
            bar.set_position(position);
            bar.set_message(format!(
                "created {created} completed {completed} errors {errors} in flight {following} {rate:.0}/s"
            ));
        }
    }
}
