//! Kamailio (Debian's `kamailio`) as the authenticating, record-routing proxy in front of a
//! callee: started on a free loopback port from `tests/peers/kamailio.cfg`, its whole process
//! group stopped when dropped.

use super::free_udp_port;
use std::net::{TcpStream, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const KAMAILIO: &str = "/usr/sbin/kamailio";

pub struct Kamailio {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Kamailio {
    /// A proxy that asks for `password` (any username) on every INVITE and relays to
    /// `callee` (a SIP URI, e.g. `sip:127.0.0.1:5070`).
    pub fn start(callee: &str, password: &str) -> Self {
        assert!(
            Path::new(KAMAILIO).exists(),
            "kamailio not installed: apt-get install -y kamailio"
        );
        let template = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/kamailio.cfg"),
        )
        .expect("kamailio.cfg");
        for _ in 0..5 {
            let port = free_udp_port();
            // TCP on the same number must be free too.
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
                continue;
            }
            let dir = tempfile::tempdir().unwrap();
            let cfg = template
                .replace("@@PORT@@", &port.to_string())
                .replace("@@PASSWORD@@", password)
                .replace("@@CALLEE@@", callee);
            let cfg_path = dir.path().join("kamailio.cfg");
            std::fs::write(&cfg_path, cfg).unwrap();
            let log = std::fs::File::create(dir.path().join("kamailio.log")).unwrap();
            let child = Command::new(KAMAILIO)
                .arg("-f")
                .arg(&cfg_path)
                // Foreground, its children with it; small memory pools; its own run dir.
                .args(["-DD", "-E", "-m", "32", "-M", "4"])
                .arg("-Y")
                .arg(dir.path())
                .arg("-P")
                .arg(dir.path().join("kamailio.pid"))
                .process_group(0)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start kamailio");
            let mut k = Self { child, port, dir };
            if k.wait_listening() {
                return k;
            }
            // Another test took the port first: try another.
            k.stop();
        }
        panic!("kamailio did not start");
    }

    fn wait_listening(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            let udp_held = UdpSocket::bind(("127.0.0.1", self.port)).is_err();
            if udp_held && TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    pub fn uri(&self) -> String {
        format!("sip:127.0.0.1:{}", self.port)
    }

    /// What kamailio wrote to stderr.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("kamailio.log")).unwrap_or_default()
    }

    /// When each INVITE the proxy let through (authenticated) arrived, in seconds, by Call-ID.
    pub fn invites(&self) -> Vec<(String, f64)> {
        self.log()
            .lines()
            .filter_map(|l| {
                let rest = &l[l.find("outdial-test invite ")? + "outdial-test invite ".len()..];
                let (call_id, at) = rest.trim().rsplit_once(' ')?;
                Some((call_id.to_string(), at.parse().ok()?))
            })
            .collect()
    }

    fn stop(&mut self) {
        // The whole group: kamailio's children outlive a parent killed alone. Signalled by the
        // group's id directly: procps' `kill -TERM -<pgid>` reads some of those as -1 (every
        // process there is).
        let Ok(group) = i32::try_from(self.child.id()) else {
            return;
        };
        if group > 1 && matches!(self.child.try_wait(), Ok(None)) {
            // SAFETY: kill(2) with a process group of our own child, which is still unreaped.
            unsafe { libc::kill(-group, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            // SAFETY: as above; a live group's id is never handed out as a new pid.
            unsafe { libc::kill(-group, libc::SIGKILL) };
        }
        let _ = self.child.wait();
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        self.stop();
    }
}
