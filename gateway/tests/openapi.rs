//! docs/openapi.json against the admin router it describes.
//!
//! - The routes: the (method, path) pairs the spec describes are exactly those that
//!   gateway/src/admin/mod.rs registers (its `.route("PATH", get(..))` calls, read from the
//!   source); the demo page's routes (gateway/src/admin/demo.rs) are left out of the spec.
//! - The spec itself: OpenAPI 3.0.3, every `$ref` resolves, every `/api/*` operation takes the
//!   bearer token and declares `401`, every POST a JSON body and `400`/`413`/`415`, every path
//!   parameter is declared, every object schema an answer can hold closes its properties.
//! - A real admin router (a gateway with its embedded broker and three clients: in groups, one
//!   watching presence, two bound to uids) answers every described operation `200` with a body
//!   that validates against the spec's schema (lists non-empty, nullable fields null once, a
//!   partial answer with a gateway `missing`); a method the spec does not describe on a
//!   described path is `405`, an unknown path `404`. The error answers (`400` for each POST's
//!   malformed and incomplete bodies and for bad parameters, `401` without the token, `404` for
//!   an empty last path segment, `413`, `415`) are declared for their operation and validate.
//! - The request schemas: each POST's valid body validates, and, without each of its fields in
//!   turn, the schema refuses it exactly when the gateway answers `400` (so `required` is the
//!   gateway's); `{}` and a body naming both a client id and a uid are refused by both.
//!
//! Schemas are checked by [`Checker`], which knows the few keywords the spec uses and refuses
//! any other, so that the spec cannot use one that would go unchecked.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, ensure, Context, Result};
use gateway::admin::AdminConfig;
use gateway::GatewayConfig;
use serde_json::{json, Value};
use test_support::gateway::{serve_admin, workers, TestGateway};
use test_support::ws::Client;
use test_support::{Admin, Event, RECV_TIMEOUT};
use tokio::time::Instant;

const SPEC: &str = include_str!("../../docs/openapi.json");
const ROUTER: &str = include_str!("../src/admin/mod.rs");
const DEMO: &str = include_str!("../src/admin/demo.rs");

/// The token of the admin router that requires one.
const TOKEN: &str = "openapi-test-token";
/// The body limit of that router, for `413`.
const SMALL_BODY: usize = 4096;

/// (METHOD, path), the method in capitals.
type Route = (String, String);

fn spec() -> Result<Value> {
    serde_json::from_str(SPEC).context("docs/openapi.json is not JSON")
}

// Reading the routes from the router's source.

/// The (METHOD, path) pairs of the `.route("PATH", get(..).post(..))` calls in `source`
/// (comment lines left out).
fn routes(source: &str) -> Result<BTreeSet<Route>> {
    let code: Vec<&str> = source
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect();
    let code = code.join("\n");
    let mut found = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(start) = rest.find(".route(") {
        let args = rest[start + ".route(".len()..].trim_start();
        let Some(literal) = args.strip_prefix('"') else {
            bail!("a .route( call without a path literal: {:.60}", args);
        };
        let end = literal.find('"').context("unterminated path literal")?;
        let path = &literal[..end];
        let methods =
            method_router(&literal[end + 1..]).with_context(|| format!("the route {path:?}"))?;
        ensure!(!methods.is_empty(), "the route {path:?} has no method");
        for method in methods {
            ensure!(
                found.insert((method.clone(), path.to_owned())),
                "{method} {path} is registered twice"
            );
        }
        rest = &literal[end + 1..];
    }
    Ok(found)
}

/// The HTTP methods of a route's method router: the calls at the top level of the rest of the
/// `.route(` call's arguments (`get(handler).post(other)`), up to its closing parenthesis.
fn method_router(text: &str) -> Result<Vec<String>> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut methods = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            b'(' => {
                if depth == 0 {
                    let name_len = text[..i]
                        .bytes()
                        .rev()
                        .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
                        .count();
                    let name = &text[i - name_len..i];
                    match name {
                        "get" | "post" | "put" | "delete" | "patch" | "head" | "options"
                        | "trace" => methods.push(name.to_ascii_uppercase()),
                        other => bail!("a method router this test cannot read: `{other}(`"),
                    }
                }
                depth += 1;
            }
            b')' => {
                if depth == 0 {
                    return Ok(methods);
                }
                depth -= 1;
            }
            _ => {}
        }
        i += 1;
    }
    bail!("unterminated .route( call")
}

// Reading the spec.

/// Follows `$ref`s (local JSON pointers) until a value that is not one.
fn resolve<'a>(spec: &'a Value, mut value: &'a Value) -> Result<&'a Value> {
    for _ in 0..16 {
        let Some(target) = value.get("$ref") else {
            return Ok(value);
        };
        let target = target.as_str().context("a $ref that is not a string")?;
        let pointer = target
            .strip_prefix('#')
            .with_context(|| format!("a $ref outside the document: {target}"))?;
        value = spec
            .pointer(pointer)
            .with_context(|| format!("the $ref {target} points nowhere"))?;
    }
    bail!("a chain of $refs too long (a cycle?)")
}

