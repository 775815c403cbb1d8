//! The load itself: create calls (closed or open loop) and the followers that long-poll
//! (or poll) each created order until it is terminal.

use crate::cli::{ClosedOn, FollowMode, Mode, SkuWeight, Stop};
use crate::targets::Targets;
use hdrhistogram::Histogram;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, sleep, sleep_until};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Histogram range: 1 µs to 1 hour, 3 significant digits.
const HIST_MAX_US: u64 = 3_600_000_000;

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("constant, valid histogram bounds")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// Status of an order as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    Pending,
    StockReserved,
    Paid,
    Confirmed,
    Rejected,
    Compensating,
    Reversed,
    #[serde(other)]
    Unknown,
}

impl Status {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Status::Confirmed | Status::Rejected | Status::Reversed
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "PENDING",
            Status::StockReserved => "STOCK_RESERVED",
            Status::Paid => "PAID",
            Status::Confirmed => "CONFIRMED",
            Status::Rejected => "REJECTED",
            Status::Compensating => "COMPENSATING",
            Status::Reversed => "REVERSED",
            Status::Unknown => "UNKNOWN",
        }
    }
}

/// The few fields of an order the generator reads (serde skips the rest of the document).
#[derive(Debug, Deserialize)]
struct OrderBody {
    id: Uuid,
    status: Status,
    created_at: chrono::DateTime<chrono::Utc>,
    updated_at: chrono::DateTime<chrono::Utc>,
    #[serde(default)]
    parked_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ProblemBody {
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// What the generator sends: one prepared body per SKU of the mix.
pub struct Plan {
    pub skus: Vec<SkuWeight>,
    pub quantity: u32,
    bodies: Vec<&'static [u8]>,
    total_weight: u64,
}

impl Plan {
    pub fn new(skus: Vec<SkuWeight>, quantity: u32, customer_id: &str) -> anyhow::Result<Plan> {
        let mut bodies = Vec::with_capacity(skus.len());
        for s in &skus {
            let body = serde_json::to_vec(&serde_json::json!({
                "customer_id": customer_id,
                "currency": "USD",
                "items": [{ "sku": s.sku, "quantity": quantity }],
            }))?;
            // A handful of bodies for the life of the process: sent without copying.
            bodies.push(&*body.leak());
        }
        let total_weight = skus.iter().map(|s| u64::from(s.weight)).sum();
        Ok(Plan {
            skus,
            quantity,
            bodies,
            total_weight,
        })
    }

    /// The SKU of order `index`: a fixed pseudo-random draw from the weighted mix.
    fn pick(&self, index: u64) -> usize {
        if self.skus.len() == 1 || self.total_weight == 0 {
            return 0;
        }
        // splitmix64 of the index: reproducible, well spread.
        let mut z = index.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let mut draw = z % self.total_weight;
        for (i, s) in self.skus.iter().enumerate() {
            let w = u64::from(s.weight);
            if draw < w {
                return i;
            }
            draw -= w;
        }
        self.skus.len() - 1
    }
}

/// How the followers follow an order.
#[derive(Debug, Clone, Copy)]
pub struct PollConfig {
    pub mode: FollowMode,
    /// `wait_ms` of each long poll (`FollowMode::Wait`).
    pub long_poll: Duration,
    /// Most long polls open at once (`FollowMode::Wait`).
    pub max_waits: u32,
    /// Poll schedule (`FollowMode::Poll`), and the back-off of a long poll after an error or
    /// a premature answer: `min`, then 1.5 times longer each time, up to `max`.
    pub min: Duration,
    pub max: Duration,
    /// Most polls per second across all followers (`FollowMode::Poll`).
    pub budget_per_sec: f64,
    /// Added to a long poll's wait for its HTTP timeout.
    pub request_timeout: Duration,
}

/// Spaces all the followers' polls at least `1 / budget` apart (with a short burst
/// allowance), so a backlog of followed orders cannot become a polling storm that competes
/// with the saga for the service's database pool: with N orders in flight each is polled
/// about every N / budget seconds.
struct PollLimiter {
    origin: Instant,
    /// Nanoseconds since `origin` of the next free slot.
    next: AtomicU64,
    interval_ns: u64,
    burst_ns: u64,
}

impl PollLimiter {
    fn new(budget_per_sec: f64) -> PollLimiter {
        let interval_ns = (1e9 / budget_per_sec).max(1.0) as u64;
        PollLimiter {
            origin: Instant::now(),
            next: AtomicU64::new(0),
            interval_ns,
            // Up to 20 ms worth of polls may go at once.
            burst_ns: 20_000_000,
        }
    }

    /// Reserves the next slot; returns when it starts, if it is in the future.
    fn reserve(&self) -> Option<Instant> {
        let now = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let mut current = self.next.load(Ordering::Relaxed);
        loop {
            let slot = current.max(now.saturating_sub(self.burst_ns));
            match self.next.compare_exchange_weak(
                current,
                slot + self.interval_ns,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return (slot > now).then(|| self.origin + Duration::from_nanos(slot));
                }
                Err(actual) => current = actual,
            }
        }
    }
}

/// Live counters, read by the progress bar.
#[derive(Debug, Default)]
pub struct Counters {
    pub created: AtomicU64,
    pub completed: AtomicU64,
    pub errors: AtomicU64,
    pub retries_503: AtomicU64,
    pub retries_transport: AtomicU64,
    pub retries_in_flight_key: AtomicU64,
    pub replays: AtomicU64,
    pub dropped: AtomicU64,
    /// `GET /api/orders/{id}` requests sent to follow orders (long polls included).
    pub polls: AtomicU64,
    /// Polls that waited for the --poll-budget.
    pub polls_delayed: AtomicU64,
    /// Long polls answered with a non-terminal order after their whole wait.
    pub waits_expired: AtomicU64,
    /// Long polls answered with a non-terminal order well before their wait ran out (a
    /// service without the long poll answers at once: see --follow poll).
    pub waits_early: AtomicU64,
    /// Long polls that waited for a free --max-waits slot.
    pub waits_queued: AtomicU64,
    pub poll_errors: AtomicU64,
    pub following: AtomicU64,
    pub creates_in_flight: AtomicU64,
}

/// Everything recorded under the lock (uncontended: one runtime thread by default).
pub struct Stats {
    pub create: Histogram<u64>,
    /// Open loop: how late each create started after its scheduled time (the generator's
    /// own lag, which the create and saga latencies include).
    pub send_lag: Histogram<u64>,
    pub saga: Histogram<u64>,
    pub saga_server: Histogram<u64>,
    pub terminal: BTreeMap<&'static str, u64>,
    pub errors: BTreeMap<String, u64>,
    pub poll_errors: BTreeMap<String, u64>,
    /// CONFIRMED quantity per SKU index.
    pub confirmed_qty: Vec<i64>,
    /// Orders still not terminal when the followers were stopped (id, last status).
    pub unfinished: Vec<(Uuid, String)>,
    pub parked: Vec<Uuid>,
}

pub struct Shared {
    pub client: reqwest::Client,
    /// Where each saga request goes (round-robin over --url).
    pub targets: Targets,
    pub plan: Plan,
    pub poll: PollConfig,
    pub follow: bool,
    pub max_retries: u32,
    pub counters: Counters,
    stats: Mutex<Stats>,
    stop_following: CancellationToken,
    followers_done: Notify,
    limiter: PollLimiter,
    waits: Semaphore,
    /// `?wait_ms=…` of the long polls.
    wait_query: String,
    /// `--follow events`: the stream's events, handed to the followers.
    pub dispatch: Arc<crate::events::Dispatch>,
}

impl Shared {
    pub fn new(
        client: reqwest::Client,
        targets: Targets,
        plan: Plan,
        poll: PollConfig,
        follow: bool,
        max_retries: u32,
    ) -> Shared {
        let skus = plan.skus.len();
        Shared {
            client,
            targets,
            plan,
            poll,
            follow,
            max_retries,
            counters: Counters::default(),
            stats: Mutex::new(Stats {
                create: histogram(),
                send_lag: histogram(),
                saga: histogram(),
                saga_server: histogram(),
                terminal: BTreeMap::new(),
                errors: BTreeMap::new(),
                poll_errors: BTreeMap::new(),
                confirmed_qty: vec![0; skus],
                unfinished: Vec::new(),
                parked: Vec::new(),
            }),
            stop_following: CancellationToken::new(),
            followers_done: Notify::new(),
            limiter: PollLimiter::new(poll.budget_per_sec),
            waits: Semaphore::new(poll.max_waits as usize),
            wait_query: format!("?wait_ms={}", poll.long_poll.as_millis().max(1)),
            dispatch: Arc::default(),
        }
    }

