//! Large bodies stream both ways through the tunnel with bounded memory.
//! Size: `PORTCULLIS_LARGE_BODY_MIB` (default 64; set 1024 for the 1 GiB run).
//! Own test binary, so no other test's memory use disturbs the RSS measurement.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use http_body_util::BodyExt as _;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

fn sampler() -> (Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let peak = Arc::new(AtomicU64::new(0));
    let p = peak.clone();
    let task = tokio::spawn(async move {
        loop {
            p.fetch_max(rss_bytes(), Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    (peak, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_upload_and_download_stream_with_bounded_memory() {
    let mib: u64 = std::env::var("PORTCULLIS_LARGE_BODY_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let n = mib << 20;
    let w = world(|b| vec![app("hello", "default", &format!("http://{}", b.addr))]).await;
    let cfg = register(&w.edge, &w.idp, &w.dir.path().join("c1"), "default").await;
    let c = start_connector(&cfg).await;
    wait_tunnels(&w.edge, 2).await;
    let client = client();
    let _ = get(&client, &w.edge, "hello", "/echo").await;
    let baseline = rss_bytes();
    let (peak, sampling) = sampler();

    // Download: consume chunk by chunk, checking the pattern.
    let resp = client
        .request(
            req(&w.edge, "hello", &format!("/bytes?n={n}"))
                .body(portcullis_connector::body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap();
        if let Some(d) = frame.data_ref() {
            assert!(
                d.iter()
                    .enumerate()
                    .all(|(i, b)| *b == ((got + i as u64) % 251) as u8),
                "pattern at {got}"
            );
            got += d.len() as u64;
        }
    }
    assert_eq!(got, n);

    // Upload: the sample app counts and checks the pattern.
    let r = req(&w.edge, "hello", "/upload")
        .method("POST")
        .body(pattern_body(n))
        .unwrap();
    let (status, _, body) = send(&client, r).await;
    assert_eq!(status, 200);
    let v = json(&body);
    assert_eq!(v["bytes"], n);
    assert_eq!(v["pattern_ok"], true);

    sampling.abort();
    let grew = peak.load(Ordering::Relaxed).saturating_sub(baseline);
    eprintln!(
        "{mib} MiB each way; RSS baseline {} MiB, peak growth {} MiB",
        baseline >> 20,
        grew >> 20
    );
    assert!(
        grew < 64 << 20,
        "memory grew by {} MiB while streaming {mib} MiB",
        grew >> 20
    );
    let m = w.edge.handle.metrics();
    assert!(m.bytes_up_total.load(Ordering::Relaxed) >= n);
    assert!(m.bytes_down_total.load(Ordering::Relaxed) >= n);
    c.stop().await;
    w.edge.stop().await;
}