/// Every operation of the spec, by (METHOD, path).
fn operations(spec: &Value) -> Result<BTreeMap<Route, &Value>> {
    let paths = spec["paths"].as_object().context("no paths")?;
    let mut ops = BTreeMap::new();
    for (path, item) in paths {
        let item = item.as_object().context("a path item is not an object")?;
        for (method, op) in item {
            ensure!(
                ["get", "post", "put", "delete", "patch", "head", "options", "trace"]
                    .contains(&method.as_str()),
                "{path}: `{method}` is not an operation (this test reads no other path item field)"
            );
            ops.insert((method.to_ascii_uppercase(), path.clone()), op);
        }
    }
    Ok(ops)
}

/// The schema of the `status` answer of `op` for `media_type`.
fn answer_schema<'a>(
    spec: &'a Value,
    op: &'a Value,
    status: u16,
    media_type: &str,
) -> Result<&'a Value> {
    let response = op["responses"]
        .get(status.to_string())
        .with_context(|| format!("status {status} is not declared"))?;
    let response = resolve(spec, response)?;
    response["content"]
        .get(media_type)
        .and_then(|c| c.get("schema"))
        .with_context(|| format!("status {status} has no {media_type} schema"))
}

fn request_schema<'a>(spec: &'a Value, op: &'a Value) -> Result<&'a Value> {
    resolve(spec, &op["requestBody"])?["content"]["application/json"]
        .get("schema")
        .context("no application/json request body schema")
}

/// Schema keywords the checker applies. `pattern` is documentation only: every pattern goes
/// with a `format` the checker verifies with the protocol's own parser.
const KEYWORDS: &[&str] = &[
    "$ref",
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "nullable",
    "enum",
    "oneOf",
    "allOf",
    "format",
    "pattern",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "minItems",
    "maxItems",
    "description",
    "default",
];

/// A JSON value against an OpenAPI 3.0 schema of this spec.
struct Checker<'a> {
    spec: &'a Value,
}

