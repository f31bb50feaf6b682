//! Shared fixtures for Quiver's end-to-end tests: an example repo with generated
//! data, a Flight server bound to `127.0.0.1:0` and stopped through a oneshot, and a
//! real S3-compatible server (`s3s-fs`) on loopback.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use quiver_client::{MaterializeReport, MaterializeRequest, QuiverClient};
use quiver_server::instant::format as format_instant;
use quiver_server::{datagen, Clock, FeatureStore, Repo};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The `quiver` binary: `$QUIVER_BIN`, else next to the test executable.
pub fn quiver_binary() -> PathBuf {
    if let Ok(p) = std::env::var("QUIVER_BIN") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/it-<hash> -> target/<profile>/quiver
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("quiver");
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build --bin quiver` (scripts/test.sh does), or set QUIVER_BIN",
        bin.display()
    );
    bin
}

/// Starts `quiver serve` on an ephemeral port as a child process, with `env`
/// set (e.g. `QUIVER_NOW`); returns it and its address.
pub fn serve_process(repo: &Path, env: &[(&str, String)]) -> (Child, String) {
    let mut child = Command::new(quiver_binary())
        .arg("--repo")
        .arg(repo)
        .args(["serve", "--addr", "127.0.0.1:0"])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("quiver serve starts");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().expect("piped")),
        &mut line,
    )
    .expect("quiver serve prints its address");
    let addr = line
        .trim()
        .rsplit(' ')
        .next()
        .expect("an address")
        .to_string();
    (child, addr)
}

/// One day in microseconds.
pub const DAY_US: i64 = 86_400_000_000;

/// An applied repo opened with its online store, the online clock fixed at
/// `now_ns` (so ttls are judged as of then).
pub async fn online_store(repo_dir: &Path, now_ns: i64) -> FeatureStore {
    let repo = Repo::load(repo_dir).expect("repo loads");
    FeatureStore::open(&repo, Clock::Fixed(now_ns))
        .await
        .expect("stores open")
}

/// Materializes every view from the beginning of time to `end_ns` through the
/// Flight action; one report per view.
pub async fn materialize_all(client: &mut QuiverClient, end_ns: i64) -> Vec<MaterializeReport> {
    materialize_all_result(client, end_ns)
        .await
        .expect("materialize")
}

/// Like [`materialize_all`], returning the error instead of panicking.
pub async fn materialize_all_result(
    client: &mut QuiverClient,
    end_ns: i64,
) -> quiver_client::Result<Vec<MaterializeReport>> {
    client
        .materialize(&MaterializeRequest {
            start: "2020-01-01T00:00:00Z".into(),
            end: format_instant(end_ns),
            views: None,
            replace: false,
        })
        .await
}

/// An error and its sources, `: `-separated (what `anyhow`'s `{:#}` prints).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A small data set: quick to generate, still with every fraud pattern.
pub fn small_data() -> datagen::Options {
    datagen::Options {
        cards: 300,
        merchants: 40,
        days: 20,
        ..Default::default()
    }
}

/// Writes the example repo and its generated data into a new temporary folder.
pub fn example_repo(options: &datagen::Options) -> TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    quiver_demo::example::write_repo(dir.path()).expect("example repo");
    datagen::generate(&dir.path().join("data"), options).expect("datagen");
    dir
}

/// A running Quiver Flight server over a repo.
pub struct Server {
    /// The address it is bound to.
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), quiver_server::Error>>>,
}

impl Server {
    /// Applies the repo and serves it on an ephemeral loopback port.
    pub async fn start(repo_dir: &Path) -> Self {
        let repo = Repo::load(repo_dir).expect("repo loads");
        FeatureStore::apply(&repo, false).await.expect("apply");
        let store = FeatureStore::open(&repo, Clock::System)
            .await
            .expect("stores open");
        Self::serve(store).await
    }

    /// Applies the repo and serves it with its online store, the online clock fixed
    /// at `now_ns`.
    pub async fn start_online(repo_dir: &Path, now_ns: i64) -> Self {
        let repo = Repo::load(repo_dir).expect("repo loads");
        FeatureStore::apply(&repo, false).await.expect("apply");
        Self::serve(online_store(repo_dir, now_ns).await).await
    }

    /// Serves an open store on an ephemeral loopback port.
    pub async fn serve(store: FeatureStore) -> Self {
        Self::serve_at(store, "127.0.0.1:0".parse().expect("addr")).await
    }

    /// Serves an open store on `addr` (e.g. the port of a server that was
    /// stopped, to test reconnects).
    pub async fn serve_at(store: FeatureStore, addr: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            store
                .serve(listener, async {
                    let _ = stopped.await;
                })
                .await
        });
        Self {
            addr,
            stop: Some(stop),
            handle: Some(handle),
        }
    }

    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the server and waits for it.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.expect("server task").expect("server ran cleanly");
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// A loopback port free now (for a server process to bind).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Waits (up to 20 s) until a server process accepts connections on `port`.
fn wait_listening(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not start listening on port {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Credentials the S3 test server accepts.
pub const S3_ACCESS_KEY: &str = "quiver-test-access";
/// Secret for [`S3_ACCESS_KEY`].
pub const S3_SECRET_KEY: &str = "quiver-test-secret-key-0123456789";

/// A real S3-compatible server (`s3s-fs`, which checks SigV4 like MinIO) on loopback,
/// serving a temporary folder; killed on drop.
pub struct S3Server {
    /// `http://127.0.0.1:port`.
    pub endpoint: String,
    /// The folder it serves (buckets are its subfolders).
    pub root: TempDir,
    child: Child,
}

fn s3s_fs_binary() -> PathBuf {
    if let Ok(p) = std::env::var("S3S_FS_BIN") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let cargo_bin = Path::new(&home).join(".cargo/bin/s3s-fs");
    if cargo_bin.exists() {
        cargo_bin
    } else {
        PathBuf::from("s3s-fs")
    }
}

impl S3Server {
    /// Starts `s3s-fs` with a bucket folder `bucket` and waits until it accepts connections.
    pub fn start(bucket: &str) -> Self {
        let root = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(root.path().join(bucket)).expect("bucket dir");
        let port = free_port();
        let bin = s3s_fs_binary();
        let child = Command::new(&bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET_KEY])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start the S3 test server {}: {e}. Install it with `cargo install s3s-fs --version 0.14.1 --features binary` (the README's test command does)",
                    bin.display()
                )
            });
        wait_listening(port, "s3s-fs");
        Self {
            endpoint: format!("http://127.0.0.1:{port}"),
            root,
            child,
        }
    }
}

