//! Just enough rtnetlink for the tunnel's own routing needs, without iptables or a netlink
//! crate: a fwmark policy rule and a `local` default route (the return path of the tunnel's
//! transparent connections inside a pod, [`crate::pod_net`]), and an address on loopback (the
//! kubelet probe source on the node), and sock_diag's `SOCK_DESTROY` (ending a same-node
//! direct connection whose policy was revoked).
//!
//! Requests are acknowledged one at a time (`NLM_F_ACK`), so each error names its request. Adds
//! are exclusive (`NLM_F_EXCL`) and an "already exists" answer is success: every call is
//! idempotent. The socket lives in the network namespace of the thread that opened it.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

const NLMSG_ERROR: u16 = 2;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_NEWROUTE: u16 = 24;
const RTM_NEWRULE: u16 = 32;
/// `SOCK_DESTROY` (sock_diag).
const SOCK_DESTROY: u16 = 21;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const HEADER_LEN: usize = 16;
/// `FR_ACT_TO_TBL`.
const RULE_TO_TABLE: u8 = 1;
const FRA_PRIORITY: u16 = 6;
const FRA_FWMARK: u16 = 10;
const FRA_TABLE: u16 = 15;
const FRA_FWMASK: u16 = 16;
const RTA_OIF: u16 = 4;
const RTA_TABLE: u16 = 15;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
/// `RTPROT_STATIC`: routes the administrator (here the tunnel) installed.
const RTPROT_STATIC: u8 = 4;
/// `RT_SCOPE_UNIVERSE`.
const SCOPE_UNIVERSE: u8 = 0;
/// `RT_SCOPE_HOST`.
pub const SCOPE_HOST: u8 = 254;
/// `RTN_LOCAL`.
const RTN_LOCAL: u8 = 2;
/// `IFA_F_NODAD`.
const IFA_F_NODAD: u8 = 0x02;
/// The loopback interface's index in every network namespace.
pub const LOOPBACK_IFINDEX: u32 = 1;

