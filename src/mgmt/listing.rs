//! RabbitMQ's query parameters on GET, applied to the JSON a handler
//! answered with, in one middleware ([`list_params`]):
//!
//! - `columns=a,b.c`: only those fields (dotted paths reach into objects),
//!   on a list's items or on a single object;
//! - `sort=field` and `sort_reverse=true`: on any list;
//! - `page=`, `page_size=` (1 to 500, default 100), `name=` (a
//!   case-insensitive substring, or with `use_regex=true` a case-insensitive
//!   regex): on the paginated lists (queues, exchanges, connections,
//!   channels, vhosts), answered in RabbitMQ's shape, an object with
//!   `filtered_count`, `item_count`, `items`, `page`, `page_count`,
//!   `page_size` and `total_count`. Without `page` a list stays a list.
//!
//! Bad pagination answers 400 with RabbitMQ's errors and texts.

use super::common::ApiError;
use axum::body::Body;
use axum::extract::{Query, Request};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use std::cmp::Ordering;
use std::collections::HashMap;

/// Largest page RabbitMQ serves.
const MAX_PAGE_SIZE: u64 = 500;
const DEFAULT_PAGE_SIZE: u64 = 100;

/// Whether RabbitMQ paginates this path (`/api/queues`, `/api/queues/{vhost}`,
/// `/api/exchanges[/{vhost}]`, `/api/connections`, `/api/channels`,
/// `/api/vhosts`, `/api/vhosts/{vhost}/connections|channels`).
fn paginates(path: &str) -> bool {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(2).collect();
    matches!(
        segs.as_slice(),
        ["queues"]
            | ["queues", _]
            | ["exchanges"]
            | ["exchanges", _]
            | ["connections"]
            | ["channels"]
            | ["vhosts"]
            | ["vhosts", _, "connections" | "channels"]
    )
}

#[derive(Clone)]
struct Page {
    page: u64,
    size: u64,
    name: Option<regex::Regex>,
    substring: Option<String>,
}

#[derive(Clone)]
struct Params {
    columns: Vec<Vec<String>>,
    sort: Option<Vec<String>>,
    reverse: bool,
    page: Option<Page>,
}

fn bad_pagination() -> ApiError {
    ApiError::bad_request("Pagination parameters are invalid")
}

fn parse(q: &HashMap<String, String>, path: &str) -> Result<Params, ApiError> {
    let dotted = |s: &str| s.split('.').map(str::to_owned).collect::<Vec<_>>();
    let columns = q
        .get("columns")
        .map(|c| {
            c.split(',')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(dotted)
                .collect()
        })
        .unwrap_or_default();
    let sort = q.get("sort").filter(|s| !s.is_empty()).map(|s| dotted(s));
    let reverse = q.get("sort_reverse").map(|s| s == "true").unwrap_or(false);
    let page = match q.get("page") {
        Some(p) if paginates(path) => {
            let page: u64 = p.parse().map_err(|_| bad_pagination())?;
            let size: Option<u64> = match q.get("page_size") {
                Some(s) => Some(s.parse().map_err(|_| bad_pagination())?),
                None => None,
            };
            let shown = size.map_or("undefined".to_string(), |s| s.to_string());
            if page < 1 || size.is_some_and(|s| !(1..=MAX_PAGE_SIZE).contains(&s)) {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_pagination_parameters",
                    format!("Invalid pagination parameters: page number {page}, page size {shown}"),
                ));
            }
            let filter = q.get("name").filter(|n| !n.is_empty());
            let regex = q.get("use_regex").map(|s| s == "true").unwrap_or(false);
            let (name, substring) = match filter {
                Some(f) if regex => (
                    Some(
                        regex::RegexBuilder::new(f)
                            .case_insensitive(true)
                            .build()
                            .map_err(|_| bad_pagination())?,
                    ),
                    None,
                ),
                Some(f) => (None, Some(f.to_lowercase())),
                None => (None, None),
            };
            Some(Page {
                page,
                size: size.unwrap_or(DEFAULT_PAGE_SIZE),
                name,
                substring,
            })
        }
        _ => None,
    };
    Ok(Params {
        columns,
        sort,
        reverse,
        page,
    })
}

fn at<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(k))
}

