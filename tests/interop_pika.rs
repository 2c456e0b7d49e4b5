//! Interop with pika, the Python client: runs interop/python/test_pika.py
//! against a test broker.
//!
//! The Python side needs python3 and `pip install pika` into a venv under
//! target/interop-venv. Without python3, or when the install fails (no
//! network), the test prints why and passes without checking anything; once
//! pika is installed, any failing scenario fails the test.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Run `cmd` to completion, killing it after `limit`. `None` if it could not
/// be started or timed out.
fn run_bounded(cmd: &mut Command, limit: Duration) -> Option<Output> {
    let what = format!("{cmd:?}");
    let mut child = match cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            println!("cannot start {what}: {e}");
            return None;
        }
    };
    // Drain the pipes on threads so a chatty child cannot block on a full pipe.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut out, &mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut err, &mut v);
        v
    });
    let end = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(50)),
            Ok(None) | Err(_) => {
                println!("{what} did not finish within {limit:?}; killing it");
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    status.map(|status| Output {
        status,
        stdout,
        stderr,
    })
}

fn show(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The venv's python with pika importable, or why there is none.
fn python_with_pika(root: &Path) -> Result<PathBuf, String> {
    let venv = root.join("target").join("interop-venv");
    let python = venv.join("bin").join("python");
    let has_pika = |py: &Path| {
        run_bounded(
            Command::new(py).args(["-c", "import pika"]),
            Duration::from_secs(30),
        )
        .is_some_and(|o| o.status.success())
    };
    if python.exists() && has_pika(&python) {
        return Ok(python);
    }
    match run_bounded(
        Command::new("python3").arg("--version"),
        Duration::from_secs(30),
    ) {
        Some(o) if o.status.success() => {}
        _ => return Err("python3 is not available".into()),
    }
    match run_bounded(
        Command::new("python3").arg("-m").arg("venv").arg(&venv),
        Duration::from_secs(120),
    ) {
        Some(o) if o.status.success() => {}
        Some(o) => return Err(format!("python3 -m venv failed: {}", show(&o))),
        None => return Err("python3 -m venv failed to run".into()),
    }
    let requirements = root.join("interop").join("python").join("requirements.txt");
    match run_bounded(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "-q",
                "-r",
            ])
            .arg(&requirements),
        Duration::from_secs(300),
    ) {
        Some(o) if o.status.success() => {}
        Some(o) => {
            return Err(format!(
                "pip install -r {} failed: {}",
                requirements.display(),
                show(&o)
            ))
        }
        None => return Err("pip install timed out or could not run".into()),
    }
    if !has_pika(&python) {
        return Err("pika installed but cannot be imported".into());
    }
    Ok(python)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pika_scenarios_pass() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let setup_root = root.clone();
    let python = match tokio::task::spawn_blocking(move || python_with_pika(&setup_root))
        .await
        .unwrap()
    {
        Ok(p) => p,
        Err(why) => {
            println!("SKIPPED pika interop: {why}");
            eprintln!("SKIPPED pika interop: {why}");
            return;
        }
    };
    let b = TestBroker::start().await;
    let url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", b.addr().port());
    let script = root.join("interop").join("python").join("test_pika.py");
    let output = tokio::task::spawn_blocking(move || {
        run_bounded(
            Command::new(&python)
                .arg(&script)
                .env("LEPUS_URL", url)
                .env("PYTHONUNBUFFERED", "1"),
            Duration::from_secs(120),
        )
    })
    .await
    .unwrap();
    let Some(output) = output else {
        panic!("the pika script did not finish within 120 s");
    };
    let report = show(&output);
    println!("{report}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with("pika: "))
        .unwrap_or_else(|| panic!("no summary line from the pika script:\n{report}"));
    assert!(
        summary.ends_with(" 0 failed"),
        "pika scenarios failed: {summary}\n{report}"
    );
    assert!(
        !summary.starts_with("pika: 0 passed"),
        "no pika scenario ran: {summary}"
    );
    assert!(output.status.success(), "the pika script failed:\n{report}");
    b.stop().await;
}