impl Checker<'_> {
    /// `Ok` when `value` validates, else every fault found.
    fn validate(&self, schema: &Value, value: &Value, what: &str) -> Result<()> {
        let mut errors = Vec::new();
        self.check(schema, value, "$", &mut errors);
        ensure!(
            errors.is_empty(),
            "{what}: {value}\ndoes not match its schema:\n  {}",
            errors.join("\n  ")
        );
        Ok(())
    }

    fn matches(&self, schema: &Value, value: &Value) -> bool {
        let mut errors = Vec::new();
        self.check(schema, value, "$", &mut errors);
        errors.is_empty()
    }

    fn check(&self, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
        let Some(keys) = schema.as_object() else {
            return errors.push(format!("{at}: the schema is not an object"));
        };
        for key in keys.keys() {
            if !KEYWORDS.contains(&key.as_str()) {
                errors.push(format!(
                    "{at}: schema keyword `{key}` unknown to this checker"
                ));
            }
        }
        if keys.contains_key("$ref") {
            return match resolve(self.spec, schema) {
                Ok(target) => self.check(target, value, at, errors),
                Err(e) => errors.push(format!("{at}: {e}")),
            };
        }
        if value.is_null() {
            let any = ["type", "enum", "oneOf", "allOf"]
                .iter()
                .all(|k| !keys.contains_key(*k));
            if !any && schema["nullable"] != true {
                errors.push(format!("{at}: null, and the schema is not nullable"));
            }
            return;
        }
        if let Some(ty) = keys.get("type") {
            let ok = match ty.as_str() {
                Some("object") => value.is_object(),
                Some("array") => value.is_array(),
                Some("string") => value.is_string(),
                Some("integer") => value.is_i64() || value.is_u64(),
                Some("number") => value.is_number(),
                Some("boolean") => value.is_boolean(),
                _ => {
                    errors.push(format!("{at}: unknown type {ty}"));
                    true
                }
            };
            if !ok {
                return errors.push(format!("{at}: {value} is not of type {ty}"));
            }
        }
        if let Some(allowed) = keys.get("enum").and_then(Value::as_array) {
            if !allowed.contains(value) {
                errors.push(format!("{at}: {value} is not one of {allowed:?}"));
            }
        }
        if let Some(text) = value.as_str() {
            self.check_string(keys, text, at, errors);
        }
        if let Some(n) = value.as_f64() {
            if keys
                .get("minimum")
                .and_then(Value::as_f64)
                .is_some_and(|m| n < m)
            {
                errors.push(format!("{at}: {n} is below the minimum"));
            }
            if keys
                .get("maximum")
                .and_then(Value::as_f64)
                .is_some_and(|m| n > m)
            {
                errors.push(format!("{at}: {n} is above the maximum"));
            }
        }
        if let Some(items) = value.as_array() {
            let len = items.len() as u64;
            if keys
                .get("minItems")
                .and_then(Value::as_u64)
                .is_some_and(|m| len < m)
            {
                errors.push(format!("{at}: fewer than minItems items"));
            }
            if keys
                .get("maxItems")
                .and_then(Value::as_u64)
                .is_some_and(|m| len > m)
            {
                errors.push(format!("{at}: more than maxItems items"));
            }
            if let Some(item) = keys.get("items") {
                for (i, value) in items.iter().enumerate() {
                    self.check(item, value, &format!("{at}[{i}]"), errors);
                }
            }
        }
        if let Some(fields) = value.as_object() {
            self.check_object(keys, fields, at, errors);
        }
        if let Some(all) = keys.get("allOf").and_then(Value::as_array) {
            for schema in all {
                self.check(schema, value, at, errors);
            }
        }
        if let Some(one) = keys.get("oneOf").and_then(Value::as_array) {
            let matching = one.iter().filter(|s| self.matches(s, value)).count();
            if matching != 1 {
                errors.push(format!(
                    "{at}: {value} matches {matching} of the oneOf schemas, not exactly one"
                ));
            }
        }
    }

    fn check_string(
        &self,
        keys: &serde_json::Map<String, Value>,
        text: &str,
        at: &str,
        errors: &mut Vec<String>,
    ) {
        let chars = text.chars().count() as u64;
        if keys
            .get("minLength")
            .and_then(Value::as_u64)
            .is_some_and(|m| chars < m)
        {
            errors.push(format!("{at}: {text:?} is shorter than minLength"));
        }
        if keys
            .get("maxLength")
            .and_then(Value::as_u64)
            .is_some_and(|m| chars > m)
        {
            errors.push(format!("{at}: {text:?} is longer than maxLength"));
        }
        match keys.get("format").and_then(Value::as_str) {
            None => {}
            Some("client-id") => {
                let parsed = text.parse::<protocol::cluster::ClientId>();
                if parsed.map(|id| id.to_string()).as_deref() != Ok(text) {
                    errors.push(format!("{at}: {text:?} is not a client id"));
                }
            }
            Some("node-id") if text.parse::<protocol::cluster::NodeId>().is_err() => {
                errors.push(format!("{at}: {text:?} is not a node id"));
            }
            Some("node-id") => {}
            Some(other) => errors.push(format!("{at}: format {other:?} unknown to this checker")),
        }
    }

    fn check_object(
        &self,
        keys: &serde_json::Map<String, Value>,
        fields: &serde_json::Map<String, Value>,
        at: &str,
        errors: &mut Vec<String>,
    ) {
        for name in keys
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = name.as_str().unwrap_or_default();
            if !fields.contains_key(name) {
                errors.push(format!("{at}: the required property `{name}` is missing"));
            }
        }
        let properties = keys.get("properties").and_then(Value::as_object);
        for (name, value) in fields {
            let at = format!("{at}.{name}");
            match properties.and_then(|p| p.get(name)) {
                Some(schema) => self.check(schema, value, &at, errors),
                None => match keys.get("additionalProperties") {
                    Some(Value::Bool(false)) => {
                        errors.push(format!("{at}: a property the schema does not list"))
                    }
                    Some(schema @ Value::Object(_)) => self.check(schema, value, &at, errors),
                    _ => {}
                },
            }
        }
    }
}

/// Visits `schema` and every schema inside it, following `$ref`s once each.
fn walk<'a>(
    spec: &'a Value,
    schema: &'a Value,
    seen: &mut BTreeSet<String>,
    visit: &mut dyn FnMut(&'a Value),
) -> Result<()> {
    if let Some(target) = schema.get("$ref").and_then(Value::as_str) {
        if seen.insert(target.to_owned()) {
            walk(spec, resolve(spec, schema)?, seen, visit)?;
        }
        return Ok(());
    }
    visit(schema);
    let mut inner: Vec<&Value> = Vec::new();
    if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
        inner.extend(properties.values());
    }
    for key in ["items", "additionalProperties"] {
        if let Some(s) = schema.get(key).filter(|s| s.is_object()) {
            inner.push(s);
        }
    }
    for key in ["oneOf", "allOf"] {
        inner.extend(
            schema
                .get(key)
                .and_then(Value::as_array)
                .into_iter()
                .flatten(),
        );
    }
    for s in inner {
        walk(spec, s, seen, visit)?;
    }
    Ok(())
}

/// Every `$ref` anywhere in `value` resolves.
fn check_refs(spec: &Value, value: &Value) -> Result<()> {
    match value {
        Value::Object(fields) => {
            if fields.contains_key("$ref") {
                resolve(spec, value)?;
            }
            fields.values().try_for_each(|v| check_refs(spec, v))
        }
        Value::Array(items) => items.iter().try_for_each(|v| check_refs(spec, v)),
        _ => Ok(()),
    }
}