fn compare(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    match (a, b) {
        (Some(Value::Number(x)), Some(Value::Number(y))) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .unwrap_or(Ordering::Equal),
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        (Some(x), Some(y)) => x.to_string().cmp(&y.to_string()),
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}

/// Copy `path` of `from` into `to`, keeping the objects on the way.
fn pick(from: &Value, to: &mut Map<String, Value>, path: &[String]) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    let Some(v) = from.get(first) else {
        return;
    };
    if rest.is_empty() || !v.is_object() {
        to.insert(first.clone(), v.clone());
        return;
    }
    let sub = to
        .entry(first.clone())
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(sub) = sub {
        pick(v, sub, rest);
    }
}

fn columns(v: Value, cols: &[Vec<String>]) -> Value {
    if cols.is_empty() || !v.is_object() {
        return v;
    }
    let mut out = Map::new();
    for c in cols {
        pick(&v, &mut out, c);
    }
    Value::Object(out)
}

/// What a paginated GET will show, for handlers of long lists (10,000
/// queues): only the items on the page need their full JSON; the others can
/// be stubs with `name`, `vhost` and the sort key's value, which [`apply`]
/// filters, sorts and pages exactly as it would the full objects, since it
/// reads only those fields. The middleware puts it in the request's
/// extensions.
#[derive(Clone)]
pub struct Window(std::sync::Arc<Params>);

impl Window {
    /// The sort key (a dotted path), if the request sorts: a stub must
    /// carry its value, the same as the full object's.
    pub fn sort_key(&self) -> Option<&[String]> {
        self.0.sort.as_deref()
    }

    /// Whether the request asks for a page (else every item is shown).
    pub fn paged(&self) -> bool {
        self.0.page.is_some()
    }

    /// The indices, in `stubs` (`name`, `vhost` and the [`Window::sort_key`]'s
    /// value, in the handler's order), of the items the page shows; `None`
    /// without pagination (every item is shown).
    pub fn shown(&self, stubs: &[Value]) -> Option<std::collections::HashSet<usize>> {
        let p = &self.0;
        let page = p.page.as_ref()?;
        // The same steps as `apply`, on indices.
        let mut idx: Vec<usize> = (0..stubs.len()).collect();
        if let Some(key) = &p.sort {
            idx.sort_by(|a, b| compare(at(&stubs[*a], key), at(&stubs[*b], key)));
            if p.reverse {
                idx.reverse();
            }
        }
        let name_of = |i: &usize| stubs[*i].get("name").and_then(Value::as_str).unwrap_or("");
        if let Some(re) = &page.name {
            idx.retain(|i| re.is_match(name_of(i)));
        } else if let Some(s) = &page.substring {
            idx.retain(|i| name_of(i).to_lowercase().contains(s.as_str()));
        }
        let start = ((page.page - 1) * page.size) as usize;
        Some(
            idx.into_iter()
                .skip(start)
                .take(page.size as usize)
                .collect(),
        )
    }
}

/// Set `path` in `v` to `x`, making the objects on the way.
pub fn set_at(v: &mut Value, path: &[String], x: Value) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    if !v.is_object() {
        *v = Value::Object(Map::new());
    }
    let Value::Object(m) = v else { return };
    if rest.is_empty() {
        m.insert(first.clone(), x);
    } else {
        set_at(m.entry(first.clone()).or_insert(Value::Null), rest, x);
    }
}

fn apply(v: Value, p: &Params) -> Result<Value, ApiError> {
    let Value::Array(mut items) = v else {
        return Ok(columns(v, &p.columns));
    };
    if let Some(key) = &p.sort {
        items.sort_by(|a, b| compare(at(a, key), at(b, key)));
        if p.reverse {
            items.reverse();
        }
    }
    let Some(page) = &p.page else {
        return Ok(Value::Array(
            items.into_iter().map(|i| columns(i, &p.columns)).collect(),
        ));
    };
    let total = items.len() as u64;
    let name_of = |i: &Value| {
        i.get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    if let Some(re) = &page.name {
        items.retain(|i| re.is_match(&name_of(i)));
    } else if let Some(s) = &page.substring {
        items.retain(|i| name_of(i).to_lowercase().contains(s.as_str()));
    }
    let filtered = items.len() as u64;
    let start = (page.page - 1) * page.size;
    if (filtered > 0 && start >= filtered) || (filtered == 0 && page.page > 1) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "page_out_of_range",
            format!(
                "Page out of range, page: {} page size: {}, len: {filtered}",
                page.page, page.size
            ),
        ));
    }
    let shown: Vec<Value> = items
        .into_iter()
        .skip(start as usize)
        .take(page.size as usize)
        .map(|i| columns(i, &p.columns))
        .collect();
    Ok(json!({
        "filtered_count": filtered,
        "item_count": shown.len(),
        "items": shown,
        "page": page.page,
        "page_count": filtered.div_ceil(page.size),
        "page_size": page.size,
        "total_count": total,
    }))
}

