//! The pages a person opens in a browser: the try-it page at `/` and the
//! operator console at `/console`, with their scripts and style sheet.
//! They are built into the binary, and served with a policy that lets them
//! load nothing and reach nothing but this node: an edge box may have no
//! internet, and a page that calls only its own node leaks nothing.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::sync::{Arc, OnceLock};

/// One file of the pages.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const ASSETS: [Asset; 7] = [
    Asset { path: "/", content_type: "text/html; charset=utf-8", body: include_str!("../ui/try.html") },
    Asset { path: "/console", content_type: "text/html; charset=utf-8", body: include_str!("../ui/console.html") },
    Asset { path: "/ui/mantle.css", content_type: "text/css; charset=utf-8", body: include_str!("../ui/mantle.css") },
    Asset {
        path: "/ui/common.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../ui/common.js"),
    },
    Asset { path: "/ui/try.js", content_type: "text/javascript; charset=utf-8", body: include_str!("../ui/try.js") },
    Asset {
        path: "/ui/console.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../ui/console.js"),
    },
    Asset { path: "/ui/icon.svg", content_type: "image/svg+xml", body: include_str!("../ui/icon.svg") },
];

/// Scripts, styles, images, audio and calls from this origin only; blob
/// URLs for the photo and recording the page shows; no frames, no plugins,
/// no forms posted elsewhere, and no style attributes or inline scripts.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' blob:; media-src 'self' blob:; connect-src 'self'; form-action 'self'; \
     frame-ancestors 'none'; base-uri 'none'";

/// Bytes the pages add to the binary.
pub fn embedded_bytes() -> usize {
    ASSETS.iter().map(|asset| asset.body.len()).sum()
}

pub fn routes() -> axum::Router<Arc<super::Server>> {
    ASSETS.iter().enumerate().fold(axum::Router::new(), |router, (index, asset)| {
        router.route(asset.path, get(move |headers: HeaderMap| async move { serve(index, &headers) }))
    })
}

/// The asset at `index`, or 304 when the browser's copy is current.
fn serve(index: usize, headers: &HeaderMap) -> Response {
    static ETAGS: OnceLock<Vec<HeaderValue>> = OnceLock::new();
    let etags = ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|asset| {
                let digest = mantle_types::Sha256::of(asset.body.as_bytes()).to_string();
                // Hex digits in quotes: always a valid header value.
                HeaderValue::from_str(&format!("\"{}\"", &digest[..16])).unwrap_or(HeaderValue::from_static("\"\""))
            })
            .collect()
    });
    let asset = &ASSETS[index];
    let etag = &etags[index];
    let current = headers.get(header::IF_NONE_MATCH).is_some_and(|wanted| wanted == etag);
    let mut response = if current { StatusCode::NOT_MODIFIED.into_response() } else { asset.body.into_response() };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    headers.insert(header::ETAG, etag.clone());
    // Checked with the node each time: a page and its scripts never come
    // from different builds.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_the_pages_load_is_served() {
        let served: Vec<&str> = ASSETS.iter().map(|asset| asset.path).collect();
        for asset in &ASSETS {
            for (attribute, quote) in [("src=\"", '"'), ("href=\"", '"'), ("from \"", '"')] {
                for piece in asset.body.split(attribute).skip(1) {
                    let target = piece.split(quote).next().unwrap_or_default();
                    if target.starts_with('/') && !target.starts_with("//") {
                        assert!(served.contains(&target), "{} loads {target}, which is not served", asset.path);
                    }
                }
            }
        }
    }

    #[test]
    fn the_pages_name_no_other_host() {
        for asset in &ASSETS {
            // The SVG namespace is a name, not an address the page loads.
            let body = asset.body.replace("\"http://www.w3.org/2000/svg\"", "");
            for scheme in ["http://", "https://", "ws://", "wss://"] {
                assert!(!body.contains(scheme), "{} names another host ({scheme})", asset.path);
            }
        }
    }
}
