//! Writing the loader's settings into the maps: `CONFIG[0]`, excluded ports and excluded CIDRs.
//!
//! Maps adopted from bpffs still hold the previous loader's exclusions, so the wanted entries are
//! inserted first and stale ones removed afterwards: a wanted exclusion is never missing, and a
//! dropped one stops applying once the new settings are in.

use std::net::IpAddr;

use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData},
    Ebpf, Pod,
};
use mesh_ebpf_common::{maps, RedirectConfig};

use super::{is_not_found, map_error, not_in_object, Cidr, Config, RedirectError};

/// Writes `CONFIG[0]` and the exclusion maps, removing exclusions `config` no longer lists.
pub fn write(ebpf: &mut Ebpf, config: &Config) -> Result<(), RedirectError> {
    let map = ebpf
        .map_mut(maps::CONFIG)
        .ok_or_else(|| not_in_object(maps::CONFIG))?;
    let mut array: Array<&mut MapData, RedirectConfig> =
        Array::try_from(map).map_err(|source| map_error(maps::CONFIG, "open", source))?;
    array
        .set(0, config.to_abi(), 0)
        .map_err(|source| map_error(maps::CONFIG, "write", source))?;
    let ports: Vec<u16> = config.excluded_ports.iter().map(|p| p.to_be()).collect();
    write_ports(ebpf, &ports)?;
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for cidr in &config.excluded_cidrs {
        match cidr.addr {
            IpAddr::V4(ip) if cidr.prefix_len <= 32 => {
                v4.push(Key::new(u32::from(cidr.prefix_len), ip.octets()));
            }
            IpAddr::V6(ip) if cidr.prefix_len <= 128 => {
                v6.push(Key::new(u32::from(cidr.prefix_len), ip.octets()));
            }
            _ => return Err(bad_cidr(cidr)),
        }
    }
    write_trie(ebpf, maps::EXCLUDED_V4, &v4)?;
    write_trie(ebpf, maps::EXCLUDED_V6, &v6)
}

fn write_ports(ebpf: &mut Ebpf, wanted: &[u16]) -> Result<(), RedirectError> {
    let name = maps::EXCLUDED_PORTS;
    let map = ebpf.map_mut(name).ok_or_else(|| not_in_object(name))?;
    let mut ports: HashMap<&mut MapData, u16, u8> =
        HashMap::try_from(map).map_err(|source| map_error(name, "open", source))?;
    for port in wanted {
        ports
            .insert(port, 1, 0)
            .map_err(|source| map_error(name, "insert", source))?;
    }
    let stale: Vec<u16> = ports
        .keys()
        .filter_map(Result::ok)
        .filter(|port| !wanted.contains(port))
        .collect();
    for port in stale {
        remove_ok(ports.remove(&port), name)?;
    }
    Ok(())
}

fn write_trie<K: Pod + PartialEq>(
    ebpf: &mut Ebpf,
    name: &'static str,
    wanted: &[Key<K>],
) -> Result<(), RedirectError> {
    let map = ebpf.map_mut(name).ok_or_else(|| not_in_object(name))?;
    let mut trie: LpmTrie<&mut MapData, K, u8> =
        LpmTrie::try_from(map).map_err(|source| map_error(name, "open", source))?;
    for key in wanted {
        trie.insert(key, 1, 0)
            .map_err(|source| map_error(name, "insert", source))?;
    }
    let same = |a: &Key<K>, b: &Key<K>| a.prefix_len() == b.prefix_len() && a.data() == b.data();
    let stale: Vec<Key<K>> = trie
        .keys()
        .filter_map(Result::ok)
        .filter(|key| !wanted.iter().any(|w| same(w, key)))
        .collect();
    for key in stale {
        remove_ok(trie.remove(&key), name)?;
    }
    Ok(())
}

/// A removal that raced with nothing is fine; a missing key means it is already gone.
fn remove_ok(
    result: Result<(), aya::maps::MapError>,
    name: &'static str,
) -> Result<(), RedirectError> {
    match result {
        Err(source) if !is_not_found(&source) => Err(map_error(name, "remove", source)),
        _ => Ok(()),
    }
}

fn bad_cidr(cidr: &Cidr) -> RedirectError {
    RedirectError::BadCidr {
        addr: cidr.addr,
        prefix_len: cidr.prefix_len,
    }
}