impl S3Server {
    /// Kills the server (a store outage); its folder stays.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real Kafka-protocol broker (tansu, installed by `scripts/setup.sh --tests`
/// into the venv) on loopback, keeping topics in memory; killed on drop.
pub struct KafkaBroker {
    /// `127.0.0.1:port`, for `bootstrap.servers`.
    pub addr: String,
    child: Child,
}

fn tansu_binary() -> PathBuf {
    if let Ok(p) = std::env::var("QUIVER_TANSU") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/tansu")
}

impl KafkaBroker {
    /// Starts the broker on a free port and waits until it accepts connections.
    pub fn start() -> Self {
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let bin = tansu_binary();
        let child = Command::new(&bin)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start the Kafka test broker {}: {e}. Install it with `scripts/setup.sh --tests` (the README's test command does), or set QUIVER_TANSU",
                    bin.display()
                )
            });
        wait_listening(port, "tansu");
        Self {
            addr: format!("127.0.0.1:{port}"),
            child,
        }
    }

    /// Creates `topic` with `partitions` partitions.
    pub fn create_topic(&self, topic: &str, partitions: u32) {
        let out = Command::new(tansu_binary())
            .args(["topic", "create", topic, "--broker"])
            .arg(format!("tcp://{}", self.addr))
            .args(["--partitions", &partitions.to_string()])
            .output()
            .expect("tansu runs");
        assert!(
            out.status.success(),
            "cannot create topic {topic}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads a whole Parquet file.
pub fn read_parquet(path: &Path) -> Vec<RecordBatch> {
    ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).expect("file opens"))
        .expect("is Parquet")
        .build()
        .expect("reader")
        .collect::<Result<_, _>>()
        .expect("batches decode")
}

/// Concatenates batches (at least one) into one.
pub fn concat(batches: &[RecordBatch]) -> RecordBatch {
    arrow::compute::concat_batches(&batches[0].schema(), batches).expect("same schema")
}

/// A primitive column of `batch` by name (panics when absent or of another type).
pub fn column<'a, T: arrow::datatypes::ArrowPrimitiveType>(
    batch: &'a RecordBatch,
    name: &str,
) -> &'a arrow::array::PrimitiveArray<T> {
    use arrow::array::AsArray;
    batch
        .column_by_name(name)
        .unwrap_or_else(|| panic!("no column {name}"))
        .as_primitive::<T>()
}

/// What a [`FaultProxy`] does to the requests it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything.
    Pass,
    /// Answer every new request with `500 Internal Server Error` (open connections
    /// are closed when this is set, so pooled clients reconnect into it).
    Fail500,
    /// Answer the next `n` requests with 500, then forward.
    Fail500Times(u32),
    /// Wait this long before forwarding each new connection's traffic.
    Slow(Duration),
}

/// A TCP proxy on loopback in front of a server (the S3 test server), that can be
/// told to fail or slow down: the object store faults of the security issue.
pub struct FaultProxy {
    /// `http://127.0.0.1:port` of the proxy.
    pub endpoint: String,
    mode: tokio::sync::watch::Sender<Fault>,
    budget: std::sync::Arc<std::sync::atomic::AtomicU32>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Proxies `upstream` (`http://host:port`).
    pub async fn start(upstream: &str) -> Self {
        let upstream = upstream.trim_start_matches("http://").to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let (mode, watch) = tokio::sync::watch::channel(Fault::Pass);
        let failures_left = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let budget = failures_left.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let mut watch = watch.clone();
                let left = failures_left.clone();
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let fault = *watch.borrow_and_update();
                    let fail = match fault {
                        Fault::Fail500 => true,
                        Fault::Fail500Times(_) => left
                            .fetch_update(
                                std::sync::atomic::Ordering::AcqRel,
                                std::sync::atomic::Ordering::Acquire,
                                |v| v.checked_sub(1),
                            )
                            .is_ok(),
                        _ => false,
                    };
                    if fail {
                        let mut buf = [0u8; 8192];
                        let _ = client.read(&mut buf).await;
                        let body = "<Error><Code>InternalError</Code></Error>";
                        let _ = client
                            .write_all(
                                format!("HTTP/1.1 500 Internal Server Error\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
                                    .as_bytes(),
                            )
                            .await;
                        return;
                    }
                    if let Fault::Slow(d) = fault {
                        tokio::time::sleep(d).await;
                    }
                    let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    // Forward until either side closes or the mode changes.
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = watch.changed() => {}
                    }
                });
            }
        });
        Self {
            endpoint,
            mode,
            budget,
            task,
        }
    }

    /// Switches what the proxy does; open connections are closed.
    pub fn set(&self, fault: Fault) {
        if let Fault::Fail500Times(n) = fault {
            self.budget.store(n, std::sync::atomic::Ordering::Release);
        }
        let _ = self.mode.send(fault);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