    /// Cancelled when the followers are stopped (the end of the drain).
    pub fn stopped(&self) -> CancellationToken {
        self.stop_following.clone()
    }

    pub fn stats(&self) -> MutexGuard<'_, Stats> {
        // A panic while holding the lock would be a bug in this file; keep the figures.
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn error(&self, label: String) {
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
        *self.stats().errors.entry(label).or_default() += 1;
    }

    fn poll_error(&self, label: String) {
        self.counters.poll_errors.fetch_add(1, Ordering::Relaxed);
        *self.stats().poll_errors.entry(label).or_default() += 1;
    }
}

/// An order accepted by the service.
struct Created {
    id: Uuid,
    status: Status,
    created_at: chrono::DateTime<chrono::Utc>,
}

/// `POST /api/orders` with a fresh Idempotency-Key; a 503, a transport error or a 409
/// "key still in flight" (after such a retry) is retried with the same key.
async fn create(sh: &Shared, sku: usize, started: Instant) -> Option<Created> {
    let mut key_buf = Uuid::encode_buffer();
    let key = Uuid::new_v4().hyphenated().encode_lower(&mut key_buf);
    let Ok(key) = HeaderValue::from_str(key) else {
        sh.error("invalid idempotency key".into());
        return None;
    };
    let mut attempt: u32 = 0;
    loop {
        let response = sh
            .client
            // Each attempt to the next URL: a retry with the same key may reach another
            // replica, as behind a load balancer.
            .post(sh.targets.next_orders_url())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header("idempotency-key", key.clone())
            .body(sh.plan.bodies[sku])
            .send()
            .await;
        let retry_wait = match response {
            Ok(response) => {
                let status = response.status();
                if status == StatusCode::CREATED {
                    let replayed = response.headers().contains_key("idempotent-replayed");
                    let body = response.bytes().await;
                    let elapsed = started.elapsed();
                    let order = match body {
                        Ok(bytes) => serde_json::from_slice::<OrderBody>(&bytes).ok(),
                        Err(_) => None,
                    };
                    let Some(order) = order else {
                        sh.error("201 with an unreadable body".into());
                        return None;
                    };
                    if replayed {
                        sh.counters.replays.fetch_add(1, Ordering::Relaxed);
                    }
                    sh.counters.created.fetch_add(1, Ordering::Relaxed);
                    sh.stats().create.saturating_record(micros(elapsed));
                    return Some(Created {
                        id: order.id,
                        status: order.status,
                        created_at: order.created_at,
                    });
                }
                let retry_after = retry_after(response.headers().get(RETRY_AFTER));
                let kind = problem_kind(response).await;
                if status == StatusCode::SERVICE_UNAVAILABLE {
                    sh.counters.retries_503.fetch_add(1, Ordering::Relaxed);
                    Some((retry_after, format!("503 {kind}")))
                } else if status == StatusCode::CONFLICT
                    && attempt > 0
                    && kind == "idempotency-key-in-flight"
                {
                    // Our earlier attempt is still being processed: wait for its answer.
                    sh.counters
                        .retries_in_flight_key
                        .fetch_add(1, Ordering::Relaxed);
                    Some((Duration::from_millis(200), format!("409 {kind}")))
                } else {
                    sh.error(format!("{} {kind}", status.as_u16()));
                    None
                }
            }
            Err(e) => {
                sh.counters
                    .retries_transport
                    .fetch_add(1, Ordering::Relaxed);
                let what = if e.is_timeout() {
                    "timeout"
                } else if e.is_connect() {
                    "connect"
                } else {
                    "request"
                };
                Some((
                    Duration::from_millis(100) * (attempt + 1).min(10),
                    format!("transport error ({what})"),
                ))
            }
        };
        let (wait, label) = retry_wait?;
        attempt += 1;
        if attempt > sh.max_retries {
            sh.error(format!("{label}, gave up after {} retries", sh.max_retries));
            return None;
        }
        sleep(wait).await;
    }
}

/// `Retry-After` in seconds (the service sends whole seconds); 1 s when absent or a date.
fn retry_after(value: Option<&HeaderValue>) -> Duration {
    value
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| Duration::from_secs(s.min(60)))
        .unwrap_or(Duration::from_secs(1))
}

