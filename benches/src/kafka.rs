//! A Kafka broker for the benchmarks: tansu (installed by `scripts/setup.sh
//! --tests`) on a free loopback port, in memory, killed on drop. Producing is
//! `quiver_demo::kafka`'s.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

/// The tansu broker process, killed on drop.
pub(crate) struct Broker {
    /// `127.0.0.1:port`, for `bootstrap.servers`.
    pub(crate) brokers: String,
    child: Child,
}

impl Broker {
    /// Starts tansu and creates `topics` (name, partitions).
    pub(crate) fn start(tansu: &Path, topics: &[(&str, u32)]) -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(tansu)
            .args(["broker", "--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (scripts/setup.sh --tests installs it)",
                    tansu.display()
                )
            })?;
        let broker = Self {
            brokers: format!("127.0.0.1:{port}"),
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            ensure!(Instant::now() < deadline, "tansu did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        for (topic, partitions) in topics {
            let out = Command::new(tansu)
                .args(["topic", "create", topic, "--broker", &url])
                .args(["--partitions", &partitions.to_string()])
                .output()?;
            ensure!(
                out.status.success(),
                "topic create {topic}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(broker)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
