//! The OpenAPI 3.1 contract: the document served at `/api-docs/openapi.json` is the
//! checked-in `openapi.json`, parses as OpenAPI 3.1, documents every endpoint with its
//! status codes, headers and problem+json errors, and agrees with what the service really
//! answers (status codes and bodies checked against the documented schemas).
//!
//! Regenerate the checked-in file with `UPDATE_OPENAPI=1 cargo test --test api openapi`.

use crate::helpers::{ADMIN_TOKEN, PROBLEM_JSON, TestApp, check_problem, order_body, spawn_app};
use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use uuid::Uuid;

const REGENERATE: &str = "UPDATE_OPENAPI=1 cargo test --test api openapi";
const PROBLEM_REF: &str = "#/components/schemas/Problem";

fn checked_in_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("openapi.json")
}

/// `GET /api-docs/openapi.json` from the running service.
async fn served_document(app: &TestApp) -> Value {
    let response = app
        .client
        .get(app.url("/api-docs/openapi.json"))
        .send()
        .await
        .expect("GET /api-docs/openapi.json");
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "content type {content_type:?}"
    );
    response.json().await.expect("the document is JSON")
}

/// Every endpoint of the service, by operationId, with the status codes its handler can
/// return (read from the handler, its extractors and `ApiError`). The document must list
/// exactly these.
fn expected_operations() -> BTreeMap<&'static str, (&'static str, &'static str, Vec<u16>)> {
    let problems_db = [500, 503];
    let with_db = |codes: &[u16]| {
        let mut all = codes.to_vec();
        all.extend(problems_db);
        all
    };
    BTreeMap::from([
        (
            "create_order",
            (
                "post",
                "/api/orders",
                with_db(&[201, 400, 408, 409, 413, 415, 422]),
            ),
        ),
        ("list_orders", ("get", "/api/orders", with_db(&[200, 400]))),
        (
            "get_order",
            ("get", "/api/orders/{id}", with_db(&[200, 400, 404])),
        ),
        (
            "override_status",
            (
                "patch",
                "/api/orders/{id}/status",
                with_db(&[200, 400, 401, 403, 404, 408, 409, 413, 415, 422]),
            ),
        ),
        (
            "pay_order",
            (
                "post",
                "/api/orders/{id}/pay",
                with_db(&[202, 400, 404, 408, 409, 413, 422]),
            ),
        ),
        ("list_inventory", ("get", "/api/inventory", with_db(&[200]))),
        (
            "get_stock",
            ("get", "/api/inventory/{sku}", with_db(&[200, 400, 404])),
        ),
        (
            "put_stock",
            (
                "put",
                "/api/inventory/{sku}",
                with_db(&[200, 400, 401, 403, 404, 408, 413, 415, 422]),
            ),
        ),
        (
            "adjust_stock",
            (
                "patch",
                "/api/inventory/{sku}",
                with_db(&[200, 400, 401, 403, 404, 409, 413, 415, 422]),
            ),
        ),
        (
            "get_invariants",
            (
                "get",
                "/api/admin/invariants",
                with_db(&[200, 401, 403, 404]),
            ),
        ),
        (
            "get_admin_session",
            ("get", "/api/admin/session", vec![200, 401, 403, 404, 500]),
        ),
        (
            "get_admin_overview",
            ("get", "/api/admin/overview", vec![200, 401, 403, 404, 500]),
        ),
        (
            "list_admin_orders",
            (
                "get",
                "/api/admin/orders",
                with_db(&[200, 400, 401, 403, 404]),
            ),
        ),
        (
            "get_admin_order",
            (
                "get",
                "/api/admin/orders/{id}",
                with_db(&[200, 400, 401, 403, 404]),
            ),
        ),
        (
            "resume_order",
            (
                "post",
                "/api/admin/orders/{id}/resume",
                with_db(&[200, 400, 401, 403, 404, 408, 409, 413, 422]),
            ),
        ),
        (
            "list_dead_letters",
            (
                "get",
                "/api/admin/dead-letters",
                with_db(&[200, 400, 401, 403, 404]),
            ),
        ),
        (
            "replay_dead_letter",
            (
                "post",
                "/api/admin/dead-letters/{id}/replay",
                with_db(&[200, 401, 403, 404, 409]),
            ),
        ),
        (
            "replay_dead_letters",
            (
                "post",
                "/api/admin/dead-letters/replay",
                with_db(&[200, 401, 403, 404, 409]),
            ),
        ),
        (
            "discard_dead_letter",
            (
                "delete",
                "/api/admin/dead-letters/{id}",
                with_db(&[200, 401, 403, 404]),
            ),
        ),
        (
            "discard_dead_letters",
            (
                "delete",
                "/api/admin/dead-letters",
                with_db(&[200, 401, 403, 404]),
            ),
        ),
        (
            "stream_events",
            ("get", "/api/events", vec![200, 400, 401, 403, 404, 500]),
        ),
        ("health_live", ("get", "/health/live", vec![200])),
        ("health_ready", ("get", "/health/ready", vec![200, 503])),
        ("get_metrics", ("get", "/metrics", vec![200])),
        ("get_openapi", ("get", "/api-docs/openapi.json", vec![200])),
        ("get_api_docs_page", ("get", "/api-docs", vec![200])),
    ])
}

