//! `--follow events`: every saga followed through one `GET /api/events` stream (Server-Sent
//! Events, filtered to the terminal and parked types) instead of one long poll per order.
//! Events are handed to the order's waiting follower; one that arrives before its order's
//! create call has returned is kept (bounded) until the follower asks. A dropped stream is
//! reopened with `Last-Event-ID`, which the service answers from its stored history, so no
//! event is lost.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The event types the followers need.
pub const TYPES: &str = "order.confirmed,order.reversed,order.rejected,order.parked";
/// Terminal events kept for orders nobody waits for yet, and for how long.
const EARLY_MAX: usize = 100_000;
const EARLY_FOR: Duration = Duration::from_secs(120);
/// Pause before reopening a dropped stream.
const RECONNECT: Duration = Duration::from_millis(200);

/// One event as the followers need it.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderEvent {
    pub order_id: Uuid,
    pub kind: String,
    pub status: String,
    pub at: chrono::DateTime<chrono::Utc>,
}

#[derive(serde::Deserialize)]
struct EventData {
    order_id: Uuid,
    #[serde(rename = "type")]
    kind: String,
    status: String,
    at: chrono::DateTime<chrono::Utc>,
}

/// One SSE message: its `id:`, `event:` and (joined) `data:` lines.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Message {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

/// Splits an SSE body into messages, whatever the chunk boundaries.
#[derive(Default)]
pub struct Parser {
    buffer: String,
    current: Message,
    has_data: bool,
}

impl Parser {
    pub fn push(&mut self, chunk: &str) -> Vec<Message> {
        self.buffer.push_str(chunk);
        let mut out = Vec::new();
        while let Some(end) = self.buffer.find('\n') {
            let line: String = self.buffer.drain(..=end).collect();
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                let message = std::mem::take(&mut self.current);
                if std::mem::take(&mut self.has_data) {
                    out.push(message);
                }
                continue;
            }
            if line.starts_with(':') {
                continue; // a comment: the heartbeat
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => self.current.id = Some(value.to_owned()),
                "event" => self.current.event = Some(value.to_owned()),
                "data" => {
                    if self.has_data {
                        self.current.data.push('\n');
                    }
                    self.current.data.push_str(value);
                    self.has_data = true;
                }
                _ => {}
            }
        }
        out
    }
}

/// Where the stream's events meet the followers.
#[derive(Default)]
pub struct Dispatch {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    waiting: HashMap<Uuid, oneshot::Sender<OrderEvent>>,
    early: HashMap<Uuid, (OrderEvent, Instant)>,
}

impl Dispatch {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The order's event: at once if it already came, else when it comes.
    pub fn wait_for(&self, order_id: Uuid) -> oneshot::Receiver<OrderEvent> {
        let (sender, receiver) = oneshot::channel();
        let mut inner = self.lock();
        match inner.early.remove(&order_id) {
            Some((event, _)) => {
                let _ = sender.send(event);
            }
            None => {
                inner.waiting.insert(order_id, sender);
            }
        }
        receiver
    }

    /// Hands an event to its follower, or keeps it for a while.
    pub fn deliver(&self, event: OrderEvent) {
        let mut inner = self.lock();
        if let Some(waiter) = inner.waiting.remove(&event.order_id) {
            let _ = waiter.send(event);
            return;
        }
        if inner.early.len() >= EARLY_MAX {
            inner.early.retain(|_, (_, at)| at.elapsed() < EARLY_FOR);
        }
        if inner.early.len() < EARLY_MAX {
            inner.early.insert(event.order_id, (event, Instant::now()));
        }
    }
}

/// Opens the stream (before the load starts), then reads it on a task until `stop`,
/// reopening it with `Last-Event-ID` when it drops. Fails if the first open fails.
pub async fn start(
    client: reqwest::Client,
    base: String,
    token: String,
    dispatch: std::sync::Arc<Dispatch>,
    stop: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<u64>> {
    let url = format!("{}/api/events?types={TYPES}", base.trim_end_matches('/'));
    let first = open(&client, &url, &token, None).await?;
    Ok(tokio::spawn(async move {
        let mut response = Some(first);
        let mut last: Option<String> = None;
        let mut reconnects = 0u64;
        loop {
            let current = match response.take() {
                Some(r) => r,
                None => {
                    tokio::select! {
                        () = stop.cancelled() => return reconnects,
                        () = tokio::time::sleep(RECONNECT) => {}
                    }
                    reconnects += 1;
                    match open(&client, &url, &token, last.as_deref()).await {
                        Ok(r) => r,
                        Err(_) => continue,
                    }
                }
            };
            tokio::select! {
                () = stop.cancelled() => return reconnects,
                () = read(current, &dispatch, &mut last) => {}
            }
        }
    }))
}

async fn open(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    last: Option<&str>,
) -> anyhow::Result<reqwest::Response> {
    let mut request = client
        .get(url)
        .bearer_auth(token)
        .header("Accept", "text/event-stream")
        // The stream has no end; only connecting is bounded.
        .timeout(Duration::from_secs(365 * 24 * 3600));
    if let Some(last) = last {
        request = request.header("Last-Event-ID", last);
    }
    let response = request.send().await?;
    anyhow::ensure!(
        response.status().is_success(),
        "GET /api/events answered {} (it needs --admin-token)",
        response.status()
    );
    Ok(response)
}

/// Reads one connection until it ends.
async fn read(mut response: reqwest::Response, dispatch: &Dispatch, last: &mut Option<String>) {
    let mut parser = Parser::default();
    while let Ok(Some(chunk)) = response.chunk().await {
        for message in parser.push(&String::from_utf8_lossy(&chunk)) {
            if message.id.is_some() {
                last.clone_from(&message.id);
            }
            if let Ok(data) = serde_json::from_str::<EventData>(&message.data) {
                dispatch.deliver(OrderEvent {
                    order_id: data.order_id,
                    kind: data.kind,
                    status: data.status,
                    at: data.at,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_found_across_chunks_and_heartbeats_are_skipped() {
        let mut parser = Parser::default();
        let mut got = parser.push("retry: 1000\n\n: heartbeat\n\nid: 7\nevent: order.con");
        assert!(got.is_empty(), "{got:?}");
        got = parser.push("firmed\ndata: {\"a\":\ndata: 1}\n\n");
        assert_eq!(
            got,
            [Message {
                id: Some("7".into()),
                event: Some("order.confirmed".into()),
                data: "{\"a\":\n1}".into(),
            }]
        );
        got = parser.push("id: 8\r\ndata:x\r\n\r\nid: 9\n");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].data, "x");
        assert!(parser.push("\n").is_empty(), "no data, no message");
    }

    fn event(id: Uuid) -> OrderEvent {
        OrderEvent {
            order_id: id,
            kind: "order.confirmed".into(),
            status: "CONFIRMED".into(),
            at: chrono::Utc::now(),
        }
    }

    #[tokio::test]
    async fn an_event_that_comes_before_its_follower_is_kept_for_it() {
        let dispatch = Dispatch::default();
        let (early, late) = (Uuid::new_v4(), Uuid::new_v4());
        dispatch.deliver(event(early));
        let got = dispatch.wait_for(early).await.expect("kept");
        assert_eq!(got.order_id, early);
        let waiting = dispatch.wait_for(late);
        dispatch.deliver(event(late));
        assert_eq!(waiting.await.expect("delivered").order_id, late);
        assert!(dispatch.lock().early.is_empty() && dispatch.lock().waiting.is_empty());
    }
}
