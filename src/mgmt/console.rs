//! The web console: a single page served by the management listener at `/`,
//! its assets under `/console/`. Everything is built into the binary
//! (`include_bytes!` of `src/mgmt/console/`), so the console works offline
//! and needs no build step: plain ES-free scripts, and uPlot (vendored with
//! its licence in `console/vendor/`) for the charts.
//!
//! The page reads and changes the broker only through the `/api` calls, with
//! the same HTTP basic auth; what a user may do is what the API allows.
//!
//! Caching: each asset carries an `ETag` (a hash of its bytes) and
//! `Cache-Control: no-cache`, so a browser revalidates and gets a `304` until
//! the binary changes: never a stale page after an upgrade.
//!
//! [`no_browser_prompt`]: the console's own API calls carry
//! `X-Requested-With: XMLHttpRequest`; their 401s are answered without
//! `WWW-Authenticate`, so the browser does not pop up its own login dialog
//! over the console's form (RabbitMQ's console does the same).

use axum::extract::{Path, Request};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::sync::OnceLock;

struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $type:expr) => {
        Asset {
            name: $name,
            content_type: $type,
            bytes: include_bytes!(concat!("console/", $name)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

static ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("app.js", JS),
    asset!("pages.js", JS),
    asset!("style.css", CSS),
    asset!("logo.svg", "image/svg+xml"),
    asset!("vendor/uPlot.iife.min.js", JS),
    asset!("vendor/uPlot.min.css", CSS),
    asset!("vendor/LICENSE-uPlot", "text/plain; charset=utf-8"),
];

/// `"<hash>"` of each asset, computed once.
fn etags() -> &'static Vec<String> {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    TAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let h = Sha256::digest(a.bytes);
                let hex: String = h[..12].iter().map(|b| format!("{b:02x}")).collect();
                format!("\"{hex}\"")
            })
            .collect()
    })
}

fn serve(name: &str, headers: &HeaderMap) -> Response {
    let Some(i) = ASSETS.iter().position(|a| a.name == name) else {
        return super::ApiError::not_found().into_response();
    };
    let a = &ASSETS[i];
    let etag = &etags()[i];
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut r = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(a.content_type),
            )],
            a.bytes,
        )
            .into_response()
    };
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if a.name == "index.html" {
        // The console talks to this origin only: no CDN, no other host.
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
            ),
        );
    }
    r
}

/// GET `/`: the console's page.
pub async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

/// GET `/console/{*file}`: a script, stylesheet, image or licence.
pub async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Response {
    serve(&file, &headers)
}

/// Answer the console's API calls' 401s without `WWW-Authenticate`.
pub async fn no_browser_prompt(req: Request, next: Next) -> Response {
    let from_console = req
        .headers()
        .get("x-requested-with")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"XMLHttpRequest"));
    let mut r = next.run(req).await;
    if from_console {
        r.headers_mut().remove(header::WWW_AUTHENTICATE);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_found_with_its_type() {
        for a in ASSETS {
            let r = serve(a.name, &HeaderMap::new());
            assert_eq!(r.status(), StatusCode::OK, "{}", a.name);
            assert_eq!(
                r.headers()[header::CONTENT_TYPE].to_str().unwrap(),
                a.content_type
            );
        }
        assert_eq!(
            serve("nope.js", &HeaderMap::new()).status(),
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn a_known_etag_is_answered_304() {
        let r = serve("app.js", &HeaderMap::new());
        let tag = r.headers()[header::ETAG].clone();
        let mut h = HeaderMap::new();
        h.insert(header::IF_NONE_MATCH, tag);
        assert_eq!(serve("app.js", &h).status(), StatusCode::NOT_MODIFIED);
    }
}
