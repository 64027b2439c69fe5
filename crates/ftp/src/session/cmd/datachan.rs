//! PASV EPSV PORT EPRT: how the next data connection is made.

use std::net::{IpAddr, SocketAddr, SocketAddrV4};

use crate::proto::{epsv_reply, pasv_reply, Epsv, Reply};
use crate::session::data::{bind_passive, DataPlan};
use crate::session::Session;
use crate::tls::canonical_ip;

impl Session {
    pub(crate) async fn cmd_pasv(&mut self) -> Reply {
        if self.epsv_all {
            return Reply::bad_sequence("EPSV ALL in effect; use EPSV.");
        }
        let announce = match (self.shared.config.passive_address, self.local.ip()) {
            (Some(a), _) => a,
            (None, IpAddr::V4(a)) => a,
            (None, IpAddr::V6(a)) => match a.to_ipv4_mapped() {
                Some(v4) => v4,
                None => return Reply::new(425, "PASV needs IPv4; use EPSV."),
            },
        };
        match bind_passive(self.local.ip(), self.shared.config.passive_ports).await {
            Ok(l) => {
                let port = self.plan_passive(l);
                pasv_reply(SocketAddrV4::new(announce, port))
            }
            Err(e) => {
                tracing::warn!(error = %e, "no passive port");
                Reply::cannot_open_data("No passive port available.")
            }
        }
    }

    pub(crate) async fn cmd_epsv(&mut self, e: Epsv) -> Reply {
        match e {
            Epsv::All => {
                self.epsv_all = true;
                return Reply::ok("EPSV ALL ok.");
            }
            Epsv::Ipv4 if !self.local.is_ipv4() => return Reply::new(522, "Use (2)"),
            Epsv::Ipv6 if !self.local.is_ipv6() => return Reply::new(522, "Use (1)"),
            _ => {}
        }
        match bind_passive(self.local.ip(), self.shared.config.passive_ports).await {
            Ok(l) => {
                let port = self.plan_passive(l);
                epsv_reply(port)
            }
            Err(err) => {
                tracing::warn!(error = %err, "no passive port");
                Reply::cannot_open_data("No passive port available.")
            }
        }
    }

    /// Plans a passive data connection on `listener`, which closes unused
    /// after the connect timeout; its port.
    fn plan_passive(&mut self, listener: tokio::net::TcpListener) -> u16 {
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        let expires = tokio::time::Instant::now() + self.shared.config.connect_timeout();
        self.data = DataPlan::Passive { listener, expires };
        port
    }

    /// PORT and EPRT: only to the control connection's own address and an
    /// unprivileged port, so the server cannot be used to reach anything
    /// else (no FTP bounce).
    pub(crate) fn cmd_port(&mut self, addr: SocketAddr) -> Reply {
        if !self.shared.config.active_mode {
            return Reply::not_implemented("Active mode is off; use PASV or EPSV.");
        }
        if self.epsv_all {
            return Reply::bad_sequence("EPSV ALL in effect; use EPSV.");
        }
        let same_host = canonical_ip(addr.ip()) == canonical_ip(self.peer.ip());
        if !same_host || addr.port() < 1024 {
            tracing::warn!(event = "port_refused", peer = %self.peer, target = %addr);
            return Reply::new(500, "PORT must name your own address and a port >= 1024.");
        }
        self.data = DataPlan::Active(addr);
        Reply::ok("PORT command successful.")
    }
}
