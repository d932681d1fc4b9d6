//! The worker against a real (in-test) gRPC master that records the events
//! it receives, and the embedded registry. Tests wait on events and state
//! with bounded timeouts, never on fixed sleeps.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sluice_config::WorkerConfig;
use sluice_domain::{
    Params, Priority, QueueKey, QueueTicket, TaskDispatch, TaskInstanceId, TaskType, TimeoutStrategy,
    WorkerHeartbeat, WorkflowInstanceId,
};
use sluice_proto::v1::master_service_server::{MasterService, MasterServiceServer};
use sluice_proto::v1::task_event_request::Event;
use sluice_proto::v1::worker_service_client::WorkerServiceClient;
use sluice_proto::v1::{
    KillTaskRequest, TaskEventReply, TaskEventRequest, TaskFinished, TaskOutcome,
};
use sluice_registry::{paths, EmbeddedRegistry, Registry};
use sluice_runtime::{CancellationToken, Role};
use sluice_worker::{TaskAttempt, Worker};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

/// Upper bound for anything a test waits for; generous for a loaded CI box.
const WAIT: Duration = Duration::from_secs(20);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

// ---------------------------------------------------------------------------
// A master that records events

/// The dispatches the tests queued tickets for, by (master, task instance,
/// attempt): what a master's board holds.
static POSTED: std::sync::Mutex<Vec<TaskDispatch>> = std::sync::Mutex::new(Vec::new());

fn posted(master: &str, task: i64, attempt: u32) -> Option<TaskDispatch> {
    POSTED
        .lock()
        .unwrap()
        .iter()
        .rev()
        .find(|d| d.master == master && d.task_instance_id.get() == task && d.attempt == attempt)
        .cloned()
}

struct Recorder {
    addr: String,
    events: mpsc::UnboundedSender<TaskEventRequest>,
    /// Calls still to answer with `accepted: false`.
    refuse: AtomicUsize,
}

#[tonic::async_trait]
impl MasterService for Recorder {
    /// Nothing is ever reassigned in these tests.
    async fn check_attempts(
        &self,
        _: Request<sluice_proto::v1::CheckAttemptsRequest>,
    ) -> Result<Response<sluice_proto::v1::CheckAttemptsReply>, Status> {
        Ok(Response::new(sluice_proto::v1::CheckAttemptsReply { stale: Vec::new() }))
    }

    /// The dispatch a test posted for the ticket it queued.
    async fn fetch_task(
        &self,
        request: Request<sluice_proto::v1::FetchTaskRequest>,
    ) -> Result<Response<sluice_proto::v1::FetchTaskReply>, Status> {
        use sluice_proto::v1::fetch_task_reply::Answer;
        let request = request.into_inner();
        let answer = match posted(&self.addr, request.task_instance_id, request.attempt) {
            Some(dispatch) => Answer::Dispatch(dispatch.to_json()),
            None => Answer::Stale("never queued".into()),
        };
        Ok(Response::new(sluice_proto::v1::FetchTaskReply { answer: Some(answer) }))
    }

    async fn report_task_event(
        &self,
        request: Request<TaskEventRequest>,
    ) -> Result<Response<TaskEventReply>, Status> {
        let refused = self
            .refuse
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if refused {
            return Ok(Response::new(TaskEventReply {
                accepted: false,
                reason: "not the owner".into(),
                owner: String::new(),
            }));
        }
        let _ = self.events.send(request.into_inner());
        Ok(Response::new(TaskEventReply {
            accepted: true,
            reason: String::new(),
            owner: String::new(),
        }))
    }
}

struct RecordingMaster {
    addr: SocketAddr,
    events: mpsc::UnboundedReceiver<TaskEventRequest>,
    stop: CancellationToken,
}

impl RecordingMaster {
    async fn start() -> Self {
        Self::serve(TcpListener::bind("127.0.0.1:0").await.unwrap(), 0)
    }

    /// A master that refuses the first `refuse` events it is sent.
    async fn start_refusing(refuse: usize) -> Self {
        Self::serve(TcpListener::bind("127.0.0.1:0").await.unwrap(), refuse)
    }

    fn serve(listener: TcpListener, refuse: usize) -> Self {
        let addr = listener.local_addr().unwrap();
        let (tx, events) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let service = MasterServiceServer::new(Recorder {
            addr: addr.to_string(),
            events: tx,
            refuse: AtomicUsize::new(refuse),
        });
        let shutdown = stop.clone().cancelled_owned();
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    shutdown,
                )
                .await
        });
        RecordingMaster { addr, events, stop }
    }

    fn addr(&self) -> String {
        self.addr.to_string()
    }

    async fn next(&mut self) -> TaskEventRequest {
        tokio::time::timeout(WAIT, self.events.recv())
            .await
            .expect("no task event in time")
            .expect("recording master is gone")
    }

    /// Events up to and including the next `Finished`.
    async fn until_finished(&mut self) -> (Vec<TaskEventRequest>, TaskFinished) {
        let mut seen = Vec::new();
        loop {
            let event = self.next().await;
            if let Some(Event::Finished(finished)) = &event.event {
                let finished = finished.clone();
                seen.push(event);
                return (seen, finished);
            }
            seen.push(event);
        }
    }
}

