//! A fresh machine through the real binary: the `python3` first on PATH is a bare virtual
//! environment without any speech engine (as on a machine where nothing was pip-installed), and
//! the service's own engine venv does not exist yet. `/readyz` must say the node cannot serve
//! calls and name the engine, `/metrics` must show it, `outdial doctor` must name the fix and
//! fail; after that fix (`outdial setup`) both are healthy, without restarting the service.
//!
//! The install step is the real `outdial setup` (a new venv, pip); pip is pointed at a wheel
//! directory with its own `PIP_NO_INDEX`/`PIP_FIND_LINKS`, filled from PyPI once per target dir,
//! so repeated runs do not download the engine again.

mod support;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use support::{free_udp_port, Service};

/// The wheels of the default engine (pocketsphinx and its dependencies), downloaded once.
fn wheelhouse() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("engine-wheels");
    let done = dir.join(".complete");
    if !done.exists() {
        let out = Command::new("python3")
            .args(["-m", "pip", "download", "--disable-pip-version-check", "-q"])
            .arg("--dest")
            .arg(&dir)
            .args(agent::engines::POCKETSPHINX.packages)
            .output()
            .expect("python3 with pip is needed to fetch the engine's wheels");
        assert!(
            out.status.success(),
            "pip download: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(&done, b"").unwrap();
    }
    dir
}