/// The rules every operation of this API follows, and the soundness of the schemas.
fn lint(spec: &Value) -> Result<()> {
    ensure!(spec["openapi"] == "3.0.3", "not OpenAPI 3.0.3");
    check_refs(spec, spec)?;
    ensure!(
        spec["components"]["securitySchemes"]["bearerAuth"]
            == json!({"type": "http", "scheme": "bearer", "description": "The gateway's --api-token."}),
        "bearerAuth is not the bearer scheme"
    );
    let mut operation_ids = BTreeSet::new();
    for ((method, path), op) in operations(spec)? {
        let what = format!("{method} {path}");
        ensure!(
            operation_ids.insert(op["operationId"].as_str().context("no operationId")?),
            "{what}: operationId used twice"
        );
        let statuses: BTreeSet<&str> = op["responses"]
            .as_object()
            .context("no responses")?
            .keys()
            .map(String::as_str)
            .collect();
        ensure!(statuses.contains("200"), "{what}: no 200 answer");
        if path.starts_with("/api/") {
            ensure!(
                op["security"] == json!([{"bearerAuth": []}]),
                "{what}: /api/* takes the bearer token"
            );
            ensure!(statuses.contains("401"), "{what}: no 401 answer");
        } else {
            ensure!(op["security"] == json!([]), "{what}: probes are open");
        }
        if method == "POST" {
            ensure!(
                op["requestBody"]["required"] == true,
                "{what}: body required"
            );
            request_schema(spec, op).context(what.clone())?;
            for status in ["400", "413", "415"] {
                ensure!(statuses.contains(status), "{what}: no {status} answer");
            }
        } else {
            ensure!(op.get("requestBody").is_none(), "{what}: a body on a GET");
        }
        let mut declared = BTreeSet::new();
        for parameter in op["parameters"].as_array().into_iter().flatten() {
            let parameter = resolve(spec, parameter)?;
            if parameter["in"] == "path" {
                ensure!(
                    parameter["required"] == true,
                    "{what}: path parameters are required"
                );
                declared.insert(parameter["name"].as_str().unwrap_or_default().to_owned());
            }
        }
        let template: BTreeSet<String> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .map(str::to_owned)
            .collect();
        ensure!(declared == template, "{what}: path parameters {declared:?}");
        // What an answer may hold is closed: an object schema says whether other properties
        // are allowed (this API's answers allow none).
        for (status, response) in op["responses"].as_object().into_iter().flatten() {
            let response = resolve(spec, response)?;
            let Some(json) = response["content"].get("application/json") else {
                continue;
            };
            let mut faults = Vec::new();
            walk(spec, &json["schema"], &mut BTreeSet::new(), &mut |s| {
                if s.get("properties").is_some() && s.get("additionalProperties").is_none() {
                    faults.push(s["properties"].to_string());
                }
            })?;
            ensure!(
                faults.is_empty(),
                "{what} {status}: open object schemas {faults:?}"
            );
        }
    }
    // Every schema: known keywords, `required` names listed properties, patterns go with a
    // checked format.
    let schemas = spec["components"]["schemas"]
        .as_object()
        .context("no schemas")?;
    let mut faults = Vec::new();
    for (name, schema) in schemas {
        walk(spec, schema, &mut BTreeSet::new(), &mut |s| {
            for key in s.as_object().into_iter().flat_map(|o| o.keys()) {
                if !KEYWORDS.contains(&key.as_str()) {
                    faults.push(format!("{name}: keyword `{key}`"));
                }
            }
            if s.get("pattern").is_some() && s.get("format").is_none() {
                faults.push(format!("{name}: a pattern without a format"));
            }
            let properties = s.get("properties").and_then(Value::as_object);
            if let (Some(required), Some(properties)) =
                (s.get("required").and_then(Value::as_array), properties)
            {
                for field in required {
                    if !properties.contains_key(field.as_str().unwrap_or_default()) {
                        faults.push(format!("{name}: required {field} is not a property"));
                    }
                }
            }
        })?;
    }
    ensure!(faults.is_empty(), "schema faults: {faults:?}");
    Ok(())
}

#[test]
fn the_spec_describes_exactly_the_routes_of_the_admin_router() -> Result<()> {
    let spec = spec()?;
    lint(&spec)?;
    let described: BTreeSet<Route> = operations(&spec)?.into_keys().collect();
    let served = routes(ROUTER)?;
    ensure!(served.len() >= 20, "too few routes read: {served:?}");
    let missing: Vec<_> = served.difference(&described).collect();
    let extra: Vec<_> = described.difference(&served).collect();
    ensure!(
        missing.is_empty() && extra.is_empty(),
        "docs/openapi.json and gateway/src/admin/mod.rs disagree: not described {missing:?}, \
         not served {extra:?}"
    );
    // The demo page's routes are not part of the API.
    let demo = routes(DEMO)?;
    ensure!(demo.len() == 4, "the demo routes: {demo:?}");
    for route in &demo {
        ensure!(!described.contains(route), "{route:?} is a demo route");
    }
    Ok(())
}

// The spec against a running admin router.

/// An HTTP answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    content_type: String,
    www_authenticate: Option<String>,
    body: String,
}

impl Answer {
    fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.body)
            .with_context(|| format!("{}: not JSON: {}", self.status, self.body))
    }

    fn media_type(&self) -> &str {
        self.content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
    }
}

/// A request: the method, the URL's path and query, a body with its content type, a token.
#[derive(Debug, Clone, Default)]
struct Call {
    method: String,
    url: String,
    body: Option<String>,
    content_type: Option<&'static str>,
    token: Option<&'static str>,
}