/// The middleware: a GET with any of the parameters gets its JSON answer
/// filtered, sorted, paginated and cut to columns; anything else passes.
pub async fn list_params(req: Request, next: Next) -> Response {
    if req.method() != Method::GET || req.uri().query().is_none() {
        return next.run(req).await;
    }
    let q = Query::<HashMap<String, String>>::try_from_uri(req.uri())
        .map(|q| q.0)
        .unwrap_or_default();
    if !["columns", "sort", "page"]
        .iter()
        .any(|k| q.contains_key(*k))
    {
        return next.run(req).await;
    }
    let params = match parse(&q, req.uri().path()) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let mut req = req;
    req.extensions_mut()
        .insert(Window(std::sync::Arc::new(params.clone())));
    let resp = next.run(req).await;
    if resp.status() != StatusCode::OK {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return ApiError::internal("cannot read the response").into_response();
    };
    let Ok(v) = serde_json::from_slice::<Value>(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    match apply(v, &params) {
        Ok(v) => {
            parts.headers.remove(header::CONTENT_LENGTH);
            Response::from_parts(parts, Body::from(v.to_string()))
        }
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(q: &str, path: &str) -> Result<Params, ApiError> {
        let uri: axum::http::Uri = format!("{path}?{q}").parse().unwrap();
        let q = Query::<HashMap<String, String>>::try_from_uri(&uri)
            .unwrap()
            .0;
        parse(&q, path)
    }

    #[test]
    fn paginated_paths() {
        assert!(paginates("/api/queues"));
        assert!(paginates("/api/queues/"));
        assert!(paginates("/api/queues/%2F"));
        assert!(paginates("/api/vhosts/%2F/connections"));
        assert!(!paginates("/api/queues/%2F/q"));
        assert!(!paginates("/api/users"));
        assert!(!paginates("/api/bindings"));
    }

    #[test]
    fn pages_filter_and_columns() {
        let items = json!([
            {"name": "i.page.b", "n": 2, "arguments": {"x": 1}},
            {"name": "i.PAGE.d", "n": 4, "arguments": {}},
            {"name": "i.page.a", "n": 1, "arguments": {}},
            {"name": "other", "n": 3, "arguments": {}},
        ]);
        let p = params(
            "page=1&page_size=2&name=page&sort=name&columns=name,arguments.x",
            "/api/queues",
        )
        .unwrap();
        let v = apply(items.clone(), &p).unwrap();
        assert_eq!(
            v,
            json!({"filtered_count": 3, "item_count": 2, "page": 1, "page_count": 2,
                   "page_size": 2, "total_count": 4,
                   "items": [{"name": "i.PAGE.d", "arguments": {}}, {"name": "i.page.a", "arguments": {}}]})
        );
        let p = params("page=1&name=%5Ei%5C.page%5C.%5Bab%5D%24&use_regex=true&columns=name&sort=n&sort_reverse=true", "/api/queues").unwrap();
        let v = apply(items.clone(), &p).unwrap();
        assert_eq!(
            v["items"],
            json!([{"name": "i.page.b"}, {"name": "i.page.a"}])
        );
        assert!(apply(
            items.clone(),
            &params("page=3&page_size=2", "/api/queues").unwrap()
        )
        .is_err());
        assert!(params("page=0", "/api/queues").is_err());
        assert!(params("page=1&page_size=501", "/api/queues").is_err());
        assert!(params("page=x", "/api/queues").is_err());
        assert!(params("page=1&name=(&use_regex=true", "/api/queues").is_err());
        // Not a paginated path: a list stays a list.
        let v = apply(items, &params("page=1&columns=name", "/api/users").unwrap()).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 4);
        let empty = apply(json!([]), &params("page=1", "/api/queues").unwrap()).unwrap();
        assert_eq!(
            (empty["page_count"].as_u64(), empty["item_count"].as_u64()),
            (Some(0), Some(0))
        );
    }
}