/// The last segment of a problem+json `type` (`/problems/insufficient-stock` →
/// `insufficient-stock`), or the reason phrase.
async fn problem_kind(response: reqwest::Response) -> String {
    let status = response.status();
    let kind = match response.bytes().await {
        Ok(bytes) => serde_json::from_slice::<ProblemBody>(&bytes)
            .ok()
            .and_then(|p| p.kind),
        Err(_) => None,
    };
    match kind {
        Some(k) => k.rsplit('/').next().unwrap_or(&k).to_owned(),
        None => status.canonical_reason().unwrap_or("error").to_owned(),
    }
}

/// One answer to `GET /api/orders/{id}` while following.
enum Answer {
    Order(OrderBody),
    /// Counted as a poll error; ask again after a back-off.
    Failed,
    /// The followers were stopped (end of the drain).
    Stopped,
}

/// One `GET /api/orders/{id}` (a long poll when `long_poll`), abandoned when the followers
/// are stopped.
async fn get_order(sh: &Shared, url: &str, long_poll: bool) -> Answer {
    sh.counters.polls.fetch_add(1, Ordering::Relaxed);
    let mut request = sh.client.get(url);
    if long_poll {
        request = request.timeout(sh.poll.long_poll + sh.poll.request_timeout);
    }
    let call = async {
        let response = request.send().await?;
        let status = response.status();
        if status != StatusCode::OK {
            return Ok(Err(response));
        }
        response.bytes().await.map(Ok)
    };
    let result = tokio::select! {
        () = sh.stop_following.cancelled() => return Answer::Stopped,
        result = call => result,
    };
    match result {
        Ok(Ok(bytes)) => match serde_json::from_slice::<OrderBody>(&bytes) {
            Ok(order) => Answer::Order(order),
            Err(_) => {
                sh.poll_error("200 with an unreadable body".into());
                Answer::Failed
            }
        },
        Ok(Err(response)) => {
            let code = response.status().as_u16();
            let kind = problem_kind(response).await;
            sh.poll_error(format!("{code} {kind}"));
            Answer::Failed
        }
        Err(e) => {
            let what = if e.is_timeout() {
                "timeout"
            } else if e.is_connect() {
                "connect"
            } else if e.is_body() || e.is_decode() {
                "body"
            } else {
                "request"
            };
            sh.poll_error(format!("transport error ({what})"));
            Answer::Failed
        }
    }
}

