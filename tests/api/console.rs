//! The operator's JSON endpoints and the console's access rules, on PostgreSQL and RabbitMQ:
//! resuming a parked order, the dead letters (list, replay, discard), the event stream with
//! `Last-Event-ID`, the overview, the order list and timeline, the session cookie.

use crate::helpers::{
    ADMIN_TOKEN, TestApp, TestOptions, expect_problem, order_body, spawn_app_with,
};
use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use order_service::domain::saga::PaymentMode;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;
use tokio::time::{Instant, timeout};
use uuid::Uuid;

const DEADLINE: Duration = Duration::from_secs(20);

fn bearer() -> String {
    format!("Bearer {ADMIN_TOKEN}")
}

impl TestApp {
    async fn admin_get(&self, path: &str) -> Value {
        let response = self
            .client
            .get(self.url(path))
            .header("Authorization", bearer())
            .send()
            .await
            .expect("GET");
        let status = response.status();
        let body: Value = response.json().await.expect("JSON");
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        body
    }

    async fn admin_send(&self, method: reqwest::Method, path: &str) -> reqwest::Response {
        self.client
            .request(method, self.url(path))
            .header("Authorization", bearer())
            .send()
            .await
            .expect("request")
    }

    /// Polls `check` on the admin `path` until it holds.
    async fn admin_until(&self, path: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let body = self.admin_get(path).await;
            if check(&body) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: never; last {path}: {body:#}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn publish_raw(app: &TestApp, exchange: &str, routing_key: &str, body: &[u8]) {
    let (_connection, channel) = app.broker_channel().await;
    channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
}

fn reply_for(order_id: &str, kind: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "message_id": Uuid::now_v7(), "order_id": order_id, "occurred_at": chrono::Utc::now(),
        "version": 1, "type": kind, "payload": {},
    }))
    .expect("JSON")
}