impl Drop for RecordingMaster {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// An attempt's log, each line checked against the format
/// `<RFC 3339 UTC ms> [out|sluice] text`.
struct Log {
    lines: Vec<(String, String)>,
}

impl Log {
    fn read(path: impl AsRef<Path>) -> Log {
        let text = std::fs::read_to_string(path).unwrap();
        assert!(text.ends_with('\n'), "{text}");
        let lines = text
            .lines()
            .map(|line| {
                let (at, rest) = line.split_once(' ').unwrap_or_else(|| panic!("no timestamp: {line}"));
                assert_eq!(at.len(), 24, "{line}");
                chrono::DateTime::parse_from_rfc3339(at).unwrap_or_else(|e| panic!("bad timestamp ({e}): {line}"));
                let (source, text) = rest.split_once("] ").unwrap_or_else(|| panic!("no source: {line}"));
                (source.trim_start_matches('[').to_owned(), text.to_owned())
            })
            .collect();
        Log { lines }
    }

    /// The task's output, one `\n`-ended line per log line.
    fn out(&self) -> String {
        self.lines.iter().filter(|(s, _)| s == "out").map(|(_, t)| format!("{t}\n")).collect()
    }

    fn sluice(&self) -> Vec<&str> {
        self.lines.iter().filter(|(s, _)| s == "sluice").map(|(_, t)| t.as_str()).collect()
    }
}

fn kind(event: &TaskEventRequest) -> &'static str {
    match event.event {
        Some(Event::Running(_)) => "running",
        Some(Event::Finished(_)) => "finished",
        Some(Event::TimeoutWarning(_)) => "timeout_warning",
        Some(Event::ExternalId(_)) => "external_id",
        None => "none",
    }
}

fn kinds(events: &[TaskEventRequest]) -> Vec<&'static str> {
    events.iter().map(kind).collect()
}