impl Call {
    fn get(url: impl Into<String>) -> Call {
        Call {
            method: "GET".into(),
            url: url.into(),
            ..Call::default()
        }
    }

    fn post(url: impl Into<String>, body: impl Into<String>) -> Call {
        Call {
            method: "POST".into(),
            url: url.into(),
            body: Some(body.into()),
            content_type: Some("application/json"),
            ..Call::default()
        }
    }

    async fn send(&self, admin: &Admin) -> Result<Answer> {
        let method = reqwest::Method::from_bytes(self.method.as_bytes())?;
        let mut request = admin.http().request(method, admin.url(&self.url));
        if let Some(body) = &self.body {
            request = request.body(body.clone());
        }
        if let Some(content_type) = self.content_type {
            request = request.header("content-type", content_type);
        }
        if let Some(token) = self.token {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("{} {}", self.method, self.url))?;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let content_type = header("content-type").unwrap_or_default();
        let www_authenticate = header("www-authenticate");
        Ok(Answer {
            status: response.status().as_u16(),
            content_type,
            www_authenticate,
            body: response.text().await?,
        })
    }
}

/// The running gateway, its two admin routers, and what its clients are.
struct Live {
    spec: Value,
    _gateway: TestGateway,
    /// Without a token.
    open: Admin,
    /// With [`TOKEN`] and a body limit of [`SMALL_BODY`].
    locked: Admin,
    /// In `room` with presence, bound to `u-1`.
    id_a: String,
    /// In `room` and `lobby`, bound to `u-2`.
    id_b: String,
    /// In `room`, no uid; closed by the last order.
    id_c: String,
    clients: Vec<Client>,
}

impl Live {
    async fn start() -> Result<Live> {
        let gateway = TestGateway::embedded(GatewayConfig {
            history: vec!["log=10,1m".parse().map_err(anyhow::Error::msg)?],
            ..workers(2)
        })
        .await?;
        let open = serve_admin(&gateway.gateway, AdminConfig::default(), &gateway.shutdown).await?;
        let locked = AdminConfig {
            api_token: Some(TOKEN.into()),
            api_max_body_size: SMALL_BODY,
            ..AdminConfig::default()
        };
        let locked = serve_admin(&gateway.gateway, locked, &gateway.shutdown).await?;
        let mut b = gateway.connect("b").await?;
        b.ack(json!({"cmd": "bind_uid", "uid": "u-2"})).await?;
        b.ack(json!({"cmd": "add_group", "group_id": "room"}))
            .await?;
        b.ack(json!({"cmd": "add_group", "group_id": "lobby"}))
            .await?;
        let mut a = gateway.connect("a").await?;
        a.ack(json!({"cmd": "bind_uid", "uid": "u-1"})).await?;
        a.ack(json!({"cmd": "add_group", "group_id": "room", "presence": true}))
            .await?;
        let mut c = gateway.connect("c").await?;
        let mut ids = Vec::new();
        for client in [&mut a, &mut b, &mut c] {
            let me = client.reply_to(json!({"cmd": "whoami"})).await?;
            ids.push(me["client_id"].as_str().context("a client id")?.to_owned());
        }
        let [id_a, id_b, id_c] =
            <[String; 3]>::try_from(ids).map_err(|_| anyhow::anyhow!("ids"))?;
        c.ack(json!({"cmd": "add_group", "group_id": "room"}))
            .await?;
        // `a` watches the room's presence.
        let event =
            format!(r#"{{"cmd":"join","group_id":"room","client_id":"{id_c}","uid":null}}"#);
        a.expect_text(&event).await?;
        Ok(Live {
            spec: spec()?,
            _gateway: gateway,
            open,
            locked,
            id_a,
            id_b,
            id_c,
            clients: vec![a, b, c],
        })
    }

    fn checker(&self) -> Checker<'_> {
        Checker { spec: &self.spec }
    }

    /// The spec's operation (`method`, `path`).
    fn op(&self, method: &str, path: &str) -> Result<&Value> {
        self.spec["paths"][path]
            .get(method.to_ascii_lowercase())
            .with_context(|| format!("{method} {path} is not described"))
    }

    /// Sends `call` for the operation (`method`, `path`), which must answer `status` with a JSON
    /// body that the spec declares for that status and that validates; returns the body.
    async fn expect(&self, admin: &Admin, path: &str, call: &Call, status: u16) -> Result<Value> {
        let what = format!("{} {} (for {} {path})", call.method, call.url, call.method);
        let answer = call.send(admin).await?;
        ensure!(
            answer.status == status,
            "{what}: expected {status}, got {} {}",
            answer.status,
            answer.body
        );
        ensure!(
            answer.media_type() == "application/json",
            "{what}: content type {:?}",
            answer.content_type
        );
        let op = self.op(&call.method, path)?;
        let schema = answer_schema(&self.spec, op, status, "application/json")
            .with_context(|| what.clone())?;
        let body = answer.json()?;
        self.checker().validate(schema, &body, &what)?;
        if status == 401 {
            ensure!(
                answer.www_authenticate.as_deref() == Some("Bearer"),
                "{what}: WWW-Authenticate {:?}",
                answer.www_authenticate
            );
        }
        Ok(body)
    }