/// Follows an order until it is terminal (or parked, or the followers are stopped), then
/// records the saga: with long polls `GET /api/orders/{id}?wait_ms=…`, each answered as soon
/// as the order is terminal or when the wait runs out (then asked again), or with short polls
/// on a back-off schedule. The saga latency runs from `started` to the answer that showed the
/// terminal state.
async fn follow(sh: Arc<Shared>, created: Created, sku: usize, started: Instant) {
    if sh.poll.mode == FollowMode::Events {
        return follow_events(sh, created, sku, started).await;
    }
    let long_poll = sh.poll.mode == FollowMode::Wait;
    let path = if long_poll {
        format!("/{}{}", created.id, sh.wait_query)
    } else {
        format!("/{}", created.id)
    };
    let mut last = created.status;
    // Short polls: always this long before the next one. Long polls: only after an error or
    // a premature non-terminal answer (the first long poll goes at once).
    let mut delay = sh.poll.min;
    let mut pause = !long_poll;
    loop {
        let wake = async {
            if pause {
                sleep(delay).await;
                delay = delay.mul_f64(1.5).min(sh.poll.max);
            }
            if long_poll {
                let permit = match sh.waits.try_acquire() {
                    Ok(permit) => permit,
                    Err(_) => {
                        sh.counters.waits_queued.fetch_add(1, Ordering::Relaxed);
                        sh.waits
                            .acquire()
                            .await
                            .expect("the semaphore is never closed")
                    }
                };
                Some(permit)
            } else {
                if let Some(slot) = sh.limiter.reserve() {
                    sh.counters.polls_delayed.fetch_add(1, Ordering::Relaxed);
                    sleep_until(slot).await;
                }
                None
            }
        };
        let permit = tokio::select! {
            () = sh.stop_following.cancelled() => None,
            permit = wake => Some(permit),
        };
        let answer = match permit {
            None => Answer::Stopped,
            Some(_permit) => {
                let asked = Instant::now();
                // Each poll to the next URL: no affinity to the replica that created it.
                let url = format!("{}{path}", sh.targets.next_orders_url());
                let answer = get_order(&sh, &url, long_poll).await;
                if long_poll && let Answer::Order(order) = &answer {
                    if order.status.is_terminal() {
                        delay = sh.poll.min;
                        pause = false;
                    } else if asked.elapsed() < sh.poll.long_poll / 2 {
                        // Not terminal, yet answered long before the wait ran out: the
                        // service does not long-poll (or is shutting down). Back off.
                        sh.counters.waits_early.fetch_add(1, Ordering::Relaxed);
                        pause = true;
                    } else {
                        sh.counters.waits_expired.fetch_add(1, Ordering::Relaxed);
                        delay = sh.poll.min;
                        pause = false;
                    }
                } else if long_poll {
                    pause = true;
                }
                answer
            }
        };
        let order = match answer {
            Answer::Order(order) => order,
            Answer::Failed => continue,
            Answer::Stopped => {
                sh.stats()
                    .unfinished
                    .push((created.id, last.as_str().to_owned()));
                break;
            }
        };
        last = order.status;
        if order.status.is_terminal() {
            let server = order.updated_at - order.created_at;
            finished(&sh, order.status, sku, started, server);
            break;
        }
        if order.parked_reason.is_some() {
            sh.stats().parked.push(order.id);
            break;
        }
    }
    follower_done(&sh);
}

