//! `inflight dev --demo`: a small simulated workload, so a newcomer can watch
//! records live, complete, and flow into post-flight storage.
//!
//! Phone calls (`call/<id>`: ringing → in-progress → completed) and SMS
//! messages (`msg/<id>`: queued → sent → delivered → completed) start a few
//! times a second and move through their statuses. About one in ten is
//! abandoned halfway: nobody completes it, its TTL runs out, and it is handed
//! off as EXPIRED, so post-flight storage shows both endings.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use serde_json::json;

use crate::client::Client;
use crate::pb;

/// TTL of every simulated record; refreshed by each update.
const TTL_MS: u64 = 8_000;

#[derive(Default)]
struct Tally {
    completed: AtomicU64,
    abandoned: AtomicU64,
    errors: AtomicU64,
}

/// Runs until the future is dropped.
pub async fn run(client: Client, postflight: Option<std::path::PathBuf>) {
    let tally = Arc::new(Tally::default());
    let mut report = tokio::time::interval(Duration::from_secs(5));
    report.tick().await;
    let mut next_op = tokio::time::interval(Duration::from_millis(250));
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = next_op.tick() => {
                n += 1;
                let (client, tally) = (client.clone(), tally.clone());
                tokio::spawn(async move {
                    let r = if n % 2 == 0 { call(&client, &tally).await } else { message(&client, &tally).await };
                    if let Err(e) = r {
                        if tally.errors.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("demo: {}: {}", e.code(), e.message());
                        }
                    }
                });
            }
            _ = report.tick() => {
                let files = postflight
                    .as_ref()
                    .map(|d| format!("; post-flight records in {}: {}", d.display(), count_lines(d)))
                    .unwrap_or_default();
                println!(
                    "demo: {} completed, {} abandoned (they expire after {} s and are handed off as EXPIRED){files}",
                    tally.completed.load(Ordering::Relaxed),
                    tally.abandoned.load(Ordering::Relaxed),
                    TTL_MS / 1000,
                );
            }
        }
    }
}

fn count_lines(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".ndjson"))
        .filter_map(|e| std::fs::read(e.path()).ok())
        .map(|b| b.iter().filter(|c| **c == b'\n').count())
        .sum()
}

async fn pause(min_ms: u64, max_ms: u64) {
    let ms = rand::rng().random_range(min_ms..=max_ms);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

fn abandon() -> bool {
    rand::rng().random_bool(0.1)
}

/// Inserts the record (`first`) or moves it to its next status, each time
/// with a fresh TTL: a simulated operation that stops calling in expires.
async fn report(
    client: &Client,
    key: &str,
    value: serde_json::Value,
    first: bool,
) -> Result<(), tonic::Status> {
    let (key, value, ttl_ms) = (
        key.to_string(),
        value.to_string().into_bytes(),
        Some(TTL_MS),
    );
    let sent = if first {
        client
            .send_insert(pb::InsertRequest {
                key,
                value,
                ttl_ms,
                ..Default::default()
            })
            .await
    } else {
        client
            .send_update(pb::UpdateRequest {
                key,
                value,
                ttl_ms,
                ..Default::default()
            })
            .await
    };
    sent.map(|_| ())
}

fn number() -> String {
    format!("+1555{:07}", rand::rng().random_range(0..10_000_000u32))
}

async fn call(client: &Client, tally: &Tally) -> Result<(), tonic::Status> {
    let key = format!("call/{}", uuid::Uuid::now_v7());
    let (from, to) = (number(), number());
    let ringing = json!({"from": from, "to": to, "status": "ringing"});
    report(client, &key, ringing, true).await?;
    pause(300, 1500).await;
    let answered = json!({"from": from, "to": to, "status": "in-progress"});
    report(client, &key, answered, false).await?;
    if abandon() {
        tally.abandoned.fetch_add(1, Ordering::Relaxed);
        return Ok(());
    }
    let secs = rand::rng().random_range(1..=4u64);
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let done = json!({"from": from, "to": to, "status": "completed", "duration_s": secs});
    client
        .complete(&key, Some(done.to_string().into_bytes()), None)
        .await?;
    tally.completed.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

async fn message(client: &Client, tally: &Tally) -> Result<(), tonic::Status> {
    let key = format!("msg/{}", uuid::Uuid::now_v7());
    let to = number();
    report(client, &key, json!({"to": to, "status": "queued"}), true).await?;
    pause(100, 600).await;
    report(client, &key, json!({"to": to, "status": "sent"}), false).await?;
    if abandon() {
        tally.abandoned.fetch_add(1, Ordering::Relaxed);
        return Ok(());
    }
    pause(200, 1500).await;
    report(
        client,
        &key,
        json!({"to": to, "status": "delivered"}),
        false,
    )
    .await?;
    client.complete(&key, None, None).await?;
    tally.completed.fetch_add(1, Ordering::Relaxed);
    Ok(())
}
