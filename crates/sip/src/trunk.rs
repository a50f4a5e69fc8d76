//! Reaching the trunk: parsing its URI, resolving it, noticing fast when nothing listens there,
//! and the OPTIONS keep-alive.

use crate::header::{self, HeaderValue};
use crate::{Shared, SipError};
use domain::telephony::{self, TrunkTarget};
use rsipstack::sip::{self, uri::ParamsExt, HostWithPort, Method, SipMessage, Transport};
use rsipstack::transaction::key::{TransactionKey, TransactionRole};
use rsipstack::transaction::make_tag;
use rsipstack::transaction::transaction::Transaction;
use rsipstack::transport::SipAddr;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

/// RFC 5626 CRLF keep-alive: SIP stacks ignore it or answer with a CRLF, so it can be sent to a
/// trunk at any time without side effects, and on a connected socket it makes the kernel report
/// ICMP port/host unreachable as `ECONNREFUSED`, which the shared SIP socket never sees.
const PING: &[u8] = b"\r\n\r\n";

/// A trunk URI reduced to what dialling needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub host: String,
    pub port: u16,
    pub transport: telephony::Transport,
}

impl Target {
    /// The trunk's URI and its `transport` option: `sips:` only with TLS, and a `;transport=`
    /// in the URI must name the same transport.
    pub(crate) fn parse(uri: &str, transport: telephony::Transport) -> Result<Self, SipError> {
        let sips = uri
            .get(..5)
            .is_some_and(|p| p.eq_ignore_ascii_case("sips:"));
        if !sips && !uri.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("sip:")) {
            return Err(SipError::InvalidTrunk(format!(
                "{uri}: expected sip:host[:port] or sips:host[:port]"
            )));
        }
        if sips && transport != telephony::Transport::Tls {
            return Err(SipError::InvalidTrunk(format!(
                "{uri}: a sips: trunk needs transport tls"
            )));
        }
        let parsed =
            sip::Uri::try_from(uri).map_err(|e| SipError::InvalidTrunk(format!("{uri}: {e}")))?;
        if let Some(t) = parsed.transport() {
            if *t != wire_transport(transport) {
                return Err(SipError::InvalidTrunk(format!(
                    "{uri}: the URI says transport {t}, the trunk {transport}"
                )));
            }
        }
        let host = parsed.host_with_port.host.to_string();
        let default_port = match transport {
            telephony::Transport::Tls => 5061,
            _ => 5060,
        };
        let port = parsed
            .host_with_port
            .port
            .map(|p| p.value())
            .unwrap_or(default_port);
        let host_chars = |c: char| c.is_ascii_alphanumeric() || ".-[]:".contains(c);
        if host.is_empty() || !host.chars().all(host_chars) {
            return Err(SipError::InvalidTrunk(format!("{uri}: bad host")));
        }
        Ok(Self {
            host,
            port,
            transport,
        })
    }

    /// Where the trunk's messages go: its address over its transport.
    pub(crate) fn sip_addr(&self, addr: SocketAddr) -> SipAddr {
        SipAddr {
            r#type: Some(wire_transport(self.transport)),
            addr: HostWithPort::from(addr),
        }
    }

    /// The URI host as written (a name stays a name in Request-URI, From and To).
    pub(crate) fn host_port(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Resolves the host to an address of the same family as our SIP socket.
    pub(crate) async fn resolve(&self, local: SocketAddr) -> Result<SocketAddr, String> {
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        let addrs = tokio::net::lookup_host((host, self.port))
            .await
            .map_err(|e| format!("DNS lookup of {host} failed: {e}"))?;
        addrs
            .into_iter()
            .find(|a| a.is_ipv4() == local.is_ipv4())
            .ok_or_else(|| format!("{host} has no address of our SIP socket's family"))
    }
}

/// The address our Via names for `transport`: its listener, else the first one's address over
/// it (the Via a TLS trunk sees; it reaches us back through the connection we opened).
fn our_addr(shared: &Shared, transport: telephony::Transport) -> Option<SipAddr> {
    let wire = wire_transport(transport);
    let listens = shared.endpoint.transport_layer.get_listen_addrs();
    listens
        .iter()
        .find(|a| a.r#type == Some(wire))
        .cloned()
        .or_else(|| {
            let mut addr = listens.first()?.clone();
            addr.r#type = Some(wire);
            Some(addr)
        })
}

pub(crate) fn wire_transport(transport: telephony::Transport) -> Transport {
    match transport {
        telephony::Transport::Udp => Transport::Udp,
        telephony::Transport::Tcp => Transport::Tcp,
        telephony::Transport::Tls => Transport::Tls,
    }
}

pub(crate) fn sip_addr(addr: SocketAddr) -> SipAddr {
    SipAddr {
        r#type: Some(Transport::Udp),
        addr: HostWithPort::from(addr),
    }
}

/// A socket connected to the trunk: it tells the local address the route to the trunk uses,
/// and hears the ICMP unreachable that a dead trunk answers with.
pub(crate) struct Probe {
    socket: UdpSocket,
    /// Over TCP and TLS the connection itself says whether the trunk is there; a UDP ping to
    /// a trunk that only listens on TCP would be answered "unreachable".
    watch: bool,
}

impl Probe {
    pub(crate) async fn open(
        trunk: SocketAddr,
        transport: telephony::Transport,
    ) -> io::Result<Self> {
        let any: SocketAddr = if trunk.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(any).await?;
        socket.connect(trunk).await?;
        Ok(Self {
            socket,
            watch: transport == telephony::Transport::Udp,
        })
    }

    pub(crate) fn local_ip(&self) -> io::Result<IpAddr> {
        Ok(self.socket.local_addr()?.ip())
    }

    pub(crate) async fn ping(&self) -> io::Result<()> {
        if !self.watch {
            return Ok(());
        }
        self.socket.send(PING).await.map(|_| ())
    }

    /// Resolves with the error once the kernel reports the trunk unreachable; never otherwise.
    pub(crate) async fn unreachable(&self) -> io::Error {
        if !self.watch {
            return std::future::pending().await;
        }
        let mut buf = [0u8; 64];
        loop {
            match self.socket.recv(&mut buf).await {
                // A CRLF pong: something is listening.
                Ok(_) => continue,
                Err(e) if is_unreachable(&e) => return e,
                Err(_) => continue,
            }
        }
    }
}

fn is_unreachable(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
    )
}