fn dead_letters_of(listing: &Value) -> Vec<Value> {
    listing["dead_letters"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// An order whose actor crashes on `payment_charged` until the supervisor parks it: the
/// operator resumes it (history `resumed`, the saga goes on to CONFIRMED), and the reply it
/// dead-lettered meanwhile is replayed through the same consumer, which ignores it as a
/// duplicate — nothing changes.
#[tokio::test]
async fn a_parked_order_is_resumed_and_its_dead_lettered_reply_replays_as_a_no_op() {
    let app = spawn_app_with(TestOptions {
        payment_mode: PaymentMode::Manual,
        fault_actor_panic: Some("payment_charged:first=6".into()),
        ..TestOptions::default()
    })
    .await;
    let created = app.create_order(&[("KB-001", 2)]).await;
    let id = created["id"].as_str().expect("id").to_owned();
    app.wait_for_status(&id, &["STOCK_RESERVED"]).await;
    let paid = app.pay(&id, &json!({"outcome": "approve"})).await;
    assert_eq!(paid.status(), StatusCode::ACCEPTED);

    let parked = app
        .admin_until("/api/admin/orders?parked=true", "the order parked", |b| {
            b["orders"].as_array().is_some_and(|o| o.len() == 1)
        })
        .await;
    assert_eq!(parked["orders"][0]["id"], id.as_str());
    let reason = parked["orders"][0]["parked_reason"]
        .as_str()
        .expect("reason");
    assert!(reason.contains("failed 5 times"), "{reason}");
    let refused = app
        .client
        .patch(app.url(&format!("/api/orders/{id}/status")))
        .header("Authorization", bearer())
        .json(&json!({"status": "REVERSED"}))
        .send()
        .await
        .expect("PATCH");
    expect_problem(refused, StatusCode::CONFLICT, Some("order-parked")).await;
    // The reply that arrived while it was parked was dead-lettered, not requeued forever.
    let listing = app
        .admin_until("/api/admin/dead-letters", "its reply dead-lettered", |b| {
            dead_letters_of(b)
                .iter()
                .any(|d| d["body"].as_str().is_some_and(|s| s.contains(&id)))
        })
        .await;
    let letter = dead_letters_of(&listing)
        .into_iter()
        .find(|d| d["body"].as_str().is_some_and(|s| s.contains(&id)))
        .expect("the order's dead letter");
    // This replica's own reply queue (replies are routed to the replica that asked); the
    // reply that crashed the actor, or the next one if the order moved on before parking.
    let queue = letter["queue"].as_str().expect("queue of origin");
    assert!(queue.starts_with("orchestrator.replies"), "{letter:#}");
    let key = letter["routing_key"].as_str().unwrap_or("");
    assert!(
        key.ends_with("payment.charged") || key.ends_with("shipping.scheduled"),
        "{letter:#}"
    );
    assert_eq!(letter["reason"], "rejected");
    assert_eq!(letter["headers"]["x-first-death-queue"], queue);
    let timeline = app.admin_get(&format!("/api/admin/orders/{id}")).await;
    assert_eq!(
        timeline["actions"],
        json!({"cancel": false, "pay": false, "resume": true})
    );

    let resumed = app
        .client
        .post(app.url(&format!("/api/admin/orders/{id}/resume")))
        .header("Authorization", bearer())
        .json(&json!({"reason": "gateway fixed"}))
        .send()
        .await
        .expect("resume");
    assert_eq!(resumed.status(), StatusCode::OK);
    let confirmed = app.wait_for_status(&id, &["CONFIRMED"]).await;
    assert!(confirmed["parked_reason"].is_null(), "{confirmed:#}");
    let events: Vec<&str> = confirmed["history"]
        .as_array()
        .expect("history")
        .iter()
        .filter_map(|h| h["event"].as_str())
        .collect();
    let parked_at = events.iter().position(|e| *e == "parked").expect("parked");
    assert_eq!(events[parked_at + 1], "resumed", "{events:?}");
    assert_eq!(
        confirmed["history"][parked_at + 1]["reason"],
        "gateway fixed",
        "{confirmed:#}"
    );
    let again = app
        .admin_send(
            reqwest::Method::POST,
            &format!("/api/admin/orders/{id}/resume"),
        )
        .await;
    expect_problem(again, StatusCode::CONFLICT, Some("order-not-parked")).await;

    let letter_id = letter["id"].as_str().expect("id");
    let replayed = app
        .admin_send(
            reqwest::Method::POST,
            &format!("/api/admin/dead-letters/{letter_id}/replay"),
        )
        .await;
    assert_eq!(replayed.status(), StatusCode::OK);
    assert_eq!(
        replayed.json::<Value>().await.expect("JSON"),
        json!({"replayed": 1})
    );
    let gone = app
        .admin_send(
            reqwest::Method::POST,
            &format!("/api/admin/dead-letters/{letter_id}/replay"),
        )
        .await;
    expect_problem(gone, StatusCode::NOT_FOUND, Some("not-found")).await;
    // Consumed again (a late duplicate for a confirmed order: acked, not dead-lettered).
    app.wait_until_quiet().await;
    let after = app.get_order(&id).await;
    assert_eq!(after["status"], "CONFIRMED");
    assert_eq!(
        after["history"], confirmed["history"],
        "the replay changed nothing"
    );
    let listing = app.admin_get("/api/admin/dead-letters").await;
    assert!(
        !dead_letters_of(&listing)
            .iter()
            .any(|d| d["id"] == letter["id"]),
        "{listing:#}"
    );
    let report = app.invariants(&[("KB-001", 100)]).await;
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
}

/// Poison messages are listed with where they died and why, and discarded one or all; a
/// replayed poison message is dead-lettered again by the consumer it went back to.
#[tokio::test]
async fn dead_letters_are_listed_replayed_to_their_queue_and_discarded() {
    let app = spawn_app_with(TestOptions::default()).await;
    let unknown = Uuid::now_v7().to_string();
    publish_raw(
        &app,
        "order.replies",
        "stock.reserved",
        &reply_for(&unknown, "stock.reserved"),
    )
    .await;
    publish_raw(&app, "order.replies", "stock.reserved", b"not json").await;
    let listing = app
        .admin_until("/api/admin/dead-letters", "two dead letters", |b| {
            b["total"] == 2
        })
        .await;
    let letters = dead_letters_of(&listing);
    assert_eq!(letters.len(), 2);
    for letter in &letters {
        assert_eq!(letter["queue"], "orchestrator.replies", "{letter:#}");
        assert_eq!(letter["exchange"], "order.replies");
        assert_eq!(letter["routing_key"], "stock.reserved");
        assert_eq!(letter["reason"], "rejected");
    }
    assert!(letters.iter().any(|l| l["body"] == "not json"));
    let poison = letters
        .iter()
        .find(|l| l["body"].as_str().is_some_and(|b| b.contains(&unknown)))
        .expect("the unknown order's reply");
    // Listing does not consume: the same two, with the same ids.
    let again = app.admin_get("/api/admin/dead-letters").await;
    assert_eq!(dead_letters_of(&again), letters);

    let dead_before = app
        .metric(
            "messages_dead_lettered_total",
            &[("queue", "orchestrator.replies")],
        )
        .await;
    let replayed = app
        .admin_send(
            reqwest::Method::POST,
            &format!(
                "/api/admin/dead-letters/{}/replay",
                poison["id"].as_str().expect("id")
            ),
        )
        .await;
    assert_eq!(
        replayed.json::<Value>().await.expect("JSON"),
        json!({"replayed": 1})
    );
    // The reply consumer took it again and, the order still unknown, dead-lettered it anew.
    let deadline = Instant::now() + DEADLINE;
    while app
        .metric(
            "messages_dead_lettered_total",
            &[("queue", "orchestrator.replies")],
        )
        .await
        < dead_before + 1.0
    {
        assert!(
            Instant::now() < deadline,
            "the replayed message was not consumed again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let listing = app
        .admin_until("/api/admin/dead-letters", "back as a dead letter", |b| {
            b["total"] == 2
        })
        .await;
    assert!(
        dead_letters_of(&listing)
            .iter()
            .any(|l| l["id"] == poison["id"])
    );

    let not_json = letters
        .iter()
        .find(|l| l["body"] == "not json")
        .expect("poison");
    let path = format!(
        "/api/admin/dead-letters/{}",
        not_json["id"].as_str().expect("id")
    );
    let discarded = app.admin_send(reqwest::Method::DELETE, &path).await;
    assert_eq!(
        discarded.json::<Value>().await.expect("JSON"),
        json!({"discarded": 1})
    );
    let twice = app.admin_send(reqwest::Method::DELETE, &path).await;
    expect_problem(twice, StatusCode::NOT_FOUND, Some("not-found")).await;
    let all = app
        .admin_send(reqwest::Method::DELETE, "/api/admin/dead-letters")
        .await;
    assert_eq!(
        all.json::<Value>().await.expect("JSON"),
        json!({"discarded": 1})
    );
    let empty = app.admin_get("/api/admin/dead-letters").await;
    assert_eq!(empty, json!({"dead_letters": [], "total": 0}));
    assert_eq!(app.order_count().await, 0, "no order was made up");
}

/// One SSE event as read off the wire.
#[derive(Debug, Clone, PartialEq)]
struct SseEvent {
    id: Option<i64>,
    kind: Option<String>,
    data: Value,
}

/// Reads an SSE response: events (each with `id`, `event`, `data`) and how many comment
/// lines (heartbeats) came, until `until` says stop or the deadline passes.
async fn read_sse(
    mut response: reqwest::Response,
    deadline: Duration,
    until: impl Fn(&[SseEvent], usize) -> bool,
) -> (Vec<SseEvent>, usize) {
    let mut buffer = String::new();
    let (mut events, mut comments) = (Vec::new(), 0usize);
    let end = Instant::now() + deadline;
    while !until(&events, comments) {
        let chunk = match timeout(
            end.saturating_duration_since(Instant::now()),
            response.chunk(),
        )
        .await
        {
            Ok(Ok(Some(chunk))) => chunk,
            _ => break,
        };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(at) = buffer.find("\n\n") {
            let block: String = buffer.drain(..at + 2).collect();
            let (mut id, mut kind, mut data) = (None, None, None);
            for line in block.lines() {
                if line.starts_with(':') {
                    comments += 1;
                } else if let Some(v) = line.strip_prefix("id: ") {
                    id = v.parse().ok();
                } else if let Some(v) = line.strip_prefix("event: ") {
                    kind = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = serde_json::from_str(v).ok();
                }
            }
            if let Some(data) = data {
                events.push(SseEvent { id, kind, data });
            }
        }
    }
    (events, comments)
}

/// The stream replays an order's events from the history after `Last-Event-ID`, in order,
/// none missed or doubled; follows new ones live, filtered by type; and sends heartbeats.
#[tokio::test]
async fn the_event_stream_resumes_after_last_event_id_and_follows_live_by_filter() {
    let app = spawn_app_with(TestOptions::default()).await;
    let first = app.create_order(&[("MS-002", 1)]).await;
    let id = first["id"].as_str().expect("id").to_owned();
    app.wait_for_terminal(&id).await;

    let stream = |query: String, last: Option<i64>| {
        let mut request = app
            .client
            .get(app.url(&format!("/api/events{query}")))
            .header("Authorization", bearer());
        if let Some(last) = last {
            request = request.header("Last-Event-ID", last.to_string());
        }
        request.send()
    };
    let response = stream(format!("?order_id={id}"), Some(0))
        .await
        .expect("GET");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .is_ok_and(|t| t.starts_with("text/event-stream")),
        "{:?}",
        response.headers()
    );
    let (events, _) = read_sse(response, DEADLINE, |e, _| e.len() >= 4).await;
    let kinds: Vec<_> = events.iter().filter_map(|e| e.kind.clone()).collect();
    assert_eq!(
        kinds,
        [
            "order.created",
            "order.stock_reserved",
            "order.paid",
            "order.confirmed"
        ]
    );
    let ids: Vec<i64> = events.iter().filter_map(|e| e.id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    for event in &events {
        assert_eq!(event.data["order_id"], id.as_str());
        assert_eq!(event.data["seq"], json!(event.id.expect("id")));
        assert_eq!(
            event.data["type"],
            json!(event.kind.clone().expect("event"))
        );
    }
    assert_eq!(events[3].data["status"], "CONFIRMED");

    // Reconnecting after the second event: the last two, nothing else.
    let response = stream(format!("?order_id={id}"), Some(ids[1]))
        .await
        .expect("GET");
    let (rest, _) = read_sse(response, Duration::from_secs(3), |e, _| e.len() > 2).await;
    assert_eq!(rest, events[2..].to_vec());

    // Live, only confirmations: the new order's arrives; nothing of the first order's past.
    let live = stream("?types=order.confirmed&heartbeat_secs=1".into(), None)
        .await
        .expect("GET");
    let second = app.create_order(&[("MS-002", 1)]).await;
    let second_id = second["id"].as_str().expect("id").to_owned();
    let (got, heartbeats) = read_sse(live, DEADLINE, |e, h| {
        e.iter().any(|e| e.data["order_id"] == second_id.as_str()) && h >= 1
    })
    .await;
    assert!(
        got.iter().any(|e| e.data["order_id"] == second_id.as_str()),
        "{got:?}"
    );
    assert!(
        got.iter()
            .all(|e| e.kind.as_deref() == Some("order.confirmed")),
        "{got:?}"
    );
    assert!(
        got.iter().all(|e| e.data["order_id"] != id.as_str()),
        "{got:?}"
    );
    assert!(heartbeats >= 1, "no heartbeat within the deadline");

    for (query, last) in [
        ("?types=order.teleported", None),
        ("?heartbeat_secs=0", None),
        ("?order_id=not-a-uuid", None),
    ] {
        let refused = stream(query.into(), last).await.expect("GET");
        expect_problem(refused, StatusCode::BAD_REQUEST, Some("bad-request")).await;
    }
    let anonymous = app
        .client
        .get(app.url("/api/events"))
        .send()
        .await
        .expect("GET");
    expect_problem(anonymous, StatusCode::UNAUTHORIZED, Some("unauthorized")).await;
    let refused = app
        .client
        .get(app.url("/api/events"))
        .header("Authorization", bearer())
        .header("Last-Event-ID", "yesterday")
        .send()
        .await
        .expect("GET");
    expect_problem(refused, StatusCode::BAD_REQUEST, Some("bad-request")).await;
}

/// The overview's counts are the orders' (per status, and parked); the list filters by
/// customer and status, pages without gaps or repeats, and finds an order by its
/// Idempotency-Key; the timeline shows what each step sent and published.
#[tokio::test]
async fn the_overview_counts_the_orders_and_the_list_filters_pages_and_searches() {
    let app = spawn_app_with(TestOptions {
        payment_mode: PaymentMode::Manual,
        ..TestOptions::default()
    })
    .await;
    let mut ids = Vec::new();
    for n in 0..5 {
        let customer = if n % 2 == 0 { "c-even" } else { "c-odd" };
        let mut body = order_body(&[("CB-004", 1)]);
        body["customer_id"] = json!(customer);
        let key = format!("console-key-{n}");
        let response = app.post_order(Some(&key), &body).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        let order: Value = response.json().await.expect("JSON");
        ids.push(order["id"].as_str().expect("id").to_owned());
    }
    for id in &ids {
        app.wait_for_status(id, &["STOCK_RESERVED"]).await;
    }
    let cancelled = app
        .patch_status(
            &ids[0],
            &json!({"status": "REVERSED", "reason": "test"}),
            Some(ADMIN_TOKEN),
        )
        .await;
    assert_eq!(cancelled.status(), StatusCode::OK);
    app.wait_for_status(&ids[0], &["REVERSED"]).await;

    let overview = app.admin_get("/api/admin/overview").await;
    let counts = &overview["orders_by_status"];
    assert_eq!(counts["STOCK_RESERVED"], 4, "{overview:#}");
    assert_eq!(counts["REVERSED"], 1);
    assert_eq!(counts["PENDING"], 0);
    assert_eq!(overview["parked"], 0);
    assert_eq!(overview["dead_letters"], 0);
    assert_eq!(
        overview["broker"],
        json!({"kind": "rabbitmq", "connected": true})
    );
    assert_eq!(overview["database"], json!({"ok": true}));
    let points = overview["throughput"].as_array().expect("points");
    assert_eq!(points.len(), 30);
    let finished: u64 = points.iter().filter_map(|p| p["completed"].as_u64()).sum();
    assert_eq!(
        finished, 1,
        "one saga ended here (the reversed one): {overview:#}"
    );

    let odd = app.admin_get("/api/admin/orders?customer=c-odd").await;
    let odd_ids: Vec<&str> = odd["orders"]
        .as_array()
        .expect("orders")
        .iter()
        .filter_map(|o| o["id"].as_str())
        .collect();
    assert_eq!(odd_ids, [ids[3].as_str(), ids[1].as_str()], "newest first");
    let reversed = app.admin_get("/api/admin/orders?status=REVERSED").await;
    assert_eq!(reversed["orders"][0]["id"], ids[0].as_str());
    assert_eq!(reversed["orders"].as_array().map(Vec::len), Some(1));

    let mut seen = Vec::new();
    let mut path = "/api/admin/orders?limit=2".to_owned();
    loop {
        let page = app.admin_get(&path).await;
        seen.extend(
            page["orders"]
                .as_array()
                .expect("orders")
                .iter()
                .filter_map(|o| o["id"].as_str().map(str::to_owned)),
        );
        match page["next"].as_str() {
            Some(next) => path = format!("/api/admin/orders?limit=2&before={next}"),
            None => break,
        }
    }
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first);

    let by_key = app.admin_get("/api/admin/orders?q=console-key-2").await;
    assert_eq!(by_key["orders"][0]["id"], ids[2].as_str());
    assert_eq!(by_key["orders"].as_array().map(Vec::len), Some(1));
    let by_id = app
        .admin_get(&format!("/api/admin/orders?q={}", ids[4]))
        .await;
    assert_eq!(by_id["orders"][0]["id"], ids[4].as_str());
    let none = app.admin_get("/api/admin/orders?q=no-such-key").await;
    assert_eq!(none, json!({"orders": [], "next": null}));
    for bad in [
        "?before=yesterday",
        "?status=LOST",
        "?limit=0",
        "?from=monday",
    ] {
        let refused = app
            .admin_send(reqwest::Method::GET, &format!("/api/admin/orders{bad}"))
            .await;
        expect_problem(refused, StatusCode::BAD_REQUEST, Some("bad-request")).await;
    }

    let timeline = app
        .admin_get(&format!("/api/admin/orders/{}", ids[0]))
        .await;
    let steps = timeline["timeline"].as_array().expect("timeline");
    assert_eq!(steps[0]["commands"], json!(["stock.reserve"]));
    assert_eq!(steps[0]["published"], json!(["order.created"]));
    assert_eq!(steps[0]["received"], Value::Null);
    assert_eq!(steps[1]["received"], "stock.reserved");
    assert_eq!(steps[1]["published"], json!(["order.stock_reserved"]));
    let cancel = steps
        .iter()
        .find(|s| s["event"] == "admin_override")
        .expect("the cancel");
    assert_eq!(cancel["commands"], json!(["stock.release"]));
    assert_eq!(cancel["published"], json!(["order.cancelled"]));
    assert_eq!(steps.last().expect("last")["status"], "REVERSED");
    assert_eq!(
        timeline["actions"],
        json!({"cancel": false, "pay": false, "resume": false})
    );
    let waiting = app
        .admin_get(&format!("/api/admin/orders/{}", ids[1]))
        .await;
    assert_eq!(
        waiting["actions"],
        json!({"cancel": true, "pay": true, "resume": false})
    );
    assert_eq!(waiting["payment_mode"], "manual");
    let missing = app
        .admin_send(
            reqwest::Method::GET,
            &format!("/api/admin/orders/{}", Uuid::now_v7()),
        )
        .await;
    expect_problem(missing, StatusCode::NOT_FOUND, Some("not-found")).await;
}

/// Without the token every console page redirects to the login and every admin endpoint is
/// 401; the login sets an HttpOnly, SameSite=Strict cookie (never the token itself), which
/// then opens the pages and the data, but a change made with it needs the console's CSRF
/// header; logout ends it.
#[tokio::test]
async fn the_console_needs_a_session_and_its_changes_need_the_csrf_header() {
    let app = spawn_app_with(TestOptions {
        payment_mode: PaymentMode::Manual,
        ..TestOptions::default()
    })
    .await;
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    for page in ["/console", "/console/"] {
        let response = browser.get(app.url(page)).send().await.expect("GET");
        assert_eq!(response.status(), StatusCode::SEE_OTHER, "{page}");
        assert_eq!(response.headers()["location"], "/console/login");
    }
    for path in [
        "/api/admin/overview",
        "/api/admin/session",
        "/api/admin/orders",
        "/api/admin/dead-letters",
        "/api/admin/invariants",
        "/api/events",
    ] {
        let response = browser.get(app.url(path)).send().await.expect("GET");
        expect_problem(response, StatusCode::UNAUTHORIZED, Some("unauthorized")).await;
    }
    let login = browser
        .get(app.url("/console/login"))
        .send()
        .await
        .expect("GET");
    assert_eq!(login.status(), StatusCode::OK);
    let csp = login.headers()["content-security-policy"]
        .to_str()
        .expect("CSP")
        .to_owned();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    for script in ["/console/assets/app.js", "/console/assets/app.css"] {
        let asset = browser.get(app.url(script)).send().await.expect("GET");
        assert_eq!(asset.status(), StatusCode::OK, "{script}");
    }

    let wrong = browser
        .post(app.url("/console/login"))
        .form(&[("token", "not-the-admin-token")])
        .send()
        .await
        .expect("POST");
    assert_eq!(wrong.status(), StatusCode::SEE_OTHER);
    assert_eq!(wrong.headers()["location"], "/console/login?failed=1");
    assert!(wrong.headers().get("set-cookie").is_none());
    let right = browser
        .post(app.url("/console/login"))
        .form(&[("token", ADMIN_TOKEN)])
        .send()
        .await
        .expect("POST");
    assert_eq!(right.status(), StatusCode::SEE_OTHER);
    assert_eq!(right.headers()["location"], "/console");
    let set_cookie = right.headers()["set-cookie"]
        .to_str()
        .expect("cookie")
        .to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    assert!(
        !set_cookie.contains(ADMIN_TOKEN),
        "the cookie must not carry the token"
    );
    let cookie = set_cookie.split(';').next().expect("name=value").to_owned();

    let page = browser
        .get(app.url("/console"))
        .header("Cookie", &cookie)
        .send()
        .await
        .expect("GET");
    assert_eq!(page.status(), StatusCode::OK);
    let overview = browser
        .get(app.url("/api/admin/overview"))
        .header("Cookie", &cookie)
        .send()
        .await
        .expect("GET");
    assert_eq!(overview.status(), StatusCode::OK);

    let order = app.create_order(&[("HS-005", 1)]).await;
    let id = order["id"].as_str().expect("id").to_owned();
    app.wait_for_status(&id, &["STOCK_RESERVED"]).await;
    let cancel = |csrf: bool| {
        let mut request = browser
            .patch(app.url(&format!("/api/orders/{id}/status")))
            .header("Cookie", &cookie)
            .json(&json!({"status": "REVERSED", "reason": "from the console"}));
        if csrf {
            request = request.header("X-Requested-By", "console");
        }
        request.send()
    };
    let forged = cancel(false).await.expect("PATCH");
    expect_problem(forged, StatusCode::FORBIDDEN, Some("forbidden")).await;
    assert_eq!(
        app.get_order(&id).await["status"],
        "STOCK_RESERVED",
        "changed nothing"
    );
    let done = cancel(true).await.expect("PATCH");
    assert_eq!(done.status(), StatusCode::OK);
    app.wait_for_status(&id, &["REVERSED"]).await;

    let tampered = cookie.replace(|c: char| c.is_ascii_digit(), "7");
    let refused = browser
        .get(app.url("/api/admin/overview"))
        .header("Cookie", &tampered)
        .send()
        .await
        .expect("GET");
    expect_problem(refused, StatusCode::UNAUTHORIZED, Some("unauthorized")).await;

    let logout = browser
        .post(app.url("/console/logout"))
        .header("Cookie", &cookie)
        .send()
        .await
        .expect("POST");
    assert_eq!(logout.status(), StatusCode::SEE_OTHER);
    let cleared = logout.headers()["set-cookie"].to_str().expect("cookie");
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
}

/// The API documentation page and the console load nothing from elsewhere: every script
/// and style they name is served by the service.
#[tokio::test]
async fn the_api_docs_page_and_the_console_need_no_network() {
    let app = spawn_app_with(TestOptions {
        embedded: true,
        ..TestOptions::default()
    })
    .await;
    for page in ["/api-docs", "/console/login"] {
        let html = app
            .client
            .get(app.url(page))
            .send()
            .await
            .expect("GET")
            .text()
            .await
            .expect("HTML");
        assert!(
            !html.contains("http://") && !html.contains("https://") && !html.contains("//cdn"),
            "{page} names another origin:\n{html}"
        );
        let assets: Vec<&str> = html
            .split(['"', '\''])
            .filter(|s| s.starts_with('/') && (s.ends_with(".js") || s.ends_with(".css")))
            .collect();
        assert!(
            !assets.is_empty(),
            "{page} loads no script or style?\n{html}"
        );
        for asset in assets {
            let response = app.client.get(app.url(asset)).send().await.expect("GET");
            assert_eq!(response.status(), StatusCode::OK, "{asset}");
            let kind = if asset.ends_with(".js") {
                "javascript"
            } else {
                "css"
            };
            assert!(
                response.headers()["content-type"]
                    .to_str()
                    .is_ok_and(|t| t.contains(kind)),
                "{asset}: {:?}",
                response.headers()["content-type"]
            );
            assert!(!response.bytes().await.expect("body").is_empty(), "{asset}");
        }
    }
}
