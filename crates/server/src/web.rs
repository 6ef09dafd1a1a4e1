//! The web chat: static files embedded in the binary, served at `GET /` and
//! `GET /assets/{file}`.
//!
//! The page is a plain client of `/v1/chat/completions` (see `assets/app.js`), so these
//! routes need no state and sit outside the API-key check: the page must load to ask
//! for the key. Nothing is fetched from elsewhere (no CDN), so the page works offline.
//!
//! Caching: the files are not fingerprinted, so every response carries a strong `ETag`
//! (a hash of the bytes, computed at compile time) with `Cache-Control: no-cache`: the
//! browser revalidates each load and gets `304 Not Modified` while the binary is the
//! same, and the new files at once after an upgrade.

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sluice_protocol::ApiError;

use crate::HttpError;

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
    etag: &'static str,
}

/// 64-bit FNV-1a, usable in a `const` so the tags cost nothing at run time.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    h
}

/// `"` + 16 hex digits + `"` (the quotes are part of an entity tag).
const fn etag_bytes(bytes: &[u8]) -> [u8; 18] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let h = fnv1a(bytes);
    let mut out = [b'"'; 18];
    let mut i = 0;
    while i < 16 {
        out[1 + i] = HEX[((h >> (60 - 4 * i)) & 0xf) as usize];
        i += 1;
    }
    out
}

macro_rules! asset {
    ($name:literal, $ctype:literal) => {{
        const BYTES: &[u8] = include_bytes!(concat!("../assets/", $name));
        const TAG: [u8; 18] = etag_bytes(BYTES);
        Asset {
            name: $name,
            content_type: $ctype,
            bytes: BYTES,
            etag: match std::str::from_utf8(&TAG) {
                Ok(s) => s,
                Err(_) => panic!("an ETag is ASCII"),
            },
        }
    }};
}

static INDEX: Asset = asset!("index.html", "text/html; charset=utf-8");
static ASSETS: [Asset; 4] = [
    asset!("app.js", "text/javascript; charset=utf-8"),
    asset!("markdown.js", "text/javascript; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("icon.svg", "image/svg+xml"),
];

/// The page may load only its own files and talk only to this server; inline scripts
/// are refused, which backs up the Markdown renderer's escaping.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
                   frame-ancestors 'none'";

/// `GET /` and `GET /assets/{file}`. Merge into the server's router (any state type).
pub fn web_routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/assets/{file}", get(asset))
}

async fn index(headers: HeaderMap) -> Response {
    let mut resp = serve(&INDEX, &headers);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}

async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS.iter().find(|a| a.name == file) {
        Some(a) => serve(a, &headers),
        None => HttpError(ApiError::not_found(format!("No asset named `{file}`."))).into_response(),
    }
}

/// True when an `If-None-Match` list names this tag (or is `*`). Weak tags (`W/"..."`)
/// compare equal too: RFC 9110 §13.1.2 uses the weak comparison for this header.
fn matches_etag(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim())
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
}