const ADMIN_OPERATIONS: [&str; 15] = [
    "stream_events",
    "override_status",
    "put_stock",
    "adjust_stock",
    "get_invariants",
    "get_admin_session",
    "get_admin_overview",
    "list_admin_orders",
    "get_admin_order",
    "resume_order",
    "list_dead_letters",
    "replay_dead_letter",
    "replay_dead_letters",
    "discard_dead_letter",
    "discard_dead_letters",
];

/// The operation object at `method path`.
fn operation<'a>(doc: &'a Value, method: &str, path: &str) -> &'a Value {
    let op = &doc["paths"][path][method];
    assert!(op.is_object(), "{method} {path} is not documented");
    op
}

/// The status codes an operation documents.
fn documented_statuses(doc: &Value, method: &str, path: &str) -> BTreeSet<u16> {
    operation(doc, method, path)["responses"]
        .as_object()
        .expect("responses")
        .keys()
        .map(|k| {
            k.parse()
                .unwrap_or_else(|_| panic!("status {k:?} is not a code"))
        })
        .collect()
}

/// Resolves a local `$ref` (`#/a/b`) in the document.
fn resolve<'a>(doc: &'a Value, reference: &str) -> Option<&'a Value> {
    doc.pointer(reference.strip_prefix('#')?)
}

/// Every `$ref` in the document, with where it is.
fn references(value: &Value, at: String, found: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                if key == "$ref"
                    && let Some(target) = child.as_str()
                {
                    found.push((at.clone(), target.to_owned()));
                }
                references(child, format!("{at}/{key}"), found);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                references(child, format!("{at}/{i}"), found);
            }
        }
        _ => {}
    }
}

