//! Task logs end to end, over HTTP: paging, following live (SSE, read
//! with reqwest as a browser's EventSource would), downloading, reading a
//! log whose worker is gone, and a 200 MB log paged and followed with flat
//! memory.

use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_domain::{TaskInstance, TaskState, WorkflowInstanceId, WorkflowState};
use sluice_e2e::{shell, workflow, Sandbox};

sluice_e2e::both_deployments!(a_task_printing_every_100ms_is_followed_live_to_its_end, logs_are_paged_downloaded_and_bad_requests_named);

const MINUTE: Duration = Duration::from_secs(60);

async fn get(sandbox: &Sandbox, path: &str) -> (u16, Value) {
    let response = sluice_e2e::http_client().get(format!("{}/api/v1{path}", sandbox.api_url())).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// One Server-Sent Event, and when it arrived.
#[derive(Debug)]
struct SseEvent {
    event: String,
    data: String,
    at: Instant,
}

/// Reads an SSE response to its end (or `within`), event by event as
/// the chunks arrive.
async fn read_events(mut response: reqwest::Response, within: Duration) -> Vec<SseEvent> {
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("text/event-stream"), "{content_type}");
    let deadline = Instant::now() + within;
    let mut buffer = String::new();
    let mut events = Vec::new();
    loop {
        let chunk = tokio::time::timeout_at(deadline.into(), response.chunk()).await.expect("the stream did not end in time").unwrap();
        let Some(chunk) = chunk else { break };
        let at = Instant::now();
        buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let (mut event, mut data) = (String::from("message"), Vec::new());
            for line in block.lines() {
                if let Some(name) = line.strip_prefix("event:") {
                    event = name.trim_start().to_owned();
                } else if let Some(text) = line.strip_prefix("data:") {
                    data.push(text.strip_prefix(' ').unwrap_or(text).to_owned());
                }
            }
            if !data.is_empty() {
                events.push(SseEvent { event, data: data.join("\n"), at });
            }
        }
    }
    events
}

async fn stream(sandbox: &Sandbox, path: &str) -> reqwest::Response {
    sluice_e2e::http_client().get(format!("{}/api/v1{path}", sandbox.api_url())).send().await.unwrap()
}

fn task<'a>(tasks: &'a [TaskInstance], name: &str) -> &'a TaskInstance {
    tasks.iter().find(|t| t.name == name).unwrap()
}

/// The text after `[out] ` of the lines that have it.
fn out(lines: impl IntoIterator<Item = impl AsRef<str>>) -> Vec<String> {
    lines.into_iter().filter_map(|l| l.as_ref().split_once(" [out] ").map(|(_, t)| t.to_owned())).collect()
}

async fn run_until_running(sandbox: &Sandbox, script: &str) -> (WorkflowInstanceId, TaskInstance) {
    let spec = workflow("logs", vec![shell("talk", script, &[])]);
    let id = sandbox.run(sandbox.apply(&spec).await).await;
    let (_, tasks) = sandbox.wait_until(id, MINUTE, "talk running", |_, t| t.iter().any(|t| t.state == TaskState::Running && t.host.is_some())).await;
    (id, task(&tasks, "talk").clone())
}