/// A route netlink socket in the calling thread's network namespace.
#[derive(Debug)]
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    /// Opens a `NETLINK_ROUTE` socket.
    pub fn open() -> io::Result<Self> {
        Self::open_protocol(libc::NETLINK_ROUTE)
    }

    /// Opens a `NETLINK_SOCK_DIAG` socket (for [`Self::destroy_tcp`]).
    pub fn open_sock_diag() -> io::Result<Self> {
        Self::open_protocol(libc::NETLINK_SOCK_DIAG)
    }

    fn open_protocol(protocol: libc::c_int) -> io::Result<Self> {
        // SAFETY: plain socket(2); the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                protocol,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(Self { fd, seq: 0 })
    }

    /// `ip rule add fwmark <mark>/<mark> lookup <table> pref <priority>` for `family`.
    pub fn add_fwmark_rule(
        &mut self,
        family: u8,
        mark: u32,
        table: u32,
        priority: u32,
    ) -> io::Result<()> {
        // struct fib_rule_hdr: family, dst_len, src_len, tos, table, res1, res2, action, flags.
        let mut body = vec![family, 0, 0, 0, 0, 0, 0, RULE_TO_TABLE];
        body.extend_from_slice(&0u32.to_ne_bytes());
        attr_u32(&mut body, FRA_PRIORITY, priority);
        attr_u32(&mut body, FRA_FWMARK, mark);
        attr_u32(&mut body, FRA_FWMASK, mark);
        attr_u32(&mut body, FRA_TABLE, table);
        self.create(RTM_NEWRULE, &body)
    }

    /// `ip route add local default dev lo table <table>` for `family`: every destination is
    /// delivered locally for packets routed by this table.
    pub fn add_local_default_route(&mut self, family: u8, table: u32) -> io::Result<()> {
        // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
        // As iproute2 does: host scope for IPv4 local routes; IPv6 routes are all universe scope.
        let scope = if family == libc::AF_INET as u8 {
            SCOPE_HOST
        } else {
            SCOPE_UNIVERSE
        };
        let mut body = vec![family, 0, 0, 0, 0, RTPROT_STATIC, scope, RTN_LOCAL];
        body.extend_from_slice(&0u32.to_ne_bytes());
        attr_u32(&mut body, RTA_TABLE, table);
        attr_u32(&mut body, RTA_OIF, LOOPBACK_IFINDEX);
        self.create(RTM_NEWROUTE, &body)
    }

    /// `ip addr add <ip>/<full length> scope <scope> dev <ifindex>`.
    pub fn add_address(&mut self, ifindex: u32, ip: IpAddr, scope: u8) -> io::Result<()> {
        let body = address_body(ifindex, ip, scope);
        self.create(RTM_NEWADDR, &body)
    }

    /// `ip addr del <ip>/<full length> dev <ifindex>`; a missing address is not an error.
    pub fn remove_address(&mut self, ifindex: u32, ip: IpAddr) -> io::Result<()> {
        let body = address_body(ifindex, ip, 0);
        match self.request(RTM_DELADDR, 0, &body) {
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => Ok(()),
            other => other,
        }
    }

    /// `ss -K`: aborts the TCP socket of this namespace whose own address is `local` and whose
    /// peer is `remote` (`SOCK_DESTROY`; the kernel resets the connection). Needs a
    /// [`Self::open_sock_diag`] socket. An IPv4 pair is also looked for as the IPv4-mapped pair
    /// of a dual-stack socket.
    pub fn destroy_tcp(&mut self, local: SocketAddr, remote: SocketAddr) -> io::Result<()> {
        let first = self.request(SOCK_DESTROY, 0, &destroy_body(local, remote, false));
        match first {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) && local.is_ipv4() => {
                self.request(SOCK_DESTROY, 0, &destroy_body(local, remote, true))
            }
            other => other,
        }
    }

    fn create(&mut self, kind: u16, body: &[u8]) -> io::Result<()> {
        match self.request(kind, NLM_F_CREATE | NLM_F_EXCL, body) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            other => other,
        }
    }

    /// Sends one request and waits for its acknowledgement.
    fn request(&mut self, kind: u16, flags: u16, body: &[u8]) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let len = HEADER_LEN + body.len();
        let mut message = Vec::with_capacity(len);
        message.extend_from_slice(&(len as u32).to_ne_bytes());
        message.extend_from_slice(&kind.to_ne_bytes());
        message.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        message.extend_from_slice(&self.seq.to_ne_bytes());
        message.extend_from_slice(&0u32.to_ne_bytes());
        message.extend_from_slice(body);
        // SAFETY: the buffer is valid for `len` bytes; the kernel is the destination (no address).
        let sent = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                message.as_ptr().cast(),
                message.len(),
                0,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        self.ack()
    }

    /// Reads answers until the error/ack message of the current sequence number.
    fn ack(&mut self) -> io::Result<()> {
        let mut buffer = [0u8; 8192];
        loop {
            // SAFETY: the buffer is valid for writes of its length.
            let read = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                    0,
                )
            };
            let read = usize::try_from(read).map_err(|_| io::Error::last_os_error())?;
            if let Some(result) = find_ack(&buffer[..read], self.seq) {
                return result;
            }
        }
    }
}

/// `struct inet_diag_req_v2` naming one TCP socket in any state. `mapped`: the IPv4 pair as
/// the IPv4-mapped addresses of an `AF_INET6` socket.
fn destroy_body(local: SocketAddr, remote: SocketAddr, mapped: bool) -> Vec<u8> {
    let octets = |ip: IpAddr| -> [u8; 16] {
        match ip {
            IpAddr::V4(v4) if mapped => v4.to_ipv6_mapped().octets(),
            IpAddr::V4(v4) => {
                let mut out = [0; 16];
                out[..4].copy_from_slice(&v4.octets());
                out
            }
            IpAddr::V6(v6) => v6.octets(),
        }
    };
    let family = match local.ip() {
        IpAddr::V4(_) if !mapped => libc::AF_INET as u8,
        _ => libc::AF_INET6 as u8,
    };
    // family, protocol, extensions, padding, states (all).
    let mut body = vec![family, libc::IPPROTO_TCP as u8, 0, 0];
    body.extend_from_slice(&u32::MAX.to_ne_bytes());
    // struct inet_diag_sockid: ports (network order), addresses, interface, cookie (none).
    body.extend_from_slice(&local.port().to_be_bytes());
    body.extend_from_slice(&remote.port().to_be_bytes());
    body.extend_from_slice(&octets(local.ip()));
    body.extend_from_slice(&octets(remote.ip()));
    body.extend_from_slice(&0u32.to_ne_bytes());
    body.extend_from_slice(&u32::MAX.to_ne_bytes());
    body.extend_from_slice(&u32::MAX.to_ne_bytes());
    body
}