fn running_of(event: &TaskEventRequest) -> (u32, String) {
    match &event.event {
        Some(Event::Running(running)) => (running.pid, running.log_path.clone()),
        other => panic!("expected a running event, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Worker, queue and tasks

struct Setup {
    registry: EmbeddedRegistry,
    /// The masters' session, used to queue tasks.
    queue: Arc<dyn Registry>,
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Self {
        init_tracing();
        let registry = EmbeddedRegistry::new();
        let queue: Arc<dyn Registry> = Arc::new(registry.session());
        Setup {
            registry,
            queue,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn config(&self, slots: u32) -> WorkerConfig {
        WorkerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            advertise: None,
            groups: vec!["default".into()],
            slots: Some(slots),
            heartbeat_interval: Duration::from_millis(100),
            work_dir: self.dir.path().join("work"),
            log_dir: self.dir.path().join("logs"),
            kill_grace: Duration::from_millis(500),
            keep_running_when_disconnected: false,
        }
    }

    fn worker_with(&self, config: WorkerConfig) -> Worker {
        Worker::new(config, Arc::new(self.registry.session()))
    }

    async fn worker(&self, slots: u32) -> Worker {
        let mut worker = self.worker_with(self.config(slots));
        worker.start().await.unwrap();
        worker
    }

    fn workdir(&self, task: &TaskDispatch) -> PathBuf {
        self.dir
            .path()
            .join("work")
            .join(task.workflow_instance_id.to_string())
            .join(task.task_instance_id.to_string())
            .join(task.attempt.to_string())
    }

    async fn put(&self, task: &TaskDispatch) {
        self.put_in("default", task, Priority::Medium).await;
    }

    /// Queues a ticket for `task`, as a master does, and posts the
    /// dispatch where the worker fetches it.
    async fn put_in(&self, group: &str, task: &TaskDispatch, priority: Priority) {
        POSTED.lock().unwrap().push(task.clone());
        self.queue
            .queue_put(group, &key(task, priority), &QueueTicket::of(task).to_json())
            .await
            .unwrap();
    }

    /// Queues the whole dispatch, as a master of an earlier release did.
    async fn put_whole(&self, task: &TaskDispatch) {
        self.queue
            .queue_put("default", &key(task, Priority::Medium), &task.to_json())
            .await
            .unwrap();
    }
}

fn key(task: &TaskDispatch, priority: Priority) -> String {
    QueueKey {
        workflow_priority: Priority::Medium,
        workflow_instance_id: task.workflow_instance_id,
        task_priority: priority,
        task_instance_id: task.task_instance_id,
    }
    .encode()
}

fn task(master: &str, id: i64, task_type: &str, script: &str) -> TaskDispatch {
    let mut body = serde_json::Map::new();
    body.insert("script".into(), script.into());
    TaskDispatch {
        workflow_instance_id: WorkflowInstanceId(7),
        task_instance_id: TaskInstanceId(id),
        attempt: 1,
        master: master.to_owned(),
        project: "demo".into(),
        workflow: "etl".into(),
        task: format!("t{id}"),
        task_type: TaskType::new(task_type),
        body,
        params: Params::new(),
        timeout: None,
        timeout_strategy: TimeoutStrategy::Warn,
    }
}

fn shell(master: &str, id: i64, script: &str) -> TaskDispatch {
    task(master, id, "shell", script)
}

/// Polls cheap local state (a file, the registry, `/proc`) until `check`
/// holds; panics after [`WAIT`].
async fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn read_pid(path: &Path) -> i32 {
    wait_for(&format!("{}", path.display()), || {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|text| text.trim().parse().ok())
    })
    .await
}

/// Whether `pid` is a live process (a zombie waiting to be reaped is dead).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

async fn heartbeat(registry: &dyn Registry, worker: &Worker) -> Option<WorkerHeartbeat> {
    let members = registry
        .members(&paths::workers_dir("default"))
        .await
        .unwrap();
    let member = members.into_iter().find(|m| m.name == worker.addr())?;
    Some(serde_json::from_slice(&member.data).unwrap())
}

// ---------------------------------------------------------------------------
// Tests

/// An entry holding the whole dispatch (queued by a master of an earlier
/// release) runs as it is; a ticket whose master says it is stale does not
/// run at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_dispatches_run_and_stale_tickets_do_not() {
    let setup = Setup::new();
    let mut master = RecordingMaster::start().await;
    let _worker = setup.worker(2).await;
    let stale = shell(&master.addr(), 31, "touch ran-anyway\n");
    setup
        .queue
        .queue_put("default", &key(&stale, Priority::High), &QueueTicket::of(&stale).to_json())
        .await
        .unwrap();
    setup.put_whole(&shell(&master.addr(), 32, "echo whole\n")).await;
    let (events, finished) = master.until_finished().await;
    assert_eq!(events[0].task_instance_id, 32, "only the whole dispatch ran: {events:?}");
    assert_eq!(finished.outcome, i32::from(TaskOutcome::Success));
    assert!(!setup.workdir(&stale).join("ran-anyway").exists());
    assert!(
        tokio::time::timeout(Duration::from_millis(500), master.events.recv()).await.is_err(),
        "the stale ticket sent no event"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_task_succeeds_with_params_and_identity_in_its_environment() {
    let setup = Setup::new();
    let mut master = RecordingMaster::start().await;
    let mut worker = setup.worker(2).await;
    let mut t = shell(
        &master.addr(),
        11,
        r#"echo "dt=$dt"
echo "ids=$SLUICE_WORKFLOW_INSTANCE_ID/$SLUICE_TASK_INSTANCE_ID/$SLUICE_ATTEMPT"
echo "names=$SLUICE_PROJECT/$SLUICE_WORKFLOW_NAME/$SLUICE_TASK_NAME"
echo "cwd=$(pwd)"
echo "to stderr" >&2
echo "back to stdout"
echo "$dt" > out.txt
echo 'rows: ${setValue(rows=42)} ${setValue(day=$dt)}' | sed "s/\$dt/$dt/"
"#,
    );
    t.params.insert("dt".into(), "20260101".into());
    setup.put(&t).await;

    let (events, finished) = master.until_finished().await;
    assert_eq!(kinds(&events), ["running", "finished"]);
    assert_eq!(
        finished,
        TaskFinished {
            outcome: TaskOutcome::Success.into(),
            exit_code: Some(0),
            reason: "exit code 0".into(),
            outputs: [("rows".to_string(), "42".to_string()), ("day".to_string(), "20260101".to_string())].into(),
        }
    );
    for event in &events {
        assert_eq!(
            (
                event.workflow_instance_id,
                event.task_instance_id,
                event.attempt
            ),
            (7, 11, 1)
        );
        assert_eq!(event.worker, worker.addr());
        assert!(event.event_time_ms > 0);
    }
    let (pid, log_path) = running_of(&events[0]);
    assert!(pid > 0);
    assert_eq!(
        PathBuf::from(&log_path),
        setup.dir.path().join("logs/7/11_1.log")
    );
    let workdir = setup.workdir(&t);
    let log = Log::read(&log_path);
    assert_eq!(
        log.out(),
        format!(
            "dt=20260101\nids=7/11/1\nnames=demo/etl/t11\ncwd={}\nto stderr\nback to stdout\nrows: ${{setValue(rows=42)}} ${{setValue(day=20260101)}}\n",
            workdir.display()
        )
    );
    let notes = log.sluice();
    assert!(notes[0].starts_with("attempt 1 of task `t11` (shell) of demo/etl, workflow instance 7, on worker "), "{notes:?}");
    assert_eq!(notes[1], "parameters: dt=20260101");
    assert_eq!(notes[2], format!("command: bash {}/script.sh", workdir.display()));
    assert!(notes[3].starts_with("finished: success (exit code 0) after "), "{notes:?}");
    assert_eq!(notes.len(), 4, "{notes:?}");
    assert_eq!(
        std::fs::read_to_string(workdir.join("out.txt")).unwrap(),
        "20260101\n"
    );
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_task_succeeds_and_its_streams_interleave_in_order() {
    let setup = Setup::new();
    let mut master = RecordingMaster::start().await;
    let mut worker = setup.worker(2).await;
    let mut t = task(
        &master.addr(),
        12,
        "python",
        "import os, sys\nprint('dt', os.environ['dt'])\nprint('err', file=sys.stderr)\nprint('attempt', os.environ['SLUICE_ATTEMPT'])\n",
    );
    t.params.insert("dt".into(), "20260102".into());
    setup.put(&t).await;

    let (events, finished) = master.until_finished().await;
    assert_eq!(finished.outcome(), TaskOutcome::Success, "{finished:?}");
    let (_, log_path) = running_of(&events[0]);
    assert_eq!(Log::read(&log_path).out(), "dt 20260102\nerr\nattempt 1\n");
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_zero_exit_fails_with_the_exit_code() {
    let setup = Setup::new();
    let mut master = RecordingMaster::start().await;
    let mut worker = setup.worker(2).await;
    setup
        .put(&shell(&master.addr(), 13, "echo failing\nexit 3\n"))
        .await;

    let (events, finished) = master.until_finished().await;
    assert_eq!(kinds(&events), ["running", "finished"]);
    assert_eq!(
        finished,
        TaskFinished {
            outcome: TaskOutcome::Failure.into(),
            exit_code: Some(3),
            reason: "exit code 3".into(),
            outputs: Default::default(),
        }
    );
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_fail_kills_the_whole_process_group() {
    let setup = Setup::new();
    let mut master = RecordingMaster::start().await;
    let mut worker = setup.worker(2).await;
    let mut t = shell(
        &master.addr(),
        14,
        "sleep 60 &\necho $! > bg.pid\nsh -c 'echo $$ > fg.pid; exec sleep 60'\n",
    );
    t.timeout = Some(Duration::from_secs(2));
    t.timeout_strategy = TimeoutStrategy::Fail;
    setup.put(&t).await;

    let workdir = setup.workdir(&t);
    let (events, finished) = master.until_finished().await;
    assert_eq!(
        kinds(&events),
        ["running", "finished"],
        "no warning with strategy fail"
    );
    assert_eq!(
        finished,
        TaskFinished {
            outcome: TaskOutcome::Failure.into(),
            exit_code: None,
            reason: "timed out after 2s".into(),
            outputs: Default::default(),
        }
    );
    let leader = running_of(&events[0]).0 as i32;
    let background = read_pid(&workdir.join("bg.pid")).await;
    let foreground = read_pid(&workdir.join("fg.pid")).await;
    for pid in [leader, background, foreground] {
        assert!(!alive(pid), "pid {pid} survived the timeout");
    }
    assert!(worker.running_tasks().is_empty());
    let log = Log::read(running_of(&events[0]).1);
    let notes = log.sluice();
    assert!(notes.contains(&"timed out after 2s; killing the task"), "{notes:?}");
    assert!(notes.last().unwrap().starts_with("finished: failure (timed out after 2s) after 2"), "{notes:?}");
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_warn_fail_warns_then_kills() {
    let setup = Setup::new();
    let mut master = RecordingMaster::start().await;
    let mut worker = setup.worker(2).await;
    let mut t = shell(&master.addr(), 15, "sleep 60\n");
    t.timeout = Some(Duration::from_millis(300));
    t.timeout_strategy = TimeoutStrategy::WarnFail;
    setup.put(&t).await;

    let (events, finished) = master.until_finished().await;
    assert_eq!(kinds(&events), ["running", "timeout_warning", "finished"]);
    assert_eq!(finished.reason, "timed out after 300ms");
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_warn_sends_a_warning_and_keeps_running() {
    let setup = Setup::new();
    let mut master = RecordingMaster::start().await;
    let mut worker = setup.worker(2).await;
    let mut t = shell(
        &master.addr(),
        16,
        "while [ ! -f go ]; do sleep 0.02; done\necho went\n",
    );
    t.timeout = Some(Duration::from_millis(300));
    t.timeout_strategy = TimeoutStrategy::Warn;
    setup.put(&t).await;

    assert_eq!(kind(&master.next().await), "running");
    let warning = master.next().await;
    match warning.event {
        Some(Event::TimeoutWarning(w)) => assert_eq!(w.timeout_ms, 300),
        other => panic!("expected a timeout warning, got {other:?}"),
    }
    assert_eq!(
        worker.running_tasks(),
        [TaskAttempt {
            task_instance_id: TaskInstanceId(16),
            attempt: 1
        }]
    );
    std::fs::write(setup.workdir(&t).join("go"), "").unwrap();
    let (events, finished) = master.until_finished().await;
    assert_eq!(kinds(&events), ["finished"], "warned once only");
    assert_eq!(finished.outcome(), TaskOutcome::Success);
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_task_kills_the_group_even_when_it_ignores_sigterm() {
    let setup = Setup::new();
    let mut master = RecordingMaster::start().await;
    let mut worker = setup.worker(2).await;
    // Ignoring SIGTERM (inherited by the children) forces the SIGKILL
    // after the grace period.
    let t = shell(
        &master.addr(),
        17,
        "trap '' TERM\nsleep 60 &\necho $! > bg.pid\nsleep 60\n",
    );
    setup.put(&t).await;
    let leader = running_of(&master.next().await).0 as i32;
    let background = read_pid(&setup.workdir(&t).join("bg.pid")).await;

    let mut client = WorkerServiceClient::connect(format!("http://{}", worker.addr()))
        .await
        .unwrap();
    let other = KillTaskRequest {
        task_instance_id: 17,
        attempt: 2,
        reason: "wrong attempt".into(),
    };
    assert!(!client.kill_task(other).await.unwrap().into_inner().found);
    let kill = KillTaskRequest {
        task_instance_id: 17,
        attempt: 1,
        reason: "killed by alice".into(),
    };
    assert!(client.kill_task(kill).await.unwrap().into_inner().found);

    let (events, finished) = master.until_finished().await;
    assert_eq!(kinds(&events), ["finished"]);
    assert_eq!(finished.outcome(), TaskOutcome::Killed);
    assert_eq!(finished.reason, "killed by alice");
    for pid in [leader, background] {
        assert!(!alive(pid), "pid {pid} survived the kill");
    }
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_slot_worker_runs_queued_tasks_strictly_in_key_order() {
    let setup = Setup::new();
    let mut master = RecordingMaster::start().await;
    // Queued before the worker starts, in an order unrelated to the keys.
    // Each task writes when it starts and when it ends to one file: the
    // file is the order things ran in.
    let ran = setup.dir.path().join("ran");
    let mut expected = Vec::new();
    for (i, id) in [5i64, 2, 9, 1, 7, 3, 10, 4, 8, 6].into_iter().enumerate() {
        let script = format!("echo start {id} >> {ran}\nsleep 0.02\necho end {id} >> {ran}\n", ran = ran.display());
        let t = shell(&master.addr(), id, &script);
        let priority = Priority::from_rank((i % 5) as u8).unwrap();
        setup.put_in("default", &t, priority).await;
        expected.push((key(&t, priority), id));
    }
    expected.sort();
    let expected: Vec<String> = expected.into_iter().flat_map(|(_, id)| [format!("start {id}"), format!("end {id}")]).collect();

    let mut worker = setup.worker(1).await;
    let mut events = Vec::new();
    for _ in 0..expected.len() / 2 {
        let (seen, finished) = master.until_finished().await;
        assert_eq!(finished.outcome(), TaskOutcome::Success);
        events.extend(seen);
    }
    // Events of different tasks may reach the master in any order; a
    // task's own come in order.
    for id in 1..=10 {
        let of_task: Vec<TaskEventRequest> = events.iter().filter(|e| e.task_instance_id == id).cloned().collect();
        assert_eq!(kinds(&of_task), ["running", "finished"], "task {id}");
    }
    // One slot: each task ended before the next one started, in key order.
    let ran: Vec<String> = std::fs::read_to_string(&ran).unwrap().lines().map(str::to_owned).collect();
    assert_eq!(ran, expected);
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_resent_until_a_master_that_was_down_comes_up() {
    let setup = Setup::new();
    // The master's port, held (bound, not listening) until it comes up on
    // it: events to it are refused meanwhile, and nobody else can take the
    // port, as a port bound and closed again could be.
    let reserved = tokio::net::TcpSocket::new_v4().unwrap();
    reserved.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = reserved.local_addr().unwrap();
    let mut worker = setup.worker(2).await;
    // A whole dispatch: a ticket could not be fetched while its master is down.
    setup.put_whole(&shell(&addr.to_string(), 18, "true\n")).await;
    // Both events wait in the outbox: the task is done, the master is not up.
    wait_for("both events to be pending", || {
        (worker.pending_events() == 2 && worker.running_tasks().is_empty()).then_some(())
    })
    .await;

    let mut master = RecordingMaster::serve(reserved.listen(1024).unwrap(), 0);
    let (events, finished) = master.until_finished().await;
    assert_eq!(kinds(&events), ["running", "finished"]);
    assert_eq!(finished.outcome(), TaskOutcome::Success);
    wait_for("the outbox to drain", || {
        (worker.pending_events() == 0).then_some(())
    })
    .await;
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_events_are_kept_and_resent_in_order() {
    let setup = Setup::new();
    let mut master = RecordingMaster::start_refusing(3).await;
    let mut worker = setup.worker(2).await;
    setup.put(&shell(&master.addr(), 19, "exit 1\n")).await;
    let (events, finished) = master.until_finished().await;
    assert_eq!(kinds(&events), ["running", "finished"]);
    assert_eq!(finished.exit_code, Some(1));
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_carries_slots_running_tasks_and_host_load() {
    let setup = Setup::new();
    let mut master = RecordingMaster::start().await;
    let mut worker = setup.worker(2).await;
    let local = worker.local_addr().unwrap();
    assert_ne!(local.port(), 0);
    assert_eq!(
        worker.addr(),
        format!("127.0.0.1:{}", local.port()),
        "port 0 advertises the bound port"
    );

    let t = shell(
        &master.addr(),
        20,
        "while [ ! -f go ]; do sleep 0.02; done\n",
    );
    setup.put(&t).await;
    assert_eq!(kind(&master.next().await), "running");
    let beat = wait_for_heartbeat(&setup, &worker, |b| b.running == [TaskInstanceId(20)]).await;
    assert_eq!((beat.slots, beat.free_slots), (2, 1));
    assert_eq!(beat.addr, worker.addr());
    assert_eq!(beat.groups, ["default"]);
    assert!(
        beat.host.memory_total_bytes > 0 && beat.host.disk_free_bytes > 0,
        "{:?}",
        beat.host
    );
    assert_eq!(worker.free_slots(), 1);

    std::fs::write(setup.workdir(&t).join("go"), "").unwrap();
    master.until_finished().await;
    let beat = wait_for_heartbeat(&setup, &worker, |b| b.running.is_empty()).await;
    assert_eq!(beat.free_slots, 2);

    worker.stop().await.unwrap();
    let members = setup
        .queue
        .members(&paths::workers_dir("default"))
        .await
        .unwrap();
    assert!(members.is_empty(), "stop unregisters: {members:?}");
}

async fn wait_for_heartbeat(
    setup: &Setup,
    worker: &Worker,
    check: impl Fn(&WorkerHeartbeat) -> bool,
) -> WorkerHeartbeat {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(beat) = heartbeat(&*setup.queue, worker).await.filter(|b| check(b)) {
            return beat;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for a matching heartbeat"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_payloads_and_unknown_types_fail_at_the_master() {
    let setup = Setup::new();
    let mut master = RecordingMaster::start().await;
    let mut worker = setup.worker(1).await;
    let garbled = serde_json::json!({
        "master": master.addr(), "workflow_instance_id": 7, "task_instance_id": 21, "attempt": 2, "task_type": 3,
    });
    setup
        .queue
        .queue_put("default", "0_garbled", garbled.to_string().as_bytes())
        .await
        .unwrap();
    setup
        .queue
        .queue_put("default", "1_not_json", b"{")
        .await
        .unwrap();
    setup.put(&task(&master.addr(), 22, "sparkk", "x")).await;

    let (events, finished) = master.until_finished().await;
    assert_eq!(kinds(&events), ["finished"]);
    assert_eq!((events[0].task_instance_id, events[0].attempt), (21, 2));
    assert!(
        finished
            .reason
            .starts_with("cannot read the task dispatch: "),
        "{}",
        finished.reason
    );
    assert_eq!(finished.outcome(), TaskOutcome::Failure);

    let (events, finished) = master.until_finished().await;
    assert_eq!(kinds(&events), ["finished"]);
    assert_eq!(events[0].task_instance_id, 22);
    assert_eq!(
        finished.reason,
        "task `t22`: unknown task type `sparkk`, known: python, shell"
    );
    assert!(
        setup.queue.queue_keys("default").await.unwrap().is_empty(),
        "every entry was taken"
    );
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takes_from_every_group() {
    let setup = Setup::new();
    let mut master = RecordingMaster::start().await;
    let mut config = setup.config(2);
    config.groups = vec!["etl".into(), "spark".into()];
    let mut worker = setup.worker_with(config);
    worker.start().await.unwrap();
    setup
        .put_in(
            "spark",
            &shell(&master.addr(), 23, "true\n"),
            Priority::Medium,
        )
        .await;
    assert_eq!(master.until_finished().await.0[0].task_instance_id, 23);
    setup
        .put_in(
            "etl",
            &shell(&master.addr(), 24, "true\n"),
            Priority::Medium,
        )
        .await;
    assert_eq!(master.until_finished().await.0[0].task_instance_id, 24);
    for group in ["etl", "spark"] {
        let members = setup
            .queue
            .members(&paths::workers_dir(group))
            .await
            .unwrap();
        assert_eq!(members.len(), 1, "registered in {group}");
    }
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_waits_for_running_tasks_and_stays_registered_meanwhile() {
    let setup = Setup::new();
    let mut master = RecordingMaster::start().await;
    let mut worker = setup.worker(2).await;
    let addr = worker.addr();
    let t = shell(
        &master.addr(),
        25,
        "while [ ! -f go ]; do sleep 0.02; done\n",
    );
    setup.put(&t).await;
    assert_eq!(kind(&master.next().await), "running");

    let stopping = tokio::spawn(async move {
        worker.stop().await.unwrap();
        worker
    });
    // The task cannot end before `go` exists, so neither can the stop; and
    // a draining worker keeps its registration, or masters would fail its
    // tasks over while they still run here.
    let members = setup
        .queue
        .members(&paths::workers_dir("default"))
        .await
        .unwrap();
    assert_eq!(
        members.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
        [addr.as_str()]
    );
    assert!(!stopping.is_finished());
    std::fs::write(setup.workdir(&t).join("go"), "").unwrap();

    let worker = tokio::time::timeout(WAIT, stopping).await.unwrap().unwrap();
    let event = master
        .events
        .try_recv()
        .expect("final event delivered during stop");
    assert_eq!(kind(&event), "finished");
    assert!(worker.running_tasks().is_empty());

    // A stopped worker takes nothing.
    let queued = shell(&master.addr(), 26, "true\n");
    setup.put(&queued).await;
    assert_eq!(
        setup.queue.queue_keys("default").await.unwrap(),
        [key(&queued, Priority::Medium)]
    );
    assert!(setup
        .queue
        .members(&paths::workers_dir("default"))
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_kills_tasks_left_at_its_deadline_and_reports_them() {
    let setup = Setup::new();
    let mut master = RecordingMaster::start().await;
    let mut worker = setup
        .worker_with(setup.config(2))
        .with_stop_timeout(Duration::from_millis(300));
    worker.start().await.unwrap();
    setup.put(&shell(&master.addr(), 27, "sleep 60\n")).await;
    let leader = running_of(&master.next().await).0 as i32;

    worker.stop().await.unwrap();
    // Delivered before stop returned.
    let event = master
        .events
        .try_recv()
        .expect("final event delivered during stop");
    match event.event {
        Some(Event::Finished(f)) => {
            assert_eq!(f.outcome(), TaskOutcome::Failure);
            assert_eq!(f.reason, "worker stopped before the task finished");
        }
        other => panic!("expected finished, got {other:?}"),
    }
    assert!(!alive(leader));
}

/// A task that prints no newline, binary, and leaves a line unfinished
/// still gets a log of whole, valid lines; the log is served over gRPC
/// in pages from byte offsets, and followed to its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_output_becomes_whole_lines_served_in_pages_and_followed() {
    use sluice_proto::v1::worker_service_client::WorkerServiceClient;
    use sluice_proto::v1::ReadLogRequest;

    let setup = Setup::new();
    let mut master = RecordingMaster::start().await;
    let mut worker = setup.worker(2).await;
    let t = shell(&master.addr(), 21, "printf 'waiting'; sleep 1.5; printf 'bin\\000\\377\\r\\033[1m\\n'; printf 'tail'\n");
    setup.put(&t).await;
    let (events, finished) = master.until_finished().await;
    assert_eq!(finished.outcome(), TaskOutcome::Success, "{finished:?}");
    let log = Log::read(running_of(&events[0]).1);
    // Quiet for a second: the partial line is written as it is.
    assert_eq!(log.out(), "waiting\nbin\u{fffd}\u{fffd}\u{fffd}\u{1b}[1m\ntail\n", "NUL, a byte that is not UTF-8 and a lone CR are replaced");

    let mut client = WorkerServiceClient::connect(format!("http://{}", worker.addr())).await.unwrap();
    let request = |offset: u64, limit: u32| ReadLogRequest { workflow_instance_id: 7, task_instance_id: 21, attempt: 1, offset, limit };
    let first = client.read_log(request(0, 2)).await.unwrap().into_inner();
    assert_eq!(first.lines.len(), 2);
    assert!(first.lines[0].contains(" [sluice] attempt 1 of task `t21`"), "{first:?}");
    assert!(!first.finished);
    let mut all = first.lines.clone();
    let mut offset = first.next_offset;
    loop {
        let page = client.read_log(request(offset, 2)).await.unwrap().into_inner();
        all.extend(page.lines);
        offset = page.next_offset;
        if page.finished {
            break;
        }
    }
    let file = std::fs::read_to_string(running_of(&events[0]).1).unwrap();
    assert_eq!(all.join("\n") + "\n", file, "paging gave back the whole file");
    assert_eq!(offset, file.len() as u64);

    let error = client.read_log(request(3, 2)).await.unwrap_err();
    assert_eq!(error.code(), tonic::Code::InvalidArgument, "{error:?}");
    let error = client.read_log(ReadLogRequest { attempt: 2, ..request(0, 2) }).await.unwrap_err();
    assert_eq!(error.code(), tonic::Code::NotFound, "{error:?}");
    let error = client.follow_log(ReadLogRequest { attempt: 2, ..request(0, 2) }).await.unwrap_err();
    assert_eq!(error.code(), tonic::Code::NotFound, "{error:?}");

    // Following a finished attempt sends everything, then ends.
    let mut stream = client.follow_log(request(first.next_offset, 0)).await.unwrap().into_inner();
    let mut followed = first.lines.clone();
    let mut last = None;
    while let Some(page) = stream.message().await.unwrap() {
        followed.extend(page.lines.clone());
        last = Some(page);
    }
    assert!(last.unwrap().finished);
    assert_eq!(followed, all);
    worker.stop().await.unwrap();
}

/// A task type that runs shell scripts and says its output names a job in
/// another system (`job_<n>`) that a kill must also stop.
struct RemoteJobs {
    shell: sluice_tasks::ScriptPlugin,
    killed: PathBuf,
}

impl sluice_tasks::TaskPlugin for RemoteJobs {
    fn task_type(&self) -> &'static str {
        "remote"
    }
    fn body_fields(&self) -> &'static [&'static str] {
        self.shell.body_fields()
    }
    fn validate(&self, spec: &sluice_domain::TaskSpec) -> Result<(), String> {
        self.shell.validate(spec)
    }
    fn prepare(&self, dispatch: &TaskDispatch, workdir: &Path) -> Result<sluice_tasks::ProcessSpec, String> {
        self.shell.prepare(dispatch, workdir)
    }
    fn external_id(&self, line: &str) -> Option<String> {
        line.split_whitespace().find(|w| w.starts_with("job_")).map(str::to_owned)
    }
    fn kill_command(&self, external_id: &str) -> Option<sluice_tasks::ProcessSpec> {
        Some(sluice_tasks::ProcessSpec {
            program: "sh".into(),
            args: vec!["-c".into(), format!("echo {external_id} >> {}", self.killed.display())],
            ..Default::default()
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_ids_are_reported_once_and_killed_with_the_task() {
    let setup = Setup::new();
    let mut master = RecordingMaster::start().await;
    let killed = setup.dir.path().join("killed");
    let plugins = sluice_tasks::TaskPlugins::builtin().with(Arc::new(RemoteJobs { shell: sluice_tasks::ScriptPlugin::shell(), killed: killed.clone() }));
    let mut worker = setup.worker_with(setup.config(1)).with_plugins(plugins);
    worker.start().await.unwrap();
    let t = task(&master.addr(), 31, "remote", "echo submitted job_1 to the cluster\necho tracking job_1 job_2\nsleep 60\n");
    setup.put(&t).await;
    assert_eq!(kind(&master.next().await), "running");
    let event = master.next().await;
    match &event.event {
        Some(Event::ExternalId(external)) => assert_eq!(external.id, "job_1"),
        other => panic!("expected the external id, got {other:?}"),
    }

    let mut client = WorkerServiceClient::connect(format!("http://{}", worker.addr())).await.unwrap();
    let kill = KillTaskRequest { task_instance_id: 31, attempt: 1, reason: "killed by alice".into() };
    assert!(client.kill_task(kill).await.unwrap().into_inner().found);
    let (events, finished) = master.until_finished().await;
    assert_eq!(kinds(&events), ["finished"], "the id is reported once");
    assert_eq!(finished.outcome(), TaskOutcome::Killed);
    assert_eq!(std::fs::read_to_string(&killed).unwrap(), "job_1\n", "the kill command ran for the id");
    let log = Log::read(setup.dir.path().join("logs").join(sluice_logs::LogKey { workflow_instance_id: 7, task_instance_id: 31, attempt: 1 }.relative_path()));
    assert!(log.sluice().iter().any(|l| l.starts_with("stopping external id job_1")), "{:?}", log.sluice());
    worker.stop().await.unwrap();
}

// ---------------------------------------------------------------------------
// Losing the registry session (real ZooKeeper behind a proxy a test cuts)

/// A worker on ZooKeeper through `proxy`, running `sleep 60` as task 41.
async fn worker_behind(proxy: &sluice_testkit::proxy::TcpProxy, setup: &Setup, master: &mut RecordingMaster, keep_running: bool) -> (Worker, sluice_registry::ZkRegistry, i32, i64) {
    let root = sluice_testkit::zookeeper::unique_root("worker-session");
    let worker_session = sluice_registry::ZkRegistry::connect(&proxy.address(), &root, Duration::from_secs(3)).await.unwrap();
    let watcher = sluice_registry::ZkRegistry::connect(&sluice_testkit::zookeeper::zookeeper_address(), &root, Duration::from_secs(3)).await.unwrap();
    let config = WorkerConfig { keep_running_when_disconnected: keep_running, ..setup.config(1) };
    let mut worker = Worker::new(config, Arc::new(worker_session));
    worker.start().await.unwrap();
    let t = shell(&master.addr(), 41, "echo $$ > task.pid\nexec sleep 60\n");
    watcher.queue_put("default", &key(&t, Priority::Medium), &t.to_json()).await.unwrap();
    let running = master.next().await;
    assert_eq!(kind(&running), "running");
    let pid = read_pid(&setup.workdir(&t).join("task.pid")).await;
    (worker, watcher, pid, running.event_time_ms)
}

async fn wait_for_heartbeat_gone(watcher: &dyn Registry, worker: &Worker) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while heartbeat(watcher, worker).await.is_some() {
        assert!(tokio::time::Instant::now() < deadline, "the worker's session did not expire");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the worker's node in the registry satisfies `check`.
async fn wait_for_node(watcher: &dyn Registry, worker: &Worker, what: &str, check: impl Fn(&WorkerHeartbeat) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !heartbeat(watcher, worker).await.is_some_and(|beat| check(&beat)) {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_off_from_the_registry_kills_its_tasks_and_starts_over() {
    let setup = Setup::new();
    let mut master = RecordingMaster::start().await;
    let proxy = sluice_testkit::proxy::TcpProxy::start(&sluice_testkit::zookeeper::zookeeper_address()).unwrap();
    let (mut worker, watcher, pid, started) = worker_behind(&proxy, &setup, &mut master, false).await;

    // Only the worker's registry connection is cut: the master stays
    // reachable, and the watcher sees the registry.
    proxy.cut();
    wait_for("the task to be killed", || (!alive(pid)).then_some(())).await;
    wait_for("the attempt to end", || worker.running_tasks().is_empty().then_some(())).await;
    proxy.restore();
    // Back as a new incarnation, which masters take as "the attempt died
    // with the previous one" and fail over (not a failure: no retry used).
    wait_for_node(&watcher, &worker, "a heartbeat of a new incarnation", |beat| beat.started_at.timestamp_millis() > started && beat.running.is_empty()).await;
    assert!(master.events.try_recv().is_err(), "the attempt's end is not reported as a failure");
    let log = Log::read(setup.dir.path().join("logs").join(sluice_logs::LogKey { workflow_instance_id: 7, task_instance_id: 41, attempt: 1 }.relative_path()));
    assert!(log.sluice().contains(&"killing the task: worker lost its registry session"), "{:?}", log.sluice());
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_told_to_keep_running_keeps_its_tasks_through_a_lost_session() {
    let setup = Setup::new();
    let mut master = RecordingMaster::start().await;
    let proxy = sluice_testkit::proxy::TcpProxy::start(&sluice_testkit::zookeeper::zookeeper_address()).unwrap();
    let (mut worker, watcher, pid, started) = worker_behind(&proxy, &setup, &mut master, true).await;

    // Until the servers expire the worker's session (its node goes), and
    // it comes back with a new session.
    proxy.cut();
    wait_for_heartbeat_gone(&watcher, &worker).await;
    proxy.restore();
    wait_for_node(&watcher, &worker, "the worker to register again", |beat| beat.running.len() == 1).await;
    assert!(heartbeat(&watcher, &worker).await.unwrap().started_at.timestamp_millis() <= started, "the same incarnation");
    assert!(alive(pid), "the task survived the lost session");
    assert!(master.events.try_recv().is_err(), "nothing was reported");
    let mut client = WorkerServiceClient::connect(format!("http://{}", worker.addr())).await.unwrap();
    let kill = KillTaskRequest { task_instance_id: 41, attempt: 1, reason: "done".into() };
    assert!(client.kill_task(kill).await.unwrap().into_inner().found);
    let (_, finished) = master.until_finished().await;
    assert_eq!(finished.outcome(), TaskOutcome::Killed);
    worker.stop().await.unwrap();
}
