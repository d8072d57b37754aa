//! `SO_ORIGINAL_DST` / `IP6T_SO_ORIGINAL_DST` as the tunnel asks them, on accepted sockets.

use std::{
    io,
    mem::size_of,
    net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6, TcpStream},
    os::fd::AsRawFd,
};

/// `getsockopt(SOL_IP, SO_ORIGINAL_DST)` on an accepted socket.
pub fn original_dst(stream: &TcpStream) -> io::Result<SocketAddrV4> {
    // SAFETY: sockaddr_in is plain data; all-zero is valid.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: `addr`/`len` are valid for writes of the sizes passed.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_IP,
            libc::SO_ORIGINAL_DST,
            (&mut addr as *mut libc::sockaddr_in).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    assert_eq!(
        len as usize,
        size_of::<libc::sockaddr_in>(),
        "SO_ORIGINAL_DST length"
    );
    assert_eq!(
        addr.sin_family,
        libc::AF_INET as libc::sa_family_t,
        "SO_ORIGINAL_DST family"
    );
    Ok(SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
        u16::from_be(addr.sin_port),
    ))
}

/// `getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST)` on an accepted IPv6 socket.
pub fn original_dst6(stream: &TcpStream) -> io::Result<SocketAddrV6> {
    /// `IP6T_SO_ORIGINAL_DST` (linux/netfilter_ipv6/ip6_tables.h), the same value as IPv4's.
    const IP6T_SO_ORIGINAL_DST: libc::c_int = 80;
    // SAFETY: sockaddr_in6 is plain data; all-zero is valid.
    let mut addr: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    // SAFETY: `addr`/`len` are valid for writes of the sizes passed.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_IPV6,
            IP6T_SO_ORIGINAL_DST,
            (&mut addr as *mut libc::sockaddr_in6).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    assert_eq!(len as usize, size_of::<libc::sockaddr_in6>(), "length");
    assert_eq!(
        addr.sin6_family,
        libc::AF_INET6 as libc::sa_family_t,
        "family"
    );
    Ok(SocketAddrV6::new(
        Ipv6Addr::from(addr.sin6_addr.s6_addr),
        u16::from_be(addr.sin6_port),
        0,
        0,
    ))
}