fn address_body(ifindex: u32, ip: IpAddr, scope: u8) -> Vec<u8> {
    let (family, prefix, octets) = match ip {
        IpAddr::V4(v4) => (libc::AF_INET as u8, 32, v4.octets().to_vec()),
        IpAddr::V6(v6) => (libc::AF_INET6 as u8, 128, v6.octets().to_vec()),
    };
    // struct ifaddrmsg: family, prefixlen, flags, scope, index.
    let mut body = vec![family, prefix, IFA_F_NODAD, scope];
    body.extend_from_slice(&ifindex.to_ne_bytes());
    attr(&mut body, IFA_LOCAL, &octets);
    attr(&mut body, IFA_ADDRESS, &octets);
    body
}

/// The result carried by the `NLMSG_ERROR` message for `seq` in `data`, if there is one.
fn find_ack(mut data: &[u8], seq: u32) -> Option<io::Result<()>> {
    while data.len() >= HEADER_LEN {
        let len = u32::from_ne_bytes(data[0..4].try_into().ok()?) as usize;
        let kind = u16::from_ne_bytes(data[4..6].try_into().ok()?);
        let message_seq = u32::from_ne_bytes(data[8..12].try_into().ok()?);
        if len < HEADER_LEN || len > data.len() {
            return Some(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "truncated netlink answer",
            )));
        }
        if kind == NLMSG_ERROR && message_seq == seq && len >= HEADER_LEN + 4 {
            let code = i32::from_ne_bytes(data[HEADER_LEN..HEADER_LEN + 4].try_into().ok()?);
            return Some(match code {
                0 => Ok(()),
                negative => Err(io::Error::from_raw_os_error(-negative)),
            });
        }
        data = &data[align(len).min(data.len())..];
    }
    None
}

fn attr_u32(body: &mut Vec<u8>, kind: u16, value: u32) {
    attr(body, kind, &value.to_ne_bytes());
}

fn attr(body: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len();
    body.extend_from_slice(&(len as u16).to_ne_bytes());
    body.extend_from_slice(&kind.to_ne_bytes());
    body.extend_from_slice(value);
    body.resize(align(body.len()), 0);
}

fn align(len: usize) -> usize {
    (len + 3) & !3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destroy_requests_name_one_socket_by_its_whole_tuple() {
        let local: SocketAddr = "10.0.0.1:40000".parse().unwrap();
        let remote: SocketAddr = "10.0.0.2:80".parse().unwrap();
        let body = destroy_body(local, remote, false);
        // inet_diag_req_v2 is 56 bytes: 8 of header, 48 of socket id.
        assert_eq!(body.len(), 56);
        assert_eq!(body[0], libc::AF_INET as u8);
        assert_eq!(&body[8..10], &40000u16.to_be_bytes());
        assert_eq!(&body[10..12], &80u16.to_be_bytes());
        assert_eq!(&body[12..16], &[10, 0, 0, 1]);
        assert_eq!(&body[28..32], &[10, 0, 0, 2]);
        let mapped = destroy_body(local, remote, true);
        assert_eq!(mapped[0], libc::AF_INET6 as u8);
        assert_eq!(
            &mapped[12..28],
            &"::ffff:10.0.0.1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
        );
    }

    #[test]
    fn attributes_are_padded_to_four_bytes() {
        let mut body = Vec::new();
        attr(&mut body, IFA_LOCAL, &[10, 0, 0, 1]);
        attr(&mut body, 9, &[1]);
        assert_eq!(body.len(), 8 + 8);
        assert_eq!(
            &body[8..10],
            &5u16.to_ne_bytes(),
            "length excludes the padding"
        );
    }

    #[test]
    fn acks_are_matched_by_sequence_and_carry_the_errno() {
        let message = |seq: u32, code: i32| {
            let mut m = Vec::new();
            m.extend_from_slice(&36u32.to_ne_bytes());
            m.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
            m.extend_from_slice(&0u16.to_ne_bytes());
            m.extend_from_slice(&seq.to_ne_bytes());
            m.extend_from_slice(&0u32.to_ne_bytes());
            m.extend_from_slice(&code.to_ne_bytes());
            m.extend_from_slice(&[0; 16]);
            m
        };
        let mut both = message(6, 0);
        both.extend(message(7, -libc::EEXIST));
        assert!(matches!(find_ack(&both, 6), Some(Ok(()))));
        let error = find_ack(&both, 7).unwrap().unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::EEXIST));
        assert!(find_ack(&both, 8).is_none());
        assert!(find_ack(&both[..20], 6).unwrap().is_err(), "truncated");
    }
}