async fn a_task_printing_every_100ms_is_followed_live_to_its_end(sandbox: Sandbox) {
    let (id, talk) = run_until_running(&sandbox, "for i in $(seq 1 20); do echo \"line $i\"; sleep 0.1; done").await;
    let opened = Instant::now();
    let events = read_events(stream(&sandbox, &format!("/task-instances/{}/log/stream", talk.id)).await, MINUTE).await;
    let ended = Instant::now();
    let (wi, tasks) = sandbox.wait_finished(id, MINUTE).await;
    assert_eq!(wi.state, WorkflowState::Success);

    let lines: Vec<&SseEvent> = events.iter().filter(|e| e.event == "line").collect();
    let expected: Vec<String> = (1..=20).map(|i| format!("line {i}")).collect();
    assert_eq!(out(lines.iter().map(|e| &e.data)), expected, "[{}] in order, each once", sandbox.name());
    let last = events.last().unwrap();
    assert_eq!(last.event, "end", "{events:?}");
    let end: Value = serde_json::from_str(&last.data).unwrap();
    assert!(end["next_offset"].as_u64().unwrap() > 0);
    assert!(lines.last().unwrap().data.contains("[sluice] finished: success (exit code 0)"), "the worker's last line comes before `end`");

    // Lines arrived as they were printed, not all at the end.
    let first = lines.iter().find(|e| e.data.ends_with("[out] line 1")).unwrap().at;
    let twentieth = lines.iter().find(|e| e.data.ends_with("[out] line 20")).unwrap().at;
    let spread = twentieth - first;
    println!(
        "[{}] follow: line 1 at +{:?}, line 20 at +{:?} (spread {spread:?}), stream ended at +{:?}",
        sandbox.name(),
        first - opened,
        twentieth - opened,
        ended - opened
    );
    assert!(spread >= Duration::from_millis(1200), "lines arrived in a burst ({spread:?}): not live");
    assert!(ended - twentieth < Duration::from_secs(5), "the stream ended soon after the task");

    // Following a finished attempt: everything, then `end`, at once.
    let talk = task(&tasks, "talk");
    let again = read_events(stream(&sandbox, &format!("/task-instances/{}/log/stream", talk.id)).await, MINUTE).await;
    let texts: Vec<&str> = events.iter().map(|e| e.data.as_str()).collect();
    let again_texts: Vec<&str> = again.iter().map(|e| e.data.as_str()).collect();
    assert_eq!(again_texts, texts);
    sandbox.shutdown().await;
}

async fn logs_are_paged_downloaded_and_bad_requests_named(sandbox: Sandbox) {
    let spec = workflow(
        "paged",
        vec![shell("p", "for i in $(seq 1 25); do echo \"out $i\"; echo \"err $i\" >&2; done; echo '${setValue(n=25)}'", &[])],
    );
    let id = sandbox.run(sandbox.apply(&spec).await).await;
    let (wi, tasks) = sandbox.wait_finished(id, MINUTE).await;
    assert_eq!(wi.state, WorkflowState::Success);
    let p = task(&tasks, "p");
    assert_eq!(p.outputs.get("n").map(String::as_str), Some("25"), "outputs are still read from the output");
    let base = format!("/task-instances/{}/log", p.id);

    let mut lines = Vec::new();
    let mut offset = 0;
    let mut pages = 0;
    loop {
        let (status, page) = get(&sandbox, &format!("{base}?limit=7&offset={offset}")).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!((page["attempt"].as_u64(), page["task_instance_id"].as_i64()), (Some(1), Some(p.id.get())));
        let page_lines = page["lines"].as_array().unwrap();
        assert!(page_lines.len() <= 7);
        lines.extend(page_lines.iter().map(|l| l.as_str().unwrap().to_owned()));
        offset = page["next_offset"].as_u64().unwrap();
        pages += 1;
        if page["finished"].as_bool().unwrap() {
            break;
        }
        assert!(pages < 100);
    }
    let expected: Vec<String> = (1..=25).flat_map(|i| [format!("out {i}"), format!("err {i}")]).chain(["${setValue(n=25)}".to_owned()]).collect();
    assert_eq!(out(&lines), expected, "stdout and stderr interleaved in order");
    assert!(lines.iter().any(|l| l.contains("[sluice] command: bash ")), "{lines:?}");
    assert!(lines.last().unwrap().contains("[sluice] finished: success (exit code 0) after "), "{lines:?}");

    // Download: the same lines, as a file.
    let response = sluice_e2e::http_client().get(format!("{}/api/v1{base}/download", sandbox.api_url())).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-disposition"].to_str().unwrap().contains(&format!("task-{}-attempt-1.log", p.id)));
    let text = response.text().await.unwrap();
    assert_eq!(text, lines.join("\n") + "\n");
    assert_eq!(offset, text.len() as u64, "next_offset is a byte offset");

    // Bad input is named.
    let refused = |field: &'static str| move |(status, body): (u16, Value)| {
        assert_eq!((status, body["error"]["code"].as_str(), body["error"]["field"].as_str()), (400, Some("invalid_input"), Some(field)), "{body}");
        body["error"]["message"].as_str().unwrap().to_owned()
    };
    let message = refused("attempt")(get(&sandbox, &format!("{base}?attempt=2")).await);
    assert_eq!(message, format!("task instance {} has attempts 1 to 1, not 2", p.id));
    refused("attempt")(get(&sandbox, &format!("{base}?attempt=0")).await);
    refused("attempt")(get(&sandbox, &format!("{base}?attempt=x")).await);
    refused("offset")(get(&sandbox, &format!("{base}?offset=-1")).await);
    let message = refused("offset")(get(&sandbox, &format!("{base}?offset=3")).await);
    assert!(message.contains("not at the start of a line"), "{message}");
    refused("offset")(get(&sandbox, &format!("{base}?offset=999999999")).await);
    refused("limit")(get(&sandbox, &format!("{base}?limit=0")).await);
    refused("limit")(get(&sandbox, &format!("{base}?limit=10001")).await);
    refused("attempt")(get(&sandbox, &format!("{base}/stream?attempt=5")).await);
    refused("offset")(get(&sandbox, &format!("{base}/download?offset=0")).await);
    let (status, body) = get(&sandbox, "/task-instances/999999/log").await;
    assert_eq!((status, body["error"]["message"].as_str()), (404, Some("task instance 999999 not found")));

    // A task that never ran (its upstream failed) has no log anywhere.
    let spec = workflow("never", vec![shell("fails", "exit 1", &[]), shell("never", "true", &["fails"])]);
    let id = sandbox.run(sandbox.apply(&spec).await).await;
    let (_, tasks) = sandbox.wait_finished(id, MINUTE).await;
    if let Some(never) = tasks.iter().find(|t| t.name == "never") {
        let (status, body) = get(&sandbox, &format!("/task-instances/{}/log", never.id)).await;
        assert_eq!(status, 404, "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("no log for task instance"), "{body}");
    }
    let fails = task(&tasks, "fails");
    let (status, page) = get(&sandbox, &format!("/task-instances/{}/log", fails.id)).await;
    assert_eq!(status, 200);
    let last = page["lines"].as_array().unwrap().last().unwrap().as_str().unwrap().to_owned();
    assert!(last.contains("[sluice] finished: failure (exit code 1) after "), "{last}");
    sandbox.shutdown().await;
}

