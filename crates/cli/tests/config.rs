//! The service's configuration through the binary: a TOML file under the environment and the
//! flags, a bad file refused at start naming its key, `config show`, and docs/configuration.md
//! held to the flags.

mod support;

use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::{free_tcp_port, free_udp_port};

/// The binary with none of the caller's `OUTDIAL_*` settings.
fn outdial() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_outdial"));
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    c
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A file that makes `serve` start anywhere: its own data dir and SIP port, engines optional.
fn write_config(dir: &Path, listen: u16, extra: &str) -> std::path::PathBuf {
    let path = dir.join("outdial.toml");
    let body = format!(
        "listen = \"127.0.0.1:{listen}\"\nsip_listen = \"127.0.0.1:{}\"\ndata_dir = \"{}\"\n\
         optional_engines = [\"stt\", \"tts\"]\nlog = \"error\"\n{extra}",
        free_udp_port(),
        dir.join("data").display(),
    );
    std::fs::write(&path, body).unwrap();
    path
}

/// Starts `serve` with `flags`, waits until one of `ports` answers, says which, then stops it.
fn serving_port(mut cmd: Command, flags: &[String], ports: &[u16]) -> u16 {
    let mut child = cmd
        .arg("serve")
        .args(flags)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let found = loop {
        if let Some(p) = ports
            .iter()
            .find(|p| TcpStream::connect(("127.0.0.1", **p)).is_ok())
        {
            break *p;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "serve exited before listening"
        );
        assert!(Instant::now() < deadline, "serve did not start");
        std::thread::sleep(Duration::from_millis(50));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    found
}

#[test]
fn serve_takes_a_toml_file_under_the_environment_and_the_flags() {
    let dir = tempfile::tempdir().unwrap();
    let (file_port, env_port, flag_port) = (free_tcp_port(), free_tcp_port(), free_tcp_port());
    let file = write_config(dir.path(), file_port, "");
    let all = [file_port, env_port, flag_port];

    let mut from_file = outdial();
    from_file.arg("--config").arg(&file);
    assert_eq!(serving_port(from_file, &[], &all), file_port);

    // OUTDIAL_CONFIG names the file as --config does; a variable beats the file.
    let env_over_file = || {
        let mut c = outdial();
        c.env("OUTDIAL_CONFIG", &file)
            .env("OUTDIAL_LISTEN", format!("127.0.0.1:{env_port}"));
        c
    };
    assert_eq!(serving_port(env_over_file(), &[], &all), env_port);

    // A flag beats both.
    let flag = ["--listen".to_string(), format!("127.0.0.1:{flag_port}")];
    assert_eq!(serving_port(env_over_file(), &flag, &all), flag_port);
}

#[test]
fn a_bad_setting_in_the_file_stops_the_start_naming_the_key_and_what_it_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_tcp_port();
    for (line, says) in [
        (
            "amd_greeting_ms = 1",
            "`amd_greeting_ms`: invalid value '1' for '--amd-greeting-ms <AMD_GREETING_MS>': 1 is not in 500..=10000",
        ),
        ("lisen = \"127.0.0.1:1\"", "unknown key `lisen`"),
        ("webhook_allow_private = \"yes\"", "`webhook_allow_private`"),
        ("listen = [", "TOML parse error"),
    ] {
        let file = write_config(dir.path(), port, line);
        let out = outdial()
            .arg("--config")
            .arg(&file)
            .arg("serve")
            .output()
            .unwrap();
        let (_, err) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{line}: {err}");
        assert!(err.contains(says), "{line}: {err}");
        assert!(err.contains("outdial.toml"), "names the file: {err}");
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    }
}

#[test]
fn config_show_says_where_each_value_comes_from_and_masks_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_tcp_port();
    let secret = "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI=";
    let file = write_config(
        dir.path(),
        port,
        &format!("secret_key = \"{secret}\"\ndeepgram_api_key = \"dg-live-key\"\n"),
    );
    let out = outdial()
        .env("OUTDIAL_AMD_MAX_MS", "7000")
        .arg("--config")
        .arg(&file)
        .args(["config", "show"])
        .output()
        .unwrap();
    let (show, err) = text(&out);
    assert!(out.status.success(), "{err}");
    for line in [
        format!("listen = \"127.0.0.1:{port}\"  # file"),
        "amd_max_ms = \"7000\"  # env".to_string(),
        "amd_greeting_ms = \"2500\"  # default".to_string(),
        "secret_key = \"********\"  # file".to_string(),
        "deepgram_api_key = \"********\"  # file".to_string(),
    ] {
        assert!(
            show.lines().any(|l| l == line),
            "missing `{line}` in:\n{show}"
        );
    }
    assert!(
        !show.contains(secret) && !show.contains("dg-live-key"),
        "{show}"
    );
}

#[test]
fn docs_configuration_lists_every_setting_as_the_flags_describe_it() {
    let out = outdial().args(["config", "reference"]).output().unwrap();
    let (table, err) = text(&out);
    assert!(out.status.success(), "{err}");
    assert!(table.lines().count() > 40, "{table}");
    let docs = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md"),
    )
    .unwrap();
    assert!(
        docs.ends_with(&table),
        "docs/configuration.md's table differs from the flags: regenerate it with \
         `outdial config reference`"
    );
}