    /// As [`Live::expect`] for an error answer, whose code must be `code`.
    async fn expect_error(
        &self,
        admin: &Admin,
        path: &str,
        call: &Call,
        status: u16,
        code: &str,
    ) -> Result<Value> {
        let body = self.expect(admin, path, call, status).await?;
        ensure!(
            body["error"]["code"] == code,
            "{} {}: expected {code}, got {body}",
            call.method,
            call.url
        );
        Ok(body)
    }

    /// The URL of a described path with its parameters filled in.
    fn url(&self, path: &str) -> String {
        // The history endpoints read a group with history.
        let group = if path.starts_with("/api/history") {
            "log"
        } else {
            "room"
        };
        path.replace("{client_id}", &self.id_a)
            .replace("{uid}", "u-1")
            .replace("{group_id}", group)
    }

    /// A valid body for each described POST, in the order they are sent (the close last).
    fn bodies(&self) -> Vec<(&'static str, Value, &'static str, Value)> {
        let (a, b, c) = (&self.id_a, &self.id_b, &self.id_c);
        vec![
            (
                "/api/history_remove",
                json!({"group_id": "log"}),
                "removed",
                json!(true),
            ),
            (
                "/api/publish",
                json!([{"group_id": "room", "message": {"n": 1}, "exclude": [b]},
                       {"group_id": 42, "message": "x"}]),
                "published",
                json!(2),
            ),
            (
                "/api/send_to_all",
                json!({"message": "to all", "exclude": [a]}),
                "published",
                json!(1),
            ),
            (
                "/api/send_to_uid",
                json!({"uid": ["u-1", 7, "u-1"], "message": "to uids"}),
                "published",
                json!(2),
            ),
            (
                "/api/send_to_client",
                json!({"client_id": b, "message": "to b"}),
                "published",
                json!(1),
            ),
            (
                "/api/bind_uid",
                json!({"client_id": c, "uid": "u-3"}),
                "affected",
                json!(1),
            ),
            (
                "/api/unbind_uid",
                json!({"uid": "u-3"}),
                "affected",
                json!(1),
            ),
            (
                "/api/join_group",
                json!({"client_id": c, "group_id": "other", "presence": true}),
                "affected",
                json!(1),
            ),
            (
                "/api/leave_group",
                json!({"client_id": c, "group_id": "other"}),
                "affected",
                json!(1),
            ),
            (
                "/api/ungroup",
                json!({"group_id": "lobby"}),
                "affected",
                json!(1),
            ),
            (
                "/api/close_client",
                json!({"client_id": c, "code": 4002, "reason": "bye"}),
                "affected",
                json!(1),
            ),
        ]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_admin_router_answers_as_the_spec_says() -> Result<()> {
    let mut live = Live::start().await?;
    let ops: Vec<Route> = operations(&live.spec)?.into_keys().collect();

    // Every described GET, answered 200 with a body that validates.
    for (method, path) in ops.iter().filter(|(m, _)| m == "GET") {
        let call = Call::get(live.url(path));
        if !path.starts_with("/api/") {
            let answer = call.send(&live.open).await?;
            ensure!(answer.status == 200, "{path}: {answer:?}");
            let op = live.op(method, path)?;
            let content = op["responses"]["200"]["content"]
                .as_object()
                .context("content")?;
            let (media_type, media) = content.iter().next().context("a media type")?;
            ensure!(
                media_type.split(';').next() == Some(answer.media_type()),
                "{path}: content type {:?}, described {media_type:?}",
                answer.content_type
            );
            if media_type.contains("openmetrics") {
                ensure!(&answer.content_type == media_type, "{path}: {answer:?}");
                ensure!(answer.body.ends_with("# EOF\n"), "{path}: not OpenMetrics");
            } else {
                live.checker()
                    .validate(&media["schema"], &Value::from(answer.body), path)?;
            }
            continue;
        }
        live.expect(&live.open, path, &call, 200).await?;
    }

    // What the lists hold, so that their items were validated too.
    let groups = live
        .expect(
            &live.open,
            "/api/groups",
            &Call::get("/api/groups?limit=1"),
            200,
        )
        .await?;
    ensure!(
        groups["groups"] == json!([{"group_id": "lobby", "connections": 1}])
            && groups["cursor"] == "lobby",
        "{groups}"
    );
    let members = "/api/groups/{group_id}/members";
    let page = live
        .expect(
            &live.open,
            members,
            &Call::get("/api/groups/room/members?limit=1"),
            200,
        )
        .await?;
    let first = page["members"][0]["client_id"].clone();
    ensure!(page["cursor"] == first, "{page}");
    let url = format!(
        "/api/groups/room/members?limit=5&cursor={}",
        first.as_str().unwrap_or_default()
    );
    let rest = live
        .expect(&live.open, members, &Call::get(url), 200)
        .await?;
    ensure!(
        rest["members"].as_array().map(Vec::len) == Some(2) && rest["cursor"].is_null(),
        "{rest}"
    );
    let unbound = [&page, &rest]
        .iter()
        .flat_map(|p| p["members"].as_array().into_iter().flatten())
        .filter(|m| m["uid"].is_null())
        .count();
    ensure!(unbound == 1, "c has no uid: {page} {rest}");
    let count = live
        .expect(
            &live.open,
            "/api/groups/{group_id}",
            &Call::get("/api/groups/room"),
            200,
        )
        .await?;
    ensure!(
        count["connections"] == 3 && count["uids"] == 2 && count["uids_exact"] == true,
        "{count}"
    );
    let client = live
        .expect(
            &live.open,
            "/api/clients/{client_id}",
            &Call::get(live.url("/api/clients/{client_id}")),
            200,
        )
        .await?;
    ensure!(
        client["online"] == true && client["uid"] == "u-1" && client["groups"] == json!(["room"]),
        "{client}"
    );
    let path = "/api/clients/{client_id}";
    let url = format!("/api/clients/{}", live.id_c);
    let unbound = live.expect(&live.open, path, &Call::get(url), 200).await?;
    ensure!(
        unbound["online"] == true && unbound["uid"].is_null(),
        "{unbound}"
    );
    // A client of a gateway that is gone: its gateway is asked, and missing after
    // --cluster-query-timeout (1 s).
    let gone = "0123456789abcdef";
    let url = format!("/api/clients/{gone}-0-1");
    let lost = live.expect(&live.open, path, &Call::get(url), 200).await?;
    ensure!(
        lost["online"] == false && lost["nodes"]["missing"] == json!([gone]),
        "{lost}"
    );
    let uid = live
        .expect(
            &live.open,
            "/api/uids/{uid}",
            &Call::get("/api/uids/u-1"),
            200,
        )
        .await?;
    ensure!(uid["client_ids"] == json!([live.id_a]), "{uid}");
    let offline = live
        .expect(
            &live.open,
            "/api/uids/{uid}",
            &Call::get("/api/uids/nobody"),
            200,
        )
        .await?;
    ensure!(offline["online"] == false, "{offline}");
    let nodes = live
        .expect(&live.open, "/api/nodes", &Call::get("/api/nodes"), 200)
        .await?;
    ensure!(nodes["nodes"][0]["self"] == true, "{nodes}");
    let stats = live
        .expect(&live.open, "/api/stats", &Call::get("/api/stats"), 200)
        .await?;
    ensure!(stats["cluster_totals"]["connections"] == 3, "{stats}");

    // The POSTs' bodies: the spec's request schema takes the valid ones and refuses those the
    // gateway refuses, and the gateway takes those the schema takes.
    let checker = live.checker();
    let mut posts = Vec::new();
    for (path, body, field, expected) in live.bodies() {
        let op = live.op("POST", path)?;
        let schema = request_schema(&live.spec, op)?;
        checker.validate(schema, &body, &format!("the body for POST {path}"))?;
        ensure!(
            !checker.matches(schema, &json!({})),
            "POST {path}: {{}} is refused"
        );
        if [
            "/api/unbind_uid",
            "/api/join_group",
            "/api/leave_group",
            "/api/close_client",
        ]
        .contains(&path)
        {
            let mut both = body.clone();
            both["client_id"] = live.id_b.clone().into();
            both["uid"] = "u-2".into();
            ensure!(
                !checker.matches(schema, &both),
                "POST {path}: {both} is refused"
            );
            let call = Call::post(path, both.to_string());
            live.expect_error(&live.open, path, &call, 400, "invalid_field")
                .await?;
        }
        // Without each of its fields: the spec requires exactly what the gateway does (the
        // close goes to a client id no longer connected, so that it closes nothing yet).
        let mut base = match &body {
            Value::Array(items) => items.first().cloned().context("a batch")?,
            one => one.clone(),
        };
        if path == "/api/close_client" {
            base["client_id"] = format!("{}-0-999", &live.id_a[..16]).into();
        }
        for name in base.as_object().context("an object")?.keys() {
            let mut without = base.clone();
            without.as_object_mut().map(|o| o.remove(name));
            let status = if checker.matches(schema, &without) {
                200
            } else {
                400
            };
            let call = Call::post(path, without.to_string());
            live.expect(&live.open, path, &call, status)
                .await
                .with_context(|| format!("without `{name}`"))?;
        }
        posts.push((path, body, field, expected));
    }
    let described_posts: BTreeSet<&str> = ops
        .iter()
        .filter(|(m, _)| m == "POST")
        .map(|(_, p)| p.as_str())
        .collect();
    let sent: BTreeSet<&str> = posts.iter().map(|(p, ..)| *p).collect();
    ensure!(
        sent == described_posts,
        "a valid body for every POST: {sent:?}"
    );

    // Errors of every POST, before the valid bodies change anything.
    for path in &described_posts {
        let call = Call::post(*path, "{");
        live.expect_error(&live.open, path, &call, 400, "invalid_json")
            .await?;
        let call = Call::post(*path, "{}");
        live.expect_error(&live.open, path, &call, 400, "missing_field")
            .await?;
        let call = Call {
            content_type: None,
            ..Call::post(*path, "{}")
        };
        live.expect_error(&live.open, path, &call, 415, "unsupported_media_type")
            .await?;
        let big = json!({"message": "x".repeat(SMALL_BODY)}).to_string();
        let call = Call {
            token: Some(TOKEN),
            ..Call::post(*path, big)
        };
        live.expect_error(&live.locked, path, &call, 413, "body_too_large")
            .await?;
    }
    let batch = r#"[{"group_id":"room","message":"m"},{"group_id":"","message":"m"}]"#;
    let error = live
        .expect_error(
            &live.open,
            "/api/publish",
            &Call::post("/api/publish", batch),
            400,
            "invalid_group_id",
        )
        .await?;
    ensure!(error["error"]["index"] == 1, "{error}");

    // Without the token every /api/* operation is 401; the probes stay open.
    for (method, path) in &ops {
        let call = Call {
            method: method.clone(),
            ..Call::post(live.url(path), "{}")
        };
        if path.starts_with("/api/") {
            live.expect_error(&live.locked, path, &call, 401, "unauthorized")
                .await?;
        } else {
            let answer = Call::get(path.clone()).send(&live.locked).await?;
            ensure!(answer.status == 200, "{path} with a token set: {answer:?}");
        }
    }

    // Bad parameters; an empty parameter is no endpoint when it ends the path.
    let x129 = "x".repeat(129);
    let bad = [
        (
            "/api/clients/{client_id}",
            "/api/clients/nope".to_owned(),
            400,
            "invalid_field",
        ),
        (
            "/api/uids/{uid}",
            format!("/api/uids/{x129}"),
            400,
            "invalid_field",
        ),
        (
            "/api/groups",
            "/api/groups?limit=0".into(),
            400,
            "invalid_field",
        ),
        (
            "/api/groups",
            "/api/groups?limit=x".into(),
            400,
            "invalid_field",
        ),
        (
            "/api/groups/{group_id}",
            "/api/groups/%1Froom".into(),
            400,
            "invalid_group_id",
        ),
        (
            members,
            "/api/groups/%1Froom/members".into(),
            400,
            "invalid_group_id",
        ),
        (
            members,
            "/api/groups/room/members?cursor=bad".into(),
            400,
            "invalid_field",
        ),
        (
            members,
            "/api/groups/room/members?limit=100000".into(),
            400,
            "invalid_field",
        ),
        (
            "/api/clients/{client_id}",
            "/api/clients/".into(),
            404,
            "not_found",
        ),
        ("/api/uids/{uid}", "/api/uids/".into(), 404, "not_found"),
        (
            "/api/groups/{group_id}",
            "/api/groups/".into(),
            404,
            "not_found",
        ),
        (
            members,
            "/api/groups//members".into(),
            400,
            "invalid_group_id",
        ),
    ];
    for (path, url, status, code) in bad {
        live.expect_error(&live.open, path, &Call::get(url), status, code)
            .await?;
    }

    // Another method on a described path is 405; an unknown path 404; both in the error shape.
    let error_schema = json!({"$ref": "#/components/schemas/Error"});
    let mut other_methods: Vec<(String, String, u16)> = Vec::new();
    for (method, path) in &ops {
        let other = if method == "GET" { "POST" } else { "GET" };
        for other in [other, "DELETE"] {
            if !ops.contains(&(other.to_owned(), path.clone())) {
                other_methods.push((other.to_owned(), live.url(path), 405));
            }
        }
    }
    other_methods.push(("GET".into(), "/api/nope".into(), 404));
    for (method, url, status) in other_methods {
        let call = Call {
            method: method.clone(),
            ..Call::post(url.clone(), "{}")
        };
        let answer = call.send(&live.open).await?;
        ensure!(answer.status == status, "{method} {url}: {answer:?}");
        let body = answer.json()?;
        live.checker()
            .validate(&error_schema, &body, &format!("{method} {url}"))?;
        let code = if status == 405 {
            "method_not_allowed"
        } else {
            "not_found"
        };
        ensure!(body["error"]["code"] == code, "{method} {url}: {body}");
    }

    // Finally the valid POSTs: 200, bodies that validate, and what they did.
    for (path, body, field, expected) in posts {
        let answer = live
            .expect(&live.open, path, &Call::post(path, body.to_string()), 200)
            .await?;
        ensure!(answer[field] == expected, "POST {path}: {answer}");
    }
    let mut c = live.clients.pop().context("client c")?;
    let deadline = Instant::now() + RECV_TIMEOUT;
    loop {
        match c.next_event(deadline).await {
            Some(Event::Close(Some((code, reason)))) => {
                ensure!(
                    code == 4002 && reason == "bye",
                    "closed with {code} {reason}"
                );
                break;
            }
            Some(Event::Text(_)) => {}
            other => bail!("c: expected its close, got {other:?}"),
        }
    }
    Ok(())
}