/// Checks `value` against `schema` (the JSON Schema 2020-12 subset utoipa emits: `$ref`,
/// `type` as a string or a list, `enum`, `properties`, `required`, `additionalProperties`,
/// `items`, `oneOf`/`anyOf`/`allOf`, numeric and length bounds, `uuid` and `date-time`
/// formats). Stricter than JSON Schema in one way: an object member that the schema does
/// not name is an error unless `additionalProperties` allows it, so an undocumented field
/// in a response is caught.
fn check_schema(doc: &Value, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        match resolve(doc, reference) {
            Some(target) => check_schema(doc, target, value, at, errors),
            None => errors.push(format!("{at}: unresolvable $ref {reference}")),
        }
        return;
    }
    for (keyword, need) in [("oneOf", Some(1)), ("anyOf", None)] {
        if let Some(alternatives) = schema.get(keyword).and_then(Value::as_array) {
            let matching = alternatives
                .iter()
                .filter(|alternative| {
                    let mut sub = Vec::new();
                    check_schema(doc, alternative, value, at, &mut sub);
                    sub.is_empty()
                })
                .count();
            let ok = match need {
                Some(n) => matching == n,
                None => matching > 0,
            };
            if !ok {
                errors.push(format!(
                    "{at}: {value} matches {matching} of the {keyword} alternatives"
                ));
            }
        }
    }
    if let Some(parts) = schema.get("allOf").and_then(Value::as_array) {
        for part in parts {
            check_schema(doc, part, value, at, errors);
        }
    }
    if let Some(types) = schema.get("type") {
        let types: Vec<&str> = match types {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        let is = |t: &str| match t {
            "null" => value.is_null(),
            "boolean" => value.is_boolean(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "string" => value.is_string(),
            "array" => value.is_array(),
            "object" => value.is_object(),
            _ => false,
        };
        if !types.iter().any(|t| is(t)) {
            errors.push(format!("{at}: {value} is not of type {types:?}"));
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        errors.push(format!("{at}: {value} is not one of {allowed:?}"));
    }
    if let Some(n) = value.as_f64() {
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
            && n < min
        {
            errors.push(format!("{at}: {n} < minimum {min}"));
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
            && n > max
        {
            errors.push(format!("{at}: {n} > maximum {max}"));
        }
    }
    if let Some(text) = value.as_str() {
        let chars = text.chars().count() as u64;
        if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
            && chars < min
        {
            errors.push(format!("{at}: {text:?} shorter than {min}"));
        }
        if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
            && chars > max
        {
            errors.push(format!("{at}: {text:?} longer than {max}"));
        }
        match schema.get("format").and_then(Value::as_str) {
            Some("uuid") if Uuid::parse_str(text).is_err() => {
                errors.push(format!("{at}: {text:?} is not a UUID"));
            }
            Some("date-time") if chrono::DateTime::parse_from_rfc3339(text).is_err() => {
                errors.push(format!("{at}: {text:?} is not an RFC 3339 date-time"));
            }
            _ => {}
        }
    }
    if let Some(items) = value.as_array() {
        if let Some(item_schema) = schema.get("items") {
            for (i, item) in items.iter().enumerate() {
                check_schema(doc, item_schema, item, &format!("{at}[{i}]"), errors);
            }
        }
        if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
            && (items.len() as u64) < min
        {
            errors.push(format!("{at}: fewer than {min} items"));
        }
        if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
            && (items.len() as u64) > max
        {
            errors.push(format!("{at}: more than {max} items"));
        }
    }
    if let Some(object) = value.as_object() {
        let properties = schema.get("properties").and_then(Value::as_object);
        for name in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !object.contains_key(name) {
                errors.push(format!("{at}: required member {name:?} is missing"));
            }
        }
        let additional = schema.get("additionalProperties");
        for (name, member) in object {
            let member_at = format!("{at}.{name}");
            match (properties.and_then(|p| p.get(name)), additional) {
                (Some(member_schema), _) => {
                    check_schema(doc, member_schema, member, &member_at, errors);
                }
                (None, Some(Value::Bool(true))) => {}
                (None, Some(extra @ Value::Object(_))) => {
                    check_schema(doc, extra, member, &member_at, errors);
                }
                (None, _) if properties.is_some() || additional.is_some() => {
                    errors.push(format!("{member_at}: not documented"));
                }
                (None, _) => {}
            }
        }
    }
}

/// The schema of the `media_type` content of `status` in `method path`.
fn response_schema<'a>(
    doc: &'a Value,
    method: &str,
    path: &str,
    status: u16,
    media_type: &str,
) -> &'a Value {
    let schema = &operation(doc, method, path)["responses"][status.to_string()]["content"]
        [media_type]["schema"];
    assert!(
        schema.is_object(),
        "{method} {path} documents no {media_type} body for {status}"
    );
    schema
}

/// Asserts that `body` conforms to the documented `media_type` body of `status`.
fn assert_conforms(
    doc: &Value,
    (method, path): (&str, &str),
    status: u16,
    media_type: &str,
    body: &Value,
) {
    let schema = response_schema(doc, method, path, status, media_type);
    let mut errors = Vec::new();
    check_schema(doc, schema, body, "$", &mut errors);
    assert!(
        errors.is_empty(),
        "{method} {path} {status}: the body does not match the documented schema:\n{}\nbody: {body:#}",
        errors.join("\n")
    );
}

/// Asserts that a real error response of `method path` has a documented status, is
/// problem+json (via the helpers' `check_problem`) and conforms to the `Problem` schema.
async fn assert_documented_problem(
    doc: &Value,
    (method, path): (&str, &str),
    response: reqwest::Response,
    expected: StatusCode,
) -> Value {
    let status = response.status();
    let documented = documented_statuses(doc, method, path);
    assert!(
        documented.contains(&status.as_u16()),
        "{method} {path} answered {status}, which it does not document ({documented:?})"
    );
    if status == StatusCode::UNAUTHORIZED {
        assert_eq!(
            response
                .headers()
                .get(header::WWW_AUTHENTICATE)
                .map(|v| v.as_bytes()),
            Some(&b"Bearer"[..]),
            "401 without WWW-Authenticate"
        );
    }
    let problem = check_problem(response, expected, None)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: not the expected problem: {e}"));
    assert_conforms(doc, (method, path), status.as_u16(), PROBLEM_JSON, &problem);
    problem
}

#[tokio::test]
async fn openapi_served_document_is_the_checked_in_openapi_json() {
    let app = spawn_app().await;
    let served = served_document(&app).await;
    let path = checked_in_path();
    if std::env::var_os("UPDATE_OPENAPI").is_some_and(|v| v == "1") {
        let text = serde_json::to_string_pretty(&served).expect("serializable") + "\n";
        std::fs::write(&path, text).expect("write openapi.json");
        eprintln!("wrote {}", path.display());
        return;
    }
    let stale = format!("openapi.json is stale; regenerate with: {REGENERATE}");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {} ({e}). {stale}", path.display()));
    let checked_in: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON ({e}). {stale}", path.display()));
    assert!(served == checked_in, "{stale}");
}

