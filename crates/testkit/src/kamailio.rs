//! Kamailio (Debian's `kamailio`) as the authenticating, record-routing proxy and registrar in
//! front of a callee, as a carrier's edge is: started on a free loopback port from
//! `kamailio.cfg`, its whole process group stopped when dropped.

use std::net::{TcpStream, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const KAMAILIO: &str = "/usr/sbin/kamailio";

pub struct Kamailio {
    child: Child,
    /// UDP and TCP.
    pub port: u16,
    /// TLS, when started with [`Kamailio::start_tls`].
    pub tls_port: Option<u16>,
    dir: tempfile::TempDir,
}

impl Kamailio {
    /// A proxy that asks for `password` (any username) on every INVITE and relays to
    /// `callee` (a SIP URI, e.g. `sip:127.0.0.1:5070`).
    pub fn start(callee: &str, password: &str) -> Self {
        Self::launch(callee, password, false)
    }

    /// Also listening for TLS, with a certificate for 127.0.0.1 issued by a CA of the test's
    /// own ([`Kamailio::ca`]).
    pub fn start_tls(callee: &str, password: &str) -> Self {
        Self::launch(callee, password, true)
    }

    fn launch(callee: &str, password: &str, tls: bool) -> Self {
        assert!(
            Path::new(KAMAILIO).exists(),
            "kamailio not installed: apt-get install -y kamailio"
        );
        let template = include_str!("kamailio.cfg");
        for _ in 0..5 {
            let port = free_udp_port();
            // TCP on the same number must be free too.
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
                continue;
            }
            let tls_port = tls.then(free_tcp_port);
            let dir = tempfile::tempdir().unwrap();
            if tls {
                issue_certificate(dir.path());
            }
            let tls_config = dir.path().join("tls.cfg");
            let cfg = template
                .replace("@@PORT@@", &port.to_string())
                .replace("@@TLS_PORT@@", &tls_port.unwrap_or_default().to_string())
                .replace("@@TLS_CONFIG@@", &tls_config.display().to_string())
                .replace("@@PASSWORD@@", password)
                .replace("@@CALLEE@@", callee);
            let cfg_path = dir.path().join("kamailio.cfg");
            std::fs::write(&cfg_path, cfg).unwrap();
            let log = std::fs::File::create(dir.path().join("kamailio.log")).unwrap();
            let child = Command::new(KAMAILIO)
                .arg("-f")
                .arg(&cfg_path)
                .args(if tls { &["-A", "WITH_TLS"][..] } else { &[] })
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
            let mut k = Self {
                child,
                port,
                tls_port,
                dir,
            };
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
            let tls_up = self
                .tls_port
                .is_none_or(|p| TcpStream::connect(("127.0.0.1", p)).is_ok());
            if udp_held && tls_up && TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    pub fn uri(&self) -> String {
        format!("sip:127.0.0.1:{}", self.port)
    }

    /// The TLS listener's URI.
    pub fn sips_uri(&self) -> String {
        format!(
            "sips:127.0.0.1:{}",
            self.tls_port.expect("started with TLS")
        )
    }

    /// The PEM of the CA that issued the proxy's certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
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

    /// The REGISTERs the registrar accepted: (Contact, Expires asked, arrival in seconds).
    pub fn registrations(&self) -> Vec<(String, String, f64)> {
        self.log()
            .lines()
            .filter_map(|l| {
                let rest = &l[l.find("outdial-test register ")? + "outdial-test register ".len()..];
                let mut words = rest.trim().rsplitn(3, ' ');
                let at = words.next()?.parse().ok()?;
                let expires = words.next()?.to_string();
                Some((words.next()?.to_string(), expires, at))
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

fn free_udp_port() -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap().port()
}

fn free_tcp_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A CA (`ca.pem`) and a server certificate for 127.0.0.1 it issued (`cert.pem`, `key.pem`),
/// made by openssl in `dir`, with the tls module's configuration (`tls.cfg`) naming them.
fn issue_certificate(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=outdial test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "key.pem",
        "-out",
        "cert.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "cert.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "cert.pem",
        "-days",
        "2",
        "-extfile",
        "leaf.ext",
    ]);
    std::fs::write(
        dir.join("tls.cfg"),
        format!(
            "[server:default]\nmethod = TLSv1.2+\nverify_certificate = no\n\
             require_certificate = no\ncertificate = {0}/cert.pem\nprivate_key = {0}/key.pem\n\n\
             [client:default]\nmethod = TLSv1.2+\nverify_certificate = no\n\
             require_certificate = no\n",
            dir.display()
        ),
    )
    .unwrap();
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        self.stop();
    }
}
