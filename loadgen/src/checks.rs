//! Before and after the load, through the API: stock of the SKUs used (set with `--stock`),
//! and the service's own invariant report.

use anyhow::{Context, bail};
use reqwest::StatusCode;
use reqwest::header::AUTHORIZATION;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;

/// `GET /api/inventory/{sku}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StockView {
    pub sku: String,
    pub price_cents: i64,
    pub available: i64,
    pub reserved: i64,
    pub sold: i64,
}

impl StockView {
    /// Conserved by every saga: a reservation moves available to reserved, a release moves
    /// it back, a confirmation moves it to sold.
    pub fn total(&self) -> i64 {
        self.available + self.reserved + self.sold
    }
}

/// `GET /api/admin/invariants`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InvariantReport {
    pub holds: bool,
    #[serde(default)]
    pub orders_by_status: BTreeMap<String, u64>,
    pub in_flight: u64,
    pub parked: u64,
    pub violations: Vec<String>,
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Fails with the status and body of an unexpected answer.
async fn unexpected(what: &str, response: reqwest::Response) -> anyhow::Error {
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    let body: String = body.chars().take(300).collect();
    anyhow::anyhow!("{what}: HTTP {status}: {body}")
}

pub async fn stock(
    client: &reqwest::Client,
    base: &str,
    sku: &str,
) -> anyhow::Result<Option<StockView>> {
    let response = client
        .get(format!("{base}/api/inventory/{sku}"))
        .send()
        .await
        .with_context(|| format!("GET /api/inventory/{sku}"))?;
    match response.status() {
        StatusCode::OK => {
            Ok(Some(response.json().await.with_context(|| {
                format!("reading GET /api/inventory/{sku}")
            })?))
        }
        StatusCode::NOT_FOUND => Ok(None),
        _ => Err(unexpected(&format!("GET /api/inventory/{sku}"), response).await),
    }
}

pub async fn put_stock(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    sku: &str,
    available: i64,
    price_cents: i64,
) -> anyhow::Result<StockView> {
    let response = client
        .put(format!("{base}/api/inventory/{sku}"))
        .header(AUTHORIZATION, bearer(token))
        .json(&json!({ "available": available, "price_cents": price_cents }))
        .send()
        .await
        .with_context(|| format!("PUT /api/inventory/{sku}"))?;
    if response.status() != StatusCode::OK {
        return Err(unexpected(&format!("PUT /api/inventory/{sku}"), response).await);
    }
    response
        .json()
        .await
        .with_context(|| format!("reading PUT /api/inventory/{sku}"))
}

pub async fn invariants(
    client: &reqwest::Client,
    base: &str,
    token: &str,
) -> anyhow::Result<InvariantReport> {
    let response = client
        .get(format!("{base}/api/admin/invariants"))
        .header(AUTHORIZATION, bearer(token))
        .send()
        .await
        .context("GET /api/admin/invariants")?;
    if response.status() != StatusCode::OK {
        return Err(unexpected("GET /api/admin/invariants", response).await);
    }
    response
        .json()
        .await
        .context("reading GET /api/admin/invariants")
}

/// The service answers at all (`GET /health/live`), so a wrong URL fails fast.
pub async fn live(client: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    let response = client
        .get(format!("{base}/health/live"))
        .send()
        .await
        .with_context(|| format!("the service at {base} does not answer"))?;
    if !response.status().is_success() {
        bail!(
            "the service at {base} is not live: GET /health/live answered {}",
            response.status()
        );
    }
    Ok(())
}