#[tokio::test]
async fn openapi_document_is_valid_openapi_3_1() {
    let app = spawn_app().await;
    let doc = served_document(&app).await;

    // Version, and a real OpenAPI 3.1 model.
    let version = doc["openapi"].as_str().expect("openapi version");
    assert!(version.starts_with("3.1"), "openapi is {version:?}");
    let spec = oas3::from_json(doc.to_string()).expect("parses as an OpenAPI 3.1 document");
    let parsed = spec.validate_version().expect("an OpenAPI 3.1.x version");
    assert_eq!((parsed.major, parsed.minor), (3, 1));

    // Every $ref resolves (in the raw document, and through the model).
    let mut refs = Vec::new();
    references(&doc, "#".into(), &mut refs);
    assert!(!refs.is_empty(), "the document uses no $ref at all?");
    for (at, target) in &refs {
        assert!(
            resolve(&doc, target).is_some(),
            "$ref {target} at {at} does not resolve"
        );
    }
    for (path, method, op) in spec.operations() {
        let name = format!("{method} {path}");
        for parameter in &op.parameters {
            parameter
                .resolve(&spec)
                .unwrap_or_else(|e| panic!("{name}: parameter: {e}"));
        }
        if let Some(body) = &op.request_body {
            let body = body
                .resolve(&spec)
                .unwrap_or_else(|e| panic!("{name}: request body: {e}"));
            for (media_type, content) in &body.content {
                if let Some(schema) = &content.schema {
                    schema
                        .resolve(&spec)
                        .unwrap_or_else(|e| panic!("{name}: request {media_type}: {e}"));
                }
            }
        }
        for (status, response) in op.responses.iter().flatten() {
            let response = response
                .resolve(&spec)
                .unwrap_or_else(|e| panic!("{name} {status}: {e}"));
            for header in response.headers.values() {
                header
                    .resolve(&spec)
                    .unwrap_or_else(|e| panic!("{name} {status}: header: {e}"));
            }
            for (media_type, content) in &response.content {
                if let Some(schema) = &content.schema {
                    schema
                        .resolve(&spec)
                        .unwrap_or_else(|e| panic!("{name} {status} {media_type}: {e}"));
                }
            }
        }
    }

    // Exactly the expected endpoints, each with a unique operationId and exactly the
    // status codes its handler can return.
    let expected = expected_operations();
    let mut seen = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            let id = op["operationId"]
                .as_str()
                .filter(|id| !id.is_empty())
                .unwrap_or_else(|| panic!("{method} {path} has no operationId"));
            assert!(seen.insert(id.to_owned()), "operationId {id} is not unique");
            let (expected_method, expected_path, statuses) = expected
                .get(id)
                .unwrap_or_else(|| panic!("unexpected operation {id} ({method} {path})"));
            assert_eq!(
                (method.as_str(), path.as_str()),
                (*expected_method, *expected_path)
            );
            let documented = documented_statuses(&doc, method, path);
            assert_eq!(
                documented,
                statuses.iter().copied().collect::<BTreeSet<_>>(),
                "{id}: documented status codes"
            );
            assert!(
                documented.iter().any(|s| (200..300).contains(s)),
                "{id} documents no 2xx"
            );
            assert!(
                op["tags"].as_array().is_some_and(|t| !t.is_empty()),
                "{id} has no tag"
            );
            assert!(
                op["summary"].as_str().is_some_and(|s| !s.is_empty()),
                "{id} has no summary"
            );

            for (status, response) in op["responses"].as_object().expect("responses") {
                let code: u16 = status.parse().expect("numeric status");
                let content = response["content"].as_object();
                if code < 400 {
                    assert!(content.is_some(), "{id} {code} documents no body");
                    continue;
                }
                if id == "health_ready" {
                    // Not ready is the readiness JSON, not a problem document.
                    assert_eq!(
                        response["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/Readiness"
                    );
                    continue;
                }
                let content =
                    content.unwrap_or_else(|| panic!("{id} {code} documents no problem body"));
                assert_eq!(
                    content.keys().collect::<Vec<_>>(),
                    vec![PROBLEM_JSON],
                    "{id} {code} must be problem+json only"
                );
                assert_eq!(
                    content[PROBLEM_JSON]["schema"]["$ref"], PROBLEM_REF,
                    "{id} {code} must use the Problem schema"
                );
                let headers = &response["headers"];
                if code == 401 {
                    assert!(
                        headers["WWW-Authenticate"].is_object(),
                        "{id} 401 without WWW-Authenticate"
                    );
                }
                if code == 503 {
                    assert!(
                        headers["Retry-After"].is_object(),
                        "{id} 503 without Retry-After"
                    );
                }
            }

            let security = &op["security"];
            if ADMIN_OPERATIONS.contains(&id) {
                assert_eq!(security, &json!([{ "bearer_auth": [] }]), "{id} security");
            } else {
                assert!(security.is_null(), "{id} must not require a token");
            }
        }
    }
    let missing: Vec<_> = expected.keys().filter(|id| !seen.contains(**id)).collect();
    assert!(missing.is_empty(), "undocumented operations: {missing:?}");

    // The bearer scheme.
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer_auth"]["type"],
        "http"
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer_auth"]["scheme"],
        "bearer"
    );

    // Headers of the create operation.
    let create = operation(&doc, "post", "/api/orders");
    let key = create["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .find(|p| p["name"] == "Idempotency-Key")
        .expect("Idempotency-Key parameter");
    assert_eq!(key["in"], "header");
    assert_eq!(key["required"], true);
    let created = &create["responses"]["201"]["headers"];
    assert!(created["Location"].is_object(), "201 without Location");
    assert!(
        created["Idempotent-Replayed"].is_object(),
        "201 without Idempotent-Replayed"
    );
    assert_eq!(
        create["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/OrderRequest"
    );
    assert_eq!(create["requestBody"]["required"], true);
    let pay = operation(&doc, "post", "/api/orders/{id}/pay");
    assert_eq!(
        pay["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/PayRequest"
    );
    assert_eq!(
        pay["requestBody"]["required"], false,
        "the pay body is optional"
    );

    // The problem document.
    let problem = resolve(&doc, PROBLEM_REF).expect("Problem schema");
    let members: BTreeSet<&str> = problem["properties"]
        .as_object()
        .expect("Problem properties")
        .keys()
        .map(String::as_str)
        .collect();
    for member in [
        "type",
        "title",
        "status",
        "detail",
        "errors",
        "allowed",
        "current_status",
        "sku",
        "requested",
        "available",
    ] {
        assert!(members.contains(member), "Problem lacks {member}");
    }
    let mut required: Vec<&str> = problem["required"]
        .as_array()
        .expect("Problem required")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    required.sort_unstable();
    assert_eq!(required, ["status", "title", "type"]);

    // The document endpoints themselves.
    let page = app
        .client
        .get(app.url("/api-docs"))
        .send()
        .await
        .expect("GET /api-docs");
    assert_eq!(page.status(), StatusCode::OK);
    assert!(
        page.headers()[header::CONTENT_TYPE]
            .to_str()
            .is_ok_and(|v| v.starts_with("text/html"))
    );
    assert!(
        page.text()
            .await
            .expect("page")
            .contains("/api-docs/openapi.json")
    );
}

#[tokio::test]
async fn openapi_create_order_errors_are_documented_problems() {
    let app = spawn_app().await;
    let doc = served_document(&app).await;
    let create = ("post", "/api/orders");
    let good = order_body(&[("KB-001", 1)]).to_string();
    let send = |headers: Vec<(&'static str, String)>, body: String| {
        let mut request = app.client.post(app.url("/api/orders")).body(body);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        request.send()
    };
    let json_with_key = || {
        vec![
            ("content-type", "application/json".to_owned()),
            ("idempotency-key", Uuid::new_v4().to_string()),
        ]
    };

    // 400: no Idempotency-Key.
    let response = send(
        vec![("content-type", "application/json".to_owned())],
        good.clone(),
    )
    .await
    .expect("POST");
    assert_documented_problem(&doc, create, response, StatusCode::BAD_REQUEST).await;

    // 409: more than the stock (MN-003 has 25).
    let response = send(json_with_key(), order_body(&[("MN-003", 26)]).to_string())
        .await
        .expect("POST");
    let problem = assert_documented_problem(&doc, create, response, StatusCode::CONFLICT).await;
    assert_eq!(problem["sku"], "MN-003");
    assert_eq!(problem["requested"], 26);
    assert_eq!(problem["available"], 25);

    // 413: 70 KiB.
    let oversized = json!({
        "customer_id": "x".repeat(70 * 1024),
        "currency": "USD",
        "items": [{"sku": "KB-001", "quantity": 1}],
    })
    .to_string();
    let response = send(json_with_key(), oversized).await.expect("POST");
    assert_documented_problem(&doc, create, response, StatusCode::PAYLOAD_TOO_LARGE).await;

    // 415: no content type.
    let response = send(
        vec![("idempotency-key", Uuid::new_v4().to_string())],
        good.clone(),
    )
    .await
    .expect("POST");
    assert_documented_problem(&doc, create, response, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;

    // 422: unknown field.
    let mut unknown_field = order_body(&[("KB-001", 1)]);
    unknown_field["price_cents"] = json!(1);
    let response = send(json_with_key(), unknown_field.to_string())
        .await
        .expect("POST");
    assert_documented_problem(&doc, create, response, StatusCode::UNPROCESSABLE_ENTITY).await;

    // 422 with `errors`: validation.
    let response = send(json_with_key(), order_body(&[("KB-001", 0)]).to_string())
        .await
        .expect("POST");
    let problem =
        assert_documented_problem(&doc, create, response, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert!(problem["errors"].is_array(), "{problem:#}");

    assert_eq!(
        app.order_count().await,
        0,
        "no refused request created an order"
    );
}

#[tokio::test]
async fn openapi_override_status_errors_are_documented_problems() {
    let app = spawn_app().await;
    let doc = served_document(&app).await;
    let patch = ("patch", "/api/orders/{id}/status");
    let order = app.create_order(&[("KB-001", 1)]).await;
    let id = order["id"].as_str().expect("id").to_owned();
    app.wait_for_status(&id, &["CONFIRMED"]).await;
    let reverse = json!({"status": "REVERSED"});

    // 401: no token; 403: wrong token.
    let response = app.patch_status(&id, &reverse, None).await;
    assert_documented_problem(&doc, patch, response, StatusCode::UNAUTHORIZED).await;
    let response = app
        .patch_status(&id, &reverse, Some("not-the-admin-token-000"))
        .await;
    assert_documented_problem(&doc, patch, response, StatusCode::FORBIDDEN).await;

    // 404: unknown order.
    let response = app
        .patch_status(&Uuid::new_v4().to_string(), &reverse, Some(ADMIN_TOKEN))
        .await;
    assert_documented_problem(&doc, patch, response, StatusCode::NOT_FOUND).await;

    // 409: a confirmed order allows nothing.
    let response = app.patch_status(&id, &reverse, Some(ADMIN_TOKEN)).await;
    let problem = assert_documented_problem(&doc, patch, response, StatusCode::CONFLICT).await;
    assert_eq!(problem["current_status"], "CONFIRMED");
    assert_eq!(problem["allowed"], json!([]));

    // 422: unknown status.
    let response = app
        .patch_status(&id, &json!({"status": "SHIPPED"}), Some(ADMIN_TOKEN))
        .await;
    assert_documented_problem(&doc, patch, response, StatusCode::UNPROCESSABLE_ENTITY).await;

    assert_eq!(app.get_order(&id).await["status"], "CONFIRMED");
}

#[tokio::test]
async fn openapi_get_order_errors_are_documented_problems() {
    let app = spawn_app().await;
    let doc = served_document(&app).await;
    let get = ("get", "/api/orders/{id}");
    for (path, status) in [
        ("/api/orders/not-a-uuid".to_owned(), StatusCode::BAD_REQUEST),
        (
            format!("/api/orders/{}", Uuid::new_v4()),
            StatusCode::NOT_FOUND,
        ),
    ] {
        let response = app
            .client
            .get(app.url(&path))
            .send()
            .await
            .expect("GET order");
        assert_documented_problem(&doc, get, response, status).await;
    }
}

/// The success bodies (several of them built with `json!` in the handlers, documented by
/// separate types) match their documented schemas, with the documented headers.
#[tokio::test]
async fn openapi_success_responses_match_their_documented_schemas() {
    let app = spawn_app().await;
    let doc = served_document(&app).await;
    let request = |method: Method, path: &str| {
        app.client
            .request(method, app.url(path))
            .bearer_auth(ADMIN_TOKEN)
    };
    async fn json_body(response: reqwest::Response, status: StatusCode) -> Value {
        assert_eq!(response.status(), status, "{}", response.url());
        response.json().await.expect("JSON body")
    }

    // Create: 201 with Location; the same request again is a replay.
    let key = Uuid::new_v4().to_string();
    let body = order_body(&[("KB-001", 2), ("MS-002", 1)]);
    let response = app.post_order(Some(&key), &body).await;
    let location = response.headers()[header::LOCATION]
        .to_str()
        .expect("Location")
        .to_owned();
    assert!(response.headers().get("idempotent-replayed").is_none());
    let created = json_body(response, StatusCode::CREATED).await;
    let create = ("post", "/api/orders");
    assert_conforms(&doc, create, 201, "application/json", &created);
    let id = created["id"].as_str().expect("id").to_owned();
    assert_eq!(location, format!("/api/orders/{id}"));
    let replay = app.post_order(Some(&key), &body).await;
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(replay.headers()[header::LOCATION], location.as_str());
    let replayed = json_body(replay, StatusCode::CREATED).await;
    assert_conforms(&doc, create, 201, "application/json", &replayed);

    // The finished order, and the list.
    app.wait_for_terminal(&id).await;
    let order = json_body(
        request(Method::GET, &format!("/api/orders/{id}"))
            .send()
            .await
            .expect("GET"),
        StatusCode::OK,
    )
    .await;
    assert_conforms(
        &doc,
        ("get", "/api/orders/{id}"),
        200,
        "application/json",
        &order,
    );
    let list = json_body(
        request(Method::GET, "/api/orders?status=CONFIRMED&limit=5")
            .send()
            .await
            .expect("GET"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(list["orders"].as_array().map(Vec::len), Some(1));
    assert_conforms(&doc, ("get", "/api/orders"), 200, "application/json", &list);

    // Inventory.
    let stock = json_body(
        request(Method::GET, "/api/inventory")
            .send()
            .await
            .expect("GET"),
        StatusCode::OK,
    )
    .await;
    assert_conforms(
        &doc,
        ("get", "/api/inventory"),
        200,
        "application/json",
        &stock,
    );
    let one = json_body(
        request(Method::GET, "/api/inventory/KB-001")
            .send()
            .await
            .expect("GET"),
        StatusCode::OK,
    )
    .await;
    assert_conforms(
        &doc,
        ("get", "/api/inventory/{sku}"),
        200,
        "application/json",
        &one,
    );
    let put = json_body(
        request(Method::PUT, "/api/inventory/NEW-001")
            .json(&json!({"available": 5, "price_cents": 100, "name": "New thing"}))
            .send()
            .await
            .expect("PUT"),
        StatusCode::OK,
    )
    .await;
    assert_conforms(
        &doc,
        ("put", "/api/inventory/{sku}"),
        200,
        "application/json",
        &put,
    );

    // Admin, health.
    let report = json_body(
        request(Method::GET, "/api/admin/invariants")
            .send()
            .await
            .expect("GET"),
        StatusCode::OK,
    )
    .await;
    assert_conforms(
        &doc,
        ("get", "/api/admin/invariants"),
        200,
        "application/json",
        &report,
    );
    for path in ["/health/live", "/health/ready"] {
        let body = json_body(
            request(Method::GET, path).send().await.expect("GET"),
            StatusCode::OK,
        )
        .await;
        assert_conforms(&doc, ("get", path), 200, "application/json", &body);
    }

    // Metrics: the documented media type.
    let response = request(Method::GET, "/metrics").send().await.expect("GET");
    assert_eq!(response.status(), StatusCode::OK);
    let media_type = response.headers()[header::CONTENT_TYPE]
        .to_str()
        .expect("content type")
        .to_owned();
    let documented = operation(&doc, "get", "/metrics")["responses"]["200"]["content"]
        .as_object()
        .expect("metrics content");
    assert!(
        documented
            .keys()
            .any(|m| media_type.split(';').next() == Some(m.as_str())),
        "/metrics answered {media_type}, documented {:?}",
        documented.keys().collect::<Vec<_>>()
    );

    // The dev pay endpoint on an order that is not waiting for a payment.
    let response = request(Method::POST, &format!("/api/orders/{id}/pay"))
        .json(&json!({"outcome": "approve"}))
        .send()
        .await
        .expect("POST pay");
    assert_documented_problem(
        &doc,
        ("post", "/api/orders/{id}/pay"),
        response,
        StatusCode::CONFLICT,
    )
    .await;
}

/// The schema of a parameter or member, through its `$ref` if it has one.
fn schema_of<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(reference) => resolve(doc, reference).unwrap_or_else(|| panic!("{reference}")),
        None => schema,
    }
}

/// The limits and patterns in the document are the constants the service checks with, so
/// generated clients and fuzzers refuse what the service refuses.
#[tokio::test]
async fn openapi_states_the_limits_the_service_enforces() {
    use order_service::domain::order::{MAX_LINES, MAX_QUANTITY, SUPPORTED_CURRENCIES};
    use order_service::domain::text::{
        CUSTOMER_ID, MAX_SKU_CHARS, NO_CONTROL_PATTERN, NON_BLANK_PATTERN, OVERRIDE_REASON,
        SKU_PATTERN, STOCK_NAME,
    };
    use order_service::http::extractors::{IDEMPOTENCY_KEY_PATTERN, MAX_KEY_LEN};
    let app = spawn_app().await;
    let doc = served_document(&app).await;
    let parameter = |method: &str, path: &str, name: &str| -> Value {
        let found = operation(&doc, method, path)["parameters"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == name))
            .unwrap_or_else(|| panic!("{method} {path} has no parameter {name}"));
        assert_eq!(found["required"], true, "{method} {path} {name}");
        schema_of(&doc, &found["schema"]).clone()
    };
    let component = |name: &str| -> Value { doc["components"]["schemas"][name].clone() };

    let key = parameter("post", "/api/orders", "Idempotency-Key");
    assert_eq!(key["maxLength"], json!(MAX_KEY_LEN));
    assert_eq!(key["pattern"], IDEMPOTENCY_KEY_PATTERN);

    for method in ["get", "put", "patch"] {
        let sku = parameter(method, "/api/inventory/{sku}", "sku");
        assert_eq!(sku["pattern"], SKU_PATTERN, "{method}");
        assert_eq!(sku["maxLength"], json!(MAX_SKU_CHARS), "{method}");
    }

    let order = component("OrderRequest");
    let customer = &order["properties"]["customer_id"];
    assert_eq!(customer["pattern"], NON_BLANK_PATTERN);
    assert_eq!(customer["maxLength"], json!(CUSTOMER_ID.max_chars));
    assert_eq!(
        order["properties"]["currency"]["enum"],
        json!(SUPPORTED_CURRENCIES)
    );
    assert_eq!(order["properties"]["items"]["maxItems"], json!(MAX_LINES));
    let item = component("OrderRequestItem");
    assert_eq!(
        item["properties"]["quantity"]["maximum"],
        json!(MAX_QUANTITY)
    );
    assert_eq!(
        schema_of(&doc, &item["properties"]["sku"])["pattern"],
        SKU_PATTERN
    );
    let reason = &component("StatusOverride")["properties"]["reason"];
    assert_eq!(reason["pattern"], NO_CONTROL_PATTERN);
    assert_eq!(reason["maxLength"], json!(OVERRIDE_REASON.max_chars));
    for body in ["PutStock", "PatchStock"] {
        let name = &component(body)["properties"]["name"];
        assert_eq!(name["pattern"], NON_BLANK_PATTERN, "{body}");
        assert_eq!(name["maxLength"], json!(STOCK_NAME.max_chars), "{body}");
    }

    // Links let a stateful fuzzer (or a client generator) follow an order from its creation.
    let links = &operation(&doc, "post", "/api/orders")["responses"]["201"]["links"];
    for (name, target) in [
        ("GetOrder", "get_order"),
        ("OverrideStatus", "override_status"),
        ("PayOrder", "pay_order"),
    ] {
        assert_eq!(links[name]["operationId"], target, "{links:#}");
        assert_eq!(links[name]["parameters"]["id"], "$response.body#/id");
    }
    let links = &operation(&doc, "put", "/api/inventory/{sku}")["responses"]["200"]["links"];
    assert_eq!(links["AdjustStock"]["operationId"], "adjust_stock");
    assert_eq!(
        links["AdjustStock"]["parameters"]["sku"],
        "$response.body#/sku"
    );
    // Every link names an operation of the document.
    let ids: BTreeSet<&str> = expected_operations().keys().copied().collect();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            for (status, response) in op["responses"].as_object().expect("responses") {
                for (name, link) in response["links"].as_object().into_iter().flatten() {
                    let target = link["operationId"].as_str().unwrap_or_default();
                    assert!(
                        ids.contains(target),
                        "{method} {path} {status} link {name} names {target:?}"
                    );
                }
            }
        }
    }
}

/// `PATCH /api/inventory/{sku}`: its 200 and its 409 are what the document says.
#[tokio::test]
async fn openapi_adjust_stock_responses_are_documented() {
    let app = spawn_app().await;
    let doc = served_document(&app).await;
    let adjust = ("patch", "/api/inventory/{sku}");
    let patch = |body: Value| {
        app.client
            .patch(app.url("/api/inventory/KB-001"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
    };
    let response = patch(json!({"adjust": 5, "name": "Keyboard"}))
        .await
        .expect("PATCH");
    assert_eq!(response.status(), StatusCode::OK);
    let view: Value = response.json().await.expect("JSON");
    assert_conforms(&doc, adjust, 200, "application/json", &view);
    let response = patch(json!({"adjust": -1000})).await.expect("PATCH");
    let problem = assert_documented_problem(&doc, adjust, response, StatusCode::CONFLICT).await;
    assert_eq!(problem["available"], 105);
}