/// Records a saga that reached `status`: seen `started.elapsed()` after its start, and
/// `server` long by the service's clock.
fn finished(sh: &Shared, status: Status, sku: usize, started: Instant, server: chrono::TimeDelta) {
    let observed = started.elapsed();
    let mut stats = sh.stats();
    stats.saga.saturating_record(micros(observed));
    stats
        .saga_server
        .saturating_record(micros(server.to_std().unwrap_or_default()));
    *stats.terminal.entry(status.as_str()).or_default() += 1;
    if status == Status::Confirmed {
        stats.confirmed_qty[sku] += i64::from(sh.plan.quantity);
    }
    drop(stats);
    sh.counters.completed.fetch_add(1, Ordering::Relaxed);
}

fn follower_done(sh: &Shared) {
    if sh.counters.following.fetch_sub(1, Ordering::AcqRel) == 1 {
        sh.followers_done.notify_waiters();
    }
}

/// `--follow events`: waits for the order's terminal (or parked) event from the stream.
async fn follow_events(sh: Arc<Shared>, created: Created, sku: usize, started: Instant) {
    let event = tokio::select! {
        () = sh.stop_following.cancelled() => None,
        event = sh.dispatch.wait_for(created.id) => event.ok(),
    };
    match event {
        Some(event) if event.kind == "order.parked" => sh.stats().parked.push(created.id),
        Some(event) => {
            let status = serde_json::from_value(serde_json::Value::String(event.status))
                .unwrap_or(Status::Unknown);
            finished(&sh, status, sku, started, event.at - created.created_at);
        }
        None => sh
            .stats()
            .unfinished
            .push((created.id, created.status.as_str().to_owned())),
    }
    follower_done(&sh);
}