/// The worker that ran a task dies after the task finished: its log is
/// read from the log store, paged, followed and downloaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_log_of_a_task_whose_worker_died_after_it_finished_is_read_from_the_store() {
    let mut sandbox = Sandbox::cluster(1, 2).await;
    let spec = workflow("gone", vec![shell("done", "echo one; echo two >&2; echo three", &[])]);
    let id = sandbox.run(sandbox.apply(&spec).await).await;
    let (wi, tasks) = sandbox.wait_finished(id, MINUTE).await;
    assert_eq!(wi.state, WorkflowState::Success);
    let done = task(&tasks, "done").clone();
    let base = format!("/task-instances/{}/log", done.id);
    let (status, before) = get(&sandbox, &base).await;
    assert_eq!((status, before["source"].as_str()), (200, Some("worker")), "{before}");

    let host = done.host.clone().unwrap();
    sandbox.crash_worker(&host).await;
    let started = Instant::now();
    let (status, after) = get(&sandbox, &base).await;
    println!("fallback to the store took {:?}", started.elapsed());
    assert_eq!((status, after["source"].as_str(), after["finished"].as_bool()), (200, Some("store"), Some(true)), "{after}");
    assert_eq!(after["lines"], before["lines"], "the store has the same log");
    assert_eq!(out(after["lines"].as_array().unwrap().iter().map(|l| l.as_str().unwrap())), ["one", "two", "three"]);

    let events = read_events(stream(&sandbox, &format!("{base}/stream")).await, MINUTE).await;
    let lines: Vec<&str> = events.iter().filter(|e| e.event == "line").map(|e| e.data.as_str()).collect();
    let expected: Vec<&str> = after["lines"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
    assert_eq!(lines, expected);
    assert_eq!(events.last().unwrap().event, "end");

    let text = sluice_e2e::http_client().get(format!("{}/api/v1{base}/download", sandbox.api_url())).send().await.unwrap().text().await.unwrap();
    assert_eq!(text, expected.join("\n") + "\n");

    // Neither worker nor store: a clear 404.
    std::fs::remove_dir_all(sandbox.log_store_dir()).unwrap();
    let (status, body) = get(&sandbox, &base).await;
    assert_eq!(status, 404, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains(&format!("its worker {host} does not have it or cannot be reached")) && message.contains("log store has no copy"), "{message}");
    sandbox.shutdown().await;
}