fn serve(a: &Asset, headers: &HeaderMap) -> Response {
    let mut resp = if matches_etag(headers, a.etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = a.bytes.into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(a.content_type),
        );
        r
    };
    let h = resp.headers_mut();
    h.insert(header::ETAG, HeaderValue::from_static(a.etag));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn start() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a local port");
        let addr = listener.local_addr().expect("local address");
        tokio::spawn(async move {
            let _ = axum::serve(listener, web_routes::<()>()).await;
        });
        format!("http://{addr}")
    }

    fn header<'a>(r: &'a reqwest::Response, name: &str) -> &'a str {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// Every `assets/...` and `./...js` reference in a file's text.
    fn references(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        for pat in ["\"assets/", "\"./"] {
            let mut rest = text;
            while let Some(i) = rest.find(pat) {
                rest = &rest[i + pat.len()..];
                let end = rest.find('"').unwrap_or(rest.len());
                out.push(rest[..end].to_string());
                rest = &rest[end..];
            }
        }
        out
    }

    #[tokio::test]
    async fn serves_the_page_and_every_file_it_references() {
        let base = start().await;
        let client = reqwest::Client::new();
        let r = client.get(format!("{base}/")).send().await.expect("GET /");
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "content-type"), "text/html; charset=utf-8");
        assert!(header(&r, "content-security-policy").contains("script-src 'self'"));
        assert_eq!(header(&r, "cache-control"), "no-cache");
        let html = r.text().await.expect("body");
        assert!(html.contains("<title>sluice chat</title>"));

        // The page's references and app.js's imports must all resolve.
        let mut refs = references(&html);
        let app = ASSETS
            .iter()
            .find(|a| a.name == "app.js")
            .expect("app.js embedded");
        refs.extend(references(std::str::from_utf8(app.bytes).expect("utf-8")));
        assert!(
            refs.iter().any(|r| r == "app.js"),
            "index.html loads app.js: {refs:?}"
        );
        assert!(
            refs.iter().any(|r| r == "markdown.js"),
            "app.js imports markdown.js: {refs:?}"
        );
        for name in &refs {
            let r = client
                .get(format!("{base}/assets/{name}"))
                .send()
                .await
                .expect("GET asset");
            assert_eq!(r.status(), 200, "assets/{name}");
            let want = ASSETS
                .iter()
                .find(|a| a.name == name)
                .expect("listed")
                .content_type;
            assert_eq!(header(&r, "content-type"), want);
            assert_eq!(header(&r, "x-content-type-options"), "nosniff");
            let body = r.bytes().await.expect("body");
            assert!(!body.is_empty());
        }
    }

    #[tokio::test]
    async fn etag_revalidation_and_unknown_files() {
        let base = start().await;
        let client = reqwest::Client::new();
        let r = client
            .get(format!("{base}/assets/style.css"))
            .send()
            .await
            .expect("GET");
        let tag = header(&r, "etag").to_string();
        assert_eq!(tag.len(), 18);
        assert!(tag.starts_with('"') && tag.ends_with('"'));
        // Same tag (also as a weak tag, or in a list) -> 304 with no body.
        for inm in [
            tag.clone(),
            format!("W/{tag}"),
            format!("\"0000000000000000\", {tag}"),
        ] {
            let r = client
                .get(format!("{base}/assets/style.css"))
                .header("if-none-match", inm.as_str())
                .send()
                .await
                .expect("GET");
            assert_eq!(r.status(), 304, "{inm}");
            assert_eq!(header(&r, "etag"), tag);
            assert!(r.bytes().await.expect("body").is_empty());
        }
        // Another tag -> the full file.
        let r = client
            .get(format!("{base}/assets/style.css"))
            .header("if-none-match", "\"0000000000000000\"")
            .send()
            .await
            .expect("GET");
        assert_eq!(r.status(), 200);
        // Different files have different tags.
        let tags: std::collections::HashSet<&str> =
            ASSETS.iter().chain([&INDEX]).map(|a| a.etag).collect();
        assert_eq!(tags.len(), ASSETS.len() + 1);

        for path in ["/assets/nope.js", "/assets/..%2Fsrc%2Flib.rs", "/assets/"] {
            let r = client
                .get(format!("{base}{path}"))
                .send()
                .await
                .expect("GET");
            assert_eq!(r.status(), 404, "{path}");
        }
        let r = client
            .get(format!("{base}/assets/nope.js"))
            .send()
            .await
            .expect("GET");
        let j: serde_json::Value = r.json().await.expect("OpenAI error JSON");
        assert!(j["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("nope.js"));
    }

    #[test]
    fn etag_is_the_fnv1a_hash() {
        // FNV-1a 64 test vectors (Fowler/Noll/Vo reference): "" and "a".
        assert_eq!(fnv1a(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(&etag_bytes(b"a"), b"\"af63dc4c8601ec8c\"");
    }
}