/// Creates one order and hands it to a follower; returns the follower, if any.
async fn one_order(sh: &Arc<Shared>, index: u64, started: Instant) -> Option<JoinHandle<()>> {
    let sku = sh.plan.pick(index);
    let created = create(sh, sku, started).await?;
    if !sh.follow {
        return None;
    }
    if created.status.is_terminal() {
        // Unlikely (the saga is asynchronous), but then the create response is the answer.
        let mut stats = sh.stats();
        stats.saga.saturating_record(micros(started.elapsed()));
        *stats.terminal.entry(created.status.as_str()).or_default() += 1;
        if created.status == Status::Confirmed {
            stats.confirmed_qty[sku] += i64::from(sh.plan.quantity);
        }
        drop(stats);
        sh.counters.completed.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    sh.counters.following.fetch_add(1, Ordering::AcqRel);
    Some(tokio::spawn(follow(Arc::clone(sh), created, sku, started)))
}

/// Sends the open loop's order indexes, each with its scheduled start, at that time, from
/// a thread of its own. The runtime's timer works in whole milliseconds and then waits for
/// a worker, so creates would start late by about a millisecond, a lag every latency would
/// include, since latencies count from the scheduled start. A sleeping thread wakes within
/// tens of microseconds.
fn pace(
    start: Instant,
    rate: f64,
    limit: u64,
    deadline: Option<Instant>,
) -> std::io::Result<tokio::sync::mpsc::UnboundedReceiver<(u64, Instant)>> {
    let (ticks, receiver) = tokio::sync::mpsc::unbounded_channel();
    let (start, deadline) = (start.into_std(), deadline.map(Instant::into_std));
    std::thread::Builder::new()
        .name("pacer".into())
        .spawn(move || {
            for index in 0..limit {
                let scheduled = start + Duration::from_secs_f64(index as f64 / rate);
                if deadline.is_some_and(|d| scheduled >= d) {
                    break;
                }
                if let Some(wait) = scheduled.checked_duration_since(std::time::Instant::now()) {
                    std::thread::sleep(wait);
                }
                if ticks.send((index, Instant::from_std(scheduled))).is_err() {
                    break;
                }
            }
        })?;
    Ok(receiver)
}

/// Runs the load phase; returns when every create call has answered (closed loop on the
/// saga: at the end of --duration, or when every worker's last saga is terminal, or has
/// taken longer than `saga_wait`, with --orders). The followers still running are left to
/// [`drain`].
pub async fn run_load(
    sh: Arc<Shared>,
    mode: Mode,
    stop: Stop,
    max_in_flight: usize,
    saga_wait: Duration,
) {
    let start = Instant::now();
    let deadline = match stop {
        Stop::Duration(d) => Some(start + d),
        Stop::Orders(_) => None,
    };
    let limit = match stop {
        Stop::Orders(n) => n,
        Stop::Duration(_) => u64::MAX,
    };
    match mode {
        Mode::Closed { concurrency, on } => {
            let wait_saga = on == ClosedOn::Saga && sh.follow;
            let next = Arc::new(AtomicU64::new(0));
            let mut workers = JoinSet::new();
            for _ in 0..concurrency {
                let sh = Arc::clone(&sh);
                let next = Arc::clone(&next);
                workers.spawn(async move {
                    loop {
                        if deadline.is_some_and(|d| Instant::now() >= d) {
                            break;
                        }
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        if index >= limit {
                            break;
                        }
                        let follower = one_order(&sh, index, Instant::now()).await;
                        let Some(mut follower) = follower.filter(|_| wait_saga) else {
                            continue;
                        };
                        // The next order only once this saga is terminal. At the end of the
                        // load phase (or after `saga_wait` with --orders) the follower goes on
                        // without the worker (dropping the handle detaches it) and is drained.
                        let give_up = deadline.unwrap_or_else(|| Instant::now() + saga_wait);
                        tokio::select! {
                            _ = &mut follower => {}
                            () = sleep_until(give_up) => {
                                if deadline.is_some() {
                                    break;
                                }
                            }
                        }
                    }
                });
            }
            while workers.join_next().await.is_some() {}
        }
        Mode::Open { rate } => {
            let mut calls = JoinSet::new();
            let mut ticks = match pace(start, rate, limit, deadline) {
                Ok(ticks) => ticks,
                Err(e) => {
                    sh.error(format!("cannot start the pacing thread: {e}"));
                    return;
                }
            };
            while let Some((index, scheduled)) = ticks.recv().await {
                while calls.try_join_next().is_some() {}
                if sh.counters.creates_in_flight.load(Ordering::Relaxed) >= max_in_flight as u64 {
                    sh.counters.dropped.fetch_add(1, Ordering::Relaxed);
                } else {
                    sh.counters
                        .creates_in_flight
                        .fetch_add(1, Ordering::Relaxed);
                    let sh = Arc::clone(&sh);
                    calls.spawn(async move {
                        sh.stats()
                            .send_lag
                            .saturating_record(micros(scheduled.elapsed()));
                        // Latency counts from the scheduled start, not from when we got to it.
                        // Followed concurrently: the next order does not wait for this saga.
                        drop(one_order(&sh, index, scheduled).await);
                        sh.counters
                            .creates_in_flight
                            .fetch_sub(1, Ordering::Relaxed);
                    });
                }
            }
            while calls.join_next().await.is_some() {}
        }
    }
}

/// Waits until every follower is done or `timeout` passes; then stops the rest (they
/// record themselves as unfinished). Returns how long the drain took.
pub async fn drain(sh: &Shared, timeout: Duration) -> Duration {
    let start = Instant::now();
    let deadline = start + timeout;
    loop {
        let done = sh.followers_done.notified();
        if sh.counters.following.load(Ordering::Acquire) == 0 {
            break;
        }
        tokio::select! {
            () = done => {}
            () = sleep(Duration::from_millis(200)) => {}
            () = sleep_until(deadline) => {
                sh.stop_following.cancel();
                // A follower in the middle of a request notices when it returns.
                let grace = Instant::now() + Duration::from_secs(5);
                while sh.counters.following.load(Ordering::Acquire) > 0 && Instant::now() < grace {
                    sleep(Duration::from_millis(50)).await;
                }
                break;
            }
        }
    }
    start.elapsed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_pick_follows_the_weights() {
        let skus = vec![
            SkuWeight {
                sku: "A".into(),
                weight: 3,
            },
            SkuWeight {
                sku: "B".into(),
                weight: 1,
            },
        ];
        let plan = Plan::new(skus, 1, "t").expect("plan");
        let a = (0..40_000).filter(|i| plan.pick(*i) == 0).count();
        assert!((29_000..31_000).contains(&a), "{a}");
    }

    #[tokio::test]
    async fn poll_limiter_spaces_polls() {
        let limiter = PollLimiter::new(1000.0);
        let start = Instant::now();
        let slots: Vec<Option<Instant>> = (0..100).map(|_| limiter.reserve()).collect();
        // The first few fit in the burst allowance; the 100th waits about 80 ms.
        assert!(slots[0].is_none());
        let last = slots[99].expect("the 100th poll waits");
        let wait = last - start;
        assert!(
            wait > Duration::from_millis(60) && wait < Duration::from_millis(100),
            "{wait:?}"
        );
    }

    #[tokio::test]
    async fn the_pacer_hands_out_each_start_on_schedule_never_early_and_stops_at_the_deadline() {
        let start = Instant::now();
        let rate = 500.0;
        let deadline = start + Duration::from_millis(100);
        let mut ticks = pace(start, rate, u64::MAX, Some(deadline)).expect("pacing thread");
        let mut seen = Vec::new();
        while let Some((index, scheduled)) = ticks.recv().await {
            let arrived = Instant::now();
            assert_eq!(
                scheduled,
                start + Duration::from_secs_f64(index as f64 / rate),
                "start of order {index}"
            );
            assert!(arrived >= scheduled, "order {index} handed out early");
            seen.push(index);
        }
        // 2 ms apart for 100 ms: starts 0, 2, …, 98 ms.
        assert_eq!(seen, (0..50).collect::<Vec<u64>>());
        let mut limited = pace(Instant::now(), 1000.0, 3, None).expect("pacing thread");
        let mut count = 0;
        while limited.recv().await.is_some() {
            count += 1;
        }
        assert_eq!(count, 3, "--orders 3 starts three orders");
    }

    #[test]
    fn retry_after_header() {
        assert_eq!(
            retry_after(Some(&HeaderValue::from_static("2"))),
            Duration::from_secs(2)
        );
        assert_eq!(retry_after(None), Duration::from_secs(1));
    }
}