/// The trunk's answer to an OPTIONS probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionsReply {
    pub code: u16,
    pub reason: String,
    pub round_trip: Duration,
}

const OPTIONS_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) async fn options(
    shared: &Shared,
    trunk: &TrunkTarget,
) -> Result<OptionsReply, SipError> {
    let target = Target::parse(&trunk.uri, trunk.transport)?;
    let addr = target
        .resolve(shared.local)
        .await
        .map_err(SipError::Unreachable)?;
    let probe = Probe::open(addr, target.transport)
        .await
        .map_err(|e| SipError::Unreachable(e.to_string()))?;

    let uri = sip::Uri::try_from(format!("sip:{}", target.host_port()).as_str())
        .map_err(|e| SipError::InvalidTrunk(e.to_string()))?;
    let user = HeaderValue::new(
        "trunk username",
        trunk.username.clone().unwrap_or_else(|| "outdial".into()),
    )?;
    let host = HeaderValue::new("trunk host", target.host_port())?;
    let from_uri = header::sip_uri(&user, &host)?;
    let local_ip = match shared.config.public_ip {
        Some(ip) => ip,
        None if !shared.local.ip().is_unspecified() => shared.local.ip(),
        None => probe
            .local_ip()
            .map_err(|e| SipError::Unreachable(e.to_string()))?,
    };
    let call_id = crate::call::call_id(local_ip)?;
    let via = shared
        .endpoint
        .get_via(our_addr(shared, target.transport), None)?;
    let from = sip::typed::From {
        display_name: None,
        uri: from_uri,
        params: vec![],
    }
    .with_tag(make_tag());
    let to = sip::typed::To {
        display_name: None,
        uri: uri.clone(),
        params: vec![],
    };
    let request = shared.endpoint.make_request(
        Method::Options,
        uri,
        via,
        from,
        to,
        1,
        Some(call_id.into_string().into()),
    );
    let key = TransactionKey::from_request(&request, TransactionRole::Client)?;
    let mut tx = Transaction::new_client(key, request, shared.endpoint.clone(), None);
    tx.destination = Some(target.sip_addr(addr));

    let started = Instant::now();
    probe
        .ping()
        .await
        .map_err(|e| SipError::Unreachable(e.to_string()))?;
    tx.send().await?;
    let reply = async {
        while let Some(msg) = tx.receive().await {
            if let SipMessage::Response(resp) = msg {
                if resp.status_code.kind() != sip::StatusCodeKind::Provisional {
                    return Some(resp);
                }
            }
        }
        None
    };
    tokio::select! {
        e = probe.unreachable() => Err(SipError::Unreachable(e.to_string())),
        r = tokio::time::timeout(OPTIONS_TIMEOUT, reply) => match r {
            Ok(Some(resp)) => Ok(OptionsReply {
                code: resp.status_code.code(),
                reason: crate::call::reason_phrase(&resp),
                round_trip: started.elapsed(),
            }),
            Ok(None) | Err(_) => Err(SipError::Timeout(OPTIONS_TIMEOUT)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_trunk_uris() {
        use telephony::Transport::{Tcp, Tls, Udp};
        assert_eq!(
            Target::parse("sip:127.0.0.1:5080", Udp).unwrap(),
            Target {
                host: "127.0.0.1".into(),
                port: 5080,
                transport: Udp,
            }
        );
        let t = Target::parse("sip:trunk.example.com", Udp).unwrap();
        assert_eq!((t.host.as_str(), t.port), ("trunk.example.com", 5060));
        assert_eq!(t.host_port(), "trunk.example.com:5060");
        // The URI's transport and the trunk's must agree.
        assert!(Target::parse("sip:pbx.example.com;transport=tcp", Udp).is_err());
        assert_eq!(
            Target::parse("sip:pbx.example.com;transport=tcp", Tcp)
                .unwrap()
                .port,
            5060
        );
        // TLS: 5061 unless said, sips: only over TLS.
        assert_eq!(
            Target::parse("sips:pbx.example.com", Tls).unwrap().port,
            5061
        );
        assert_eq!(
            Target::parse("sip:pbx.example.com:5071", Tls).unwrap().port,
            5071
        );
        assert!(Target::parse("sips:pbx.example.com", Tcp).is_err());
        assert!(Target::parse("not a uri", Udp).is_err());
    }
}
