//! Strict parsing of the `CONNECT` `:authority`: an IP literal and a port, nothing else.
//!
//! The authority arrives from the network, so the parser accepts exactly `a.b.c.d:port` or
//! `[v6]:port` (no zone ids, no leading zeros in the port, port 1-65535) and rejects everything
//! else with an error carrying the (truncated) input.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// Longest authority accepted (`[` + 45-char IPv6 + `]:` + 5 digits, with room to spare).
pub const MAX_AUTHORITY_LEN: usize = 64;

/// Why an authority was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorityError {
    /// Empty or longer than [`MAX_AUTHORITY_LEN`].
    #[error("authority of {0} bytes is empty or longer than {MAX_AUTHORITY_LEN}")]
    Length(usize),
    /// Not `ip:port`.
    #[error("authority {0:?} is not ip:port")]
    Shape(String),
    /// The host is not an IP literal.
    #[error("authority host {0:?} is not an ip address")]
    Host(String),
    /// The port is not 1-65535 in canonical decimal.
    #[error("authority port {0:?} is not a port number 1-65535")]
    Port(String),
}

/// Parses `ip:port` / `[ipv6]:port`.
pub fn parse(authority: &str) -> Result<SocketAddr, AuthorityError> {
    if authority.is_empty() || authority.len() > MAX_AUTHORITY_LEN {
        return Err(AuthorityError::Length(authority.len()));
    }
    let shape = || AuthorityError::Shape(authority.to_owned());
    let (host, port) = authority.rsplit_once(':').ok_or_else(shape)?;
    let ip = match host.strip_prefix('[') {
        Some(inner) => {
            let inner = inner.strip_suffix(']').ok_or_else(shape)?;
            IpAddr::V6(parse_v6(inner)?)
        }
        None if host.contains(':') => return Err(shape()),
        None => IpAddr::V4(
            host.parse()
                .map_err(|_| AuthorityError::Host(host.to_owned()))?,
        ),
    };
    Ok(SocketAddr::new(ip, parse_port(port)?))
}

fn parse_v6(text: &str) -> Result<Ipv6Addr, AuthorityError> {
    // `Ipv6Addr` rejects zone ids itself; only hex digits, ':' and '.' may appear.
    let allowed = |c: char| c.is_ascii_hexdigit() || c == ':' || c == '.';
    if !text.chars().all(allowed) {
        return Err(AuthorityError::Host(text.to_owned()));
    }
    text.parse()
        .map_err(|_| AuthorityError::Host(text.to_owned()))
}

fn parse_port(text: &str) -> Result<u16, AuthorityError> {
    let err = || AuthorityError::Port(text.to_owned());
    let canonical = !text.is_empty()
        && text.len() <= 5
        && text.bytes().all(|b| b.is_ascii_digit())
        && !text.starts_with('0');
    if !canonical {
        return Err(err());
    }
    text.parse::<u16>().map_err(|_| err())
}

#[cfg(test)]
mod tests {
    use rand::{rngs::StdRng, Rng, SeedableRng};

    use super::*;

    #[test]
    fn accepts_ip_literals() {
        assert_eq!(
            parse("10.1.2.3:8080").unwrap(),
            "10.1.2.3:8080".parse().unwrap()
        );
        assert_eq!(
            parse("[fd00::1]:80").unwrap(),
            "[fd00::1]:80".parse().unwrap()
        );
        assert_eq!(parse("[::ffff:1.2.3.4]:65535").unwrap().port(), 65535);
    }

    #[test]
    fn rejects_everything_else() {
        let cases = [
            "",
            "10.1.2.3",
            "10.1.2.3:",
            "10.1.2.3:0",
            "10.1.2.3:080",
            "10.1.2.3:65536",
            "10.1.2.3:+80",
            "010.1.2.3:80",
            "10.1.2:80",
            "reviews.default.svc:9080",
            "fd00::1:80",
            "[fd00::1%eth0]:80",
            "[fd00::1]",
            "[fd00::1:80",
            " 10.1.2.3:80",
            "10.1.2.3:80 ",
            "user@10.1.2.3:80",
        ];
        for case in cases {
            assert!(parse(case).is_err(), "{case:?} accepted");
        }
        assert!(matches!(
            parse(&"1".repeat(MAX_AUTHORITY_LEN + 1)),
            Err(AuthorityError::Length(_))
        ));
    }

    /// An accepted input re-parses from its display form to the same address; IPv4 inputs are
    /// accepted only in canonical form.
    fn check_consistent(input: &str) {
        if let Ok(parsed) = parse(input) {
            assert_eq!(parse(&parsed.to_string()), Ok(parsed), "{input:?}");
            if parsed.is_ipv4() {
                assert_eq!(parsed.to_string(), input, "non-canonical ipv4 accepted");
            }
        }
    }

    /// Randomized: every socket address round-trips through its display form, and mutated or
    /// random inputs never panic and, when accepted, re-display to exactly the input.
    #[test]
    fn randomized_round_trip_and_no_panic() {
        let mut rng = StdRng::seed_from_u64(0x0048_424f_4e45);
        for _ in 0..20_000 {
            let ip: IpAddr = if rng.random_bool(0.5) {
                IpAddr::from(rng.random::<[u8; 4]>())
            } else {
                IpAddr::from(rng.random::<[u8; 16]>())
            };
            let addr = SocketAddr::new(ip, rng.random_range(1..=u16::MAX));
            let text = addr.to_string();
            assert_eq!(parse(&text), Ok(addr), "{text}");
            let mut bytes = text.into_bytes();
            let at = rng.random_range(0..bytes.len());
            bytes[at] = rng.random_range(0x20..0x7f);
            if let Ok(mutated) = String::from_utf8(bytes) {
                check_consistent(&mutated);
            }
        }
        for _ in 0..20_000 {
            let len = rng.random_range(0..40);
            let junk: String = (0..len)
                .map(|_| char::from(rng.random_range(0x20u8..0x7f)))
                .collect();
            check_consistent(&junk);
        }
    }
}