/// A directory whose `python3` is a virtual environment with nothing installed.
fn bare_python(dir: &Path) -> String {
    let venv = dir.join("bare");
    let out = Command::new("python3")
        .args(["-m", "venv", "--without-pip"])
        .arg(&venv)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let engines_there = Command::new(venv.join("bin/python3"))
        .args(["-c", "import pocketsphinx"])
        .output()
        .unwrap();
    assert!(
        !engines_there.status.success(),
        "the bare python3 must lack the engine"
    );
    format!(
        "{}:{}",
        venv.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

struct Machine {
    dir: tempfile::TempDir,
    path: String,
    venv: PathBuf,
}

impl Machine {
    fn env(&self) -> Vec<(String, String)> {
        vec![
            ("PATH".into(), self.path.clone()),
            ("OUTDIAL_VENV".into(), self.venv.display().to_string()),
            ("OUTDIAL_STT_SIDECARS".into(), "1".into()),
            // The lighter of the two local recognisers keeps the wheelhouse small; what is
            // under test is how a missing default engine is reported and fixed, not which.
            ("OUTDIAL_LOCAL_TRANSCRIBER".into(), "pocketsphinx".into()),
            ("OUTDIAL_ENGINE_CHECK_SECONDS".into(), "1".into()),
        ]
    }

    /// `outdial <args>` as an operator on this machine runs it.
    fn outdial(&self, args: &[&str], extra: &[(&str, &str)]) -> Output {
        let mut cmd = Service::outdial(&self.dir.path().join("data"));
        cmd.envs(self.env())
            .env(
                "OUTDIAL_SIP_LISTEN",
                format!("127.0.0.1:{}", free_udp_port()),
            )
            .envs(extra.iter().copied())
            .args(args);
        cmd.output().unwrap()
    }

    fn serve(&self, extra: &[(&str, &str)]) -> Service {
        let data = self.dir.path().join("data");
        let mut env: Vec<(String, String)> = vec![
            (
                "OUTDIAL_LISTEN".into(),
                format!("127.0.0.1:{}", support::free_tcp_port()),
            ),
            (
                "OUTDIAL_SIP_LISTEN".into(),
                format!("127.0.0.1:{}", free_udp_port()),
            ),
        ];
        env.extend(self.env());
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        // No OUTDIAL_PYTHON: the service finds its engines through its venv setting alone.
        Service::spawn(&data, env)
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

async fn readyz(base: &str) -> (u16, Value) {
    let r = reqwest::get(format!("{base}/readyz")).await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn metric(base: &str, line_start: &str) -> Option<String> {
    let m = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    m.lines()
        .find(|l| l.starts_with(line_start))
        .map(str::to_string)
}

#[tokio::test]
async fn a_fresh_machine_is_not_ready_until_setup_installs_the_engine_then_it_is() {
    let wheels = wheelhouse();
    let dir = tempfile::tempdir().unwrap();
    let path = bare_python(dir.path());
    let venv = dir.path().join("engines");
    let m = Machine { dir, path, venv };

    // The service starts (it still takes calls' requests) but says it cannot serve them.
    let svc = m.serve(&[]);
    let (status, body) = readyz(&svc.base).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["type"], "internal_error", "{body}");
    let reason = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        reason.contains("speech-to-text engine pocketsphinx"),
        "the reason names the engine: {reason}"
    );
    assert_eq!(
        metric(&svc.base, "outdial_engine_ready{engine=\"pocketsphinx\"}").await,
        Some("outdial_engine_ready{engine=\"pocketsphinx\"} 0".into())
    );

    // An operator who declares speech-to-text optional gets a ready (degraded) node.
    let degraded = m.serve(&[("OUTDIAL_OPTIONAL_ENGINES", "stt")]);
    let (status, body) = readyz(&degraded.base).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["degraded"], serde_json::json!(["pocketsphinx"]));
    drop(degraded);

    // The doctor names what is missing and the exact command that fixes it.
    let fix = format!("setup --venv {}", m.venv.display());
    let out = m.outdial(&["doctor"], &[]);
    let report = text(&out);
    assert_eq!(out.status.code(), Some(1), "{report}");
    let missing = report
        .lines()
        .find(|l| l.starts_with("MISSING") && l.contains("pocketsphinx"))
        .unwrap_or_else(|| panic!("pocketsphinx reported missing: {report}"));
    assert!(missing.contains("no interpreter at"), "{missing}");
    assert!(
        report
            .lines()
            .any(|l| l.trim_start().starts_with("fix: ") && l.ends_with(&fix)),
        "the fix `outdial {fix}`: {report}"
    );
    assert!(
        report
            .lines()
            .any(|l| l.starts_with("ok") && l.contains("espeak-ng")),
        "{report}"
    );

    // The fix, as printed (pip reads its wheel directory from its own environment).
    let wheels = wheels.display().to_string();
    let started = Instant::now();
    let out = m.outdial(
        &["setup", "--venv", &m.venv.display().to_string()],
        &[("PIP_NO_INDEX", "1"), ("PIP_FIND_LINKS", &wheels)],
    );
    assert!(out.status.success(), "setup: {}", text(&out));
    eprintln!("outdial setup took {:?}", started.elapsed());
    // Run again it only checks: quick, and installs nothing.
    let started = Instant::now();
    let out = m.outdial(
        &["setup"],
        &[("PIP_NO_INDEX", "1"), ("PIP_FIND_LINKS", "/nonexistent")],
    );
    assert!(out.status.success(), "setup again: {}", text(&out));
    assert!(
        text(&out).contains("ok       pocketsphinx (installed)"),
        "{}",
        text(&out)
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    // The running service notices by itself: ready, and the gauge says so.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = readyz(&svc.base).await;
        if status == 200 {
            assert_eq!(body, serde_json::json!({"status": "ready"}));
            break;
        }
        assert!(Instant::now() < deadline, "still not ready: {body}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        metric(&svc.base, "outdial_engine_ready{engine=\"pocketsphinx\"}").await,
        Some("outdial_engine_ready{engine=\"pocketsphinx\"} 1".into())
    );

    let out = m.outdial(&["doctor"], &[]);
    let report = text(&out);
    assert!(out.status.success(), "{report}");
    assert!(
        report
            .lines()
            .any(|l| l.starts_with("ok") && l.contains("pocketsphinx")),
        "{report}"
    );
    assert!(!report.contains("MISSING"), "{report}");

    // An agent that names an engine this machine lacks (piper was not installed) makes the
    // node unready again, and the doctor names that agent's engine and its fix.
    let key = Service::create_tenant(&m.dir.path().join("data"));
    let api = support::Api::new(&svc.base, &key);
    let r = api
        .post(
            "/v1/agents",
            serde_json::json!({"name": "natural", "voice": {"engine": "piper"}}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    let reason = loop {
        let (status, body) = readyz(&svc.base).await;
        if status == 503 {
            break body["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_string();
        }
        assert!(Instant::now() < deadline, "still ready: {body}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(reason.contains("text-to-speech engine piper"), "{reason}");
    let out = m.outdial(&["doctor"], &[]);
    let report = text(&out);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(
        report
            .lines()
            .any(|l| l.starts_with("MISSING") && l.contains("piper") && l.contains("agent 1")),
        "{report}"
    );
    assert!(
        report
            .lines()
            .any(|l| l.starts_with("ok") && l.contains("pocketsphinx")),
        "{report}"
    );
}
