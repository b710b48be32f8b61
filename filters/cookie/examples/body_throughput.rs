//! Measures body link translation natively on a 1 MiB HTML page.
//!
//! `cargo run --release -p portcullis-cookie --example body_throughput`
//! (an optional argument sets the chunk size in bytes, default 16384).

use portcullis_core::cookies::CookieFilterConfig;
use std::time::Instant;

fn page() -> Vec<u8> {
    let row = concat!(
        "<tr><td><a href=\"http://wiki.internal:8080/app/page/42?x=1\">Page</a></td>",
        "<td><img src=\"//wiki.internal:8080/app/img/a.png\" alt=\"\"></td>",
        "<td>Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod</td>",
        "<td><a href=\"https://cdn.example.com/lib.js\">cdn</a> / <a href=\"/app/rel\">rel</a></td></tr>\n",
    );
    let mut out = b"<!doctype html><html><body><table>\n".to_vec();
    while out.len() < 1024 * 1024 {
        out.extend_from_slice(row.as_bytes());
    }
    out.truncate(1024 * 1024);
    out
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let chunk: usize = match std::env::args().nth(1) {
        Some(a) => a.parse()?,
        None => 16 * 1024,
    };
    let config = CookieFilterConfig::from_json(
        br#"{"apps": [{"internal_url": "http://wiki.internal:8080/app",
                       "external_url": "https://wiki.localhost:10443/",
                       "body": {"enabled": true}}]}"#,
    )?;
    let policy = config.apps[0]
        .body
        .as_ref()
        .ok_or("body translation is not enabled")?;
    let page = page();
    let rounds = 50;
    let mut out_len = 0;
    let mut rewrites = 0;
    let start = Instant::now();
    for _ in 0..rounds {
        let mut rewriter = policy.rewriter();
        let chunks: Vec<&[u8]> = page.chunks(chunk).collect();
        for (i, c) in chunks.iter().enumerate() {
            out_len += rewriter
                .push(&policy.matcher, c, i + 1 == chunks.len())
                .len();
        }
        rewrites = rewriter.rewrites();
    }
    let secs = start.elapsed().as_secs_f64();
    let mb = (page.len() * rounds) as f64 / 1e6;
    println!(
        "1 MiB HTML page, {chunk}-byte chunks, {rounds} rounds: {:.1} MB/s ({rewrites} URLs rewritten per page, {} bytes out per page)",
        mb / secs,
        out_len / rounds
    );
    Ok(())
}
