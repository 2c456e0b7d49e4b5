//! The client compatibility matrix (interop/run.sh) as part of
//! `cargo test`: pika, aio-pika, py-amqp/kombu + a Celery worker, amqplib,
//! rabbitmq-c's amqp-tools and the Java client, each running the same
//! scenarios against a lepus that the script starts (this package's lepus
//! binary, built by cargo for this test).
//!
//! The script installs each client's runtime once per machine (pip venv and
//! npm under target/interop, apt-get as root). A client that cannot be
//! installed (no registry, no root) is skipped with its reason; any scenario
//! that runs and fails fails this test. The table is written to stderr
//! (uncaptured) so that CI logs show it, skips included.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Bound of the whole run. run.sh bounds itself below this: installs
/// together 420 s, the clients together 840 s (each at most 120 s); this
/// is the backstop if the script itself hangs.
const LIMIT: Duration = Duration::from_secs(20 * 60);

#[test]
fn client_matrix_has_no_failed_cell() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("interop").join("run.sh");
    let mut child = Command::new("bash")
        .arg(&script)
        .current_dir(&root)
        .env("LEPUS_BIN", env!("CARGO_BIN_EXE_lepus"))
        .env_remove("LEPUS_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so that a hung run can be killed whole.
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run bash {}: {e}", script.display()));
    // Progress lines (stderr) are echoed as they come, for a CI log that
    // shows where a slow run is; the table (stdout) is collected.
    let mut err = child.stderr.take().unwrap();
    let err_t = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = err.read(&mut buf) {
            if n == 0 {
                break;
            }
            let _ = std::io::stderr().write_all(&buf[..n]);
            all.extend_from_slice(&buf[..n]);
        }
        all
    });
    let mut out = child.stdout.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let end = Instant::now() + LIMIT;
    let status = loop {
        match child.try_wait().expect("wait for run.sh") {
            Some(s) => break Some(s),
            None if Instant::now() < end => std::thread::sleep(Duration::from_millis(200)),
            None => {
                // TERM lets the script stop its broker and client; then KILL
                // whatever is left of the group.
                let pgid = child.id() as i32;
                unsafe { libc::kill(-pgid, libc::SIGTERM) };
                std::thread::sleep(Duration::from_secs(15));
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
                let _ = child.wait();
                break None;
            }
        }
    };
    let stdout = String::from_utf8_lossy(&out_t.join().unwrap()).into_owned();
    let _ = err_t.join();
    // Written straight to the stderr file descriptor, not captured by the
    // test harness: the matrix is shown on success too.
    let _ = std::io::stderr().write_all(stdout.as_bytes());
    let Some(status) = status else {
        panic!("interop/run.sh did not finish within {LIMIT:?}\n{stdout}");
    };
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("matrix: "))
        .unwrap_or_else(|| {
            panic!(
                "interop/run.sh printed no table (exit {:?})\n{stdout}",
                status.code()
            )
        });
    let failures: Vec<&str> = stdout.lines().filter(|l| l.contains("] FAIL: ")).collect();
    assert!(
        summary.contains(" 0 failed"),
        "cells failed in the client matrix (table above): {summary}\n{}",
        failures.join("\n")
    );
    assert!(
        status.success(),
        "interop/run.sh exited with {:?}\n{stdout}",
        status.code()
    );
}