/// `VmRSS` and `VmHWM` (peak) of this process, in MiB.
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| {
        status.lines().find_map(|l| l.strip_prefix(name)).unwrap().trim().trim_end_matches(" kB").trim().parse::<u64>().unwrap() / 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Resets `VmHWM` to the current RSS (Linux), so that the next reading is
/// the peak of what happened in between.
fn reset_peak() {
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
}

/// A 200 MB log is paged through the API and followed over SSE, with the
/// worker and the API (both in this process) holding a page at a time:
/// the peak RSS while doing it stays within 50 MB of where it started.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_200_mb_log_is_paged_and_followed_with_flat_memory() {
    let sandbox = Sandbox::standalone().await;
    // ~2.2 M lines of ~95 bytes (with the prefix): over 200 MB.
    let script = "seq -f 'line %.0f ..........................................................' 1 2200000";
    let spec = workflow("big", vec![shell("big", script, &[])]);
    reset_peak();
    let (rss_start, _) = memory();
    let id = sandbox.run(sandbox.apply(&spec).await).await;
    let (wi, tasks) = sandbox.wait_finished(id, Duration::from_secs(600)).await;
    assert_eq!(wi.state, WorkflowState::Success);
    let big = task(&tasks, "big");
    let path = sandbox.worker_log_dir(0).join(format!("{}/{}_1.log", id, big.id));
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(size > 200 << 20, "the log is {size} bytes");
    let (rss, peak) = memory();
    println!("writing a {} MB log: RSS {rss_start} MiB before, {rss} MiB after, peak {peak} MiB", size >> 20);

    reset_peak();
    let (rss_before, _) = memory();
    let started = Instant::now();
    let client = sluice_e2e::http_client();
    let (mut offset, mut lines, mut pages) = (0u64, 0u64, 0u64);
    loop {
        let url = format!("{}/api/v1/task-instances/{}/log?limit=10000&offset={offset}", sandbox.api_url(), big.id);
        let page: Value = client.get(url).send().await.unwrap().json().await.unwrap();
        let n = page["lines"].as_array().unwrap().len() as u64;
        if pages == 0 {
            assert_eq!(page["source"], "worker");
        }
        lines += n;
        pages += 1;
        offset = page["next_offset"].as_u64().unwrap();
        if page["finished"].as_bool().unwrap() {
            break;
        }
        assert!(n > 0, "an unfinished page with no lines at {offset}");
    }
    let (rss_after, peak) = memory();
    println!(
        "paging {} MB ({lines} lines, {pages} pages) in {:?}: RSS {rss_before} MiB before, {rss_after} MiB after, peak {peak} MiB (+{} MiB)",
        size >> 20,
        started.elapsed(),
        peak.saturating_sub(rss_before)
    );
    assert_eq!(offset, size, "paged to the end");
    assert_eq!(lines, 2_200_000 + 4, "every output line and the worker's 4");
    assert!(peak <= rss_before + 50, "paging took {} MiB more than at the start", peak - rss_before);

    reset_peak();
    let (rss_before, _) = memory();
    let started = Instant::now();
    let mut response = client.get(format!("{}/api/v1/task-instances/{}/log/stream", sandbox.api_url(), big.id)).send().await.unwrap();
    let mut bytes = 0u64;
    let mut tail = Vec::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        bytes += chunk.len() as u64;
        tail.extend_from_slice(&chunk);
        let keep = tail.len().saturating_sub(200);
        tail.drain(..keep);
    }
    let (_, peak) = memory();
    println!(
        "following {} MB: {} MB of SSE in {:?}, RSS {rss_before} MiB before, peak {peak} MiB (+{} MiB)",
        size >> 20,
        bytes >> 20,
        started.elapsed(),
        peak.saturating_sub(rss_before)
    );
    assert!(String::from_utf8_lossy(&tail).contains("event: end"), "{}", String::from_utf8_lossy(&tail));
    assert!(bytes > size, "every line was sent");
    assert!(peak <= rss_before + 50, "following took {} MiB more than at the start", peak - rss_before);
    sandbox.shutdown().await;
}
