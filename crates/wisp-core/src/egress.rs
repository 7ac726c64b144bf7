//! The node's egress policy: which IP addresses a function's outbound HTTP
//! and an async call's callback may connect to, whatever the tenant declared.
//!
//! The decision a reader must know: the policy judges **addresses, never
//! names**. A host name is resolved first and each address it resolves to is
//! checked; the caller then connects to a checked address, so a DNS answer
//! that changes between check and connect (a rebind) cannot slip through.
//! Every spelling of an address lands on the same check: IPv6 carrying IPv4
//! (mapped `::ffff:127.0.0.1`, translated, compatible, NAT64 `64:ff9b::/96`
//! and the local-use `64:ff9b:1::/48`, 6to4 `2002::/16`) is judged as the
//! IPv4 address it carries, and the numeric forms the C resolver accepts
//! (`2130706433`, `0x7f000001`, `127.1`, `0177.0.0.1`) are parsed here as
//! it parses them.
//!
//! Denied unless an operator opens a range (`wisp up --allow-egress CIDR`):
//! loopback, link-local (the cloud metadata service at 169.254.169.254
//! lives there), private (RFC 1918, IPv6 ULA), unspecified, shared (CGNAT),
//! multicast and reserved ranges (240.0.0.0/4, 192.0.0.0/24, benchmarking
//! 198.18.0.0/15, the documentation ranges), and the node's own addresses,
//! which the node refreshes as its interfaces change.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
    sync::{PoisonError, RwLock},
};

/// A range of addresses, `10.0.0.0/8` or `fe80::/10`; a bare address is a
/// range of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

/// A range that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an address range: write it as 10.0.0.0/8, 127.0.0.1 or fd00::/8")]
pub struct CidrError(String);

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || CidrError(text.to_owned());
        let (address, prefix) = match text.trim().split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text.trim(), None),
        };
        let network: IpAddr = address.parse().map_err(|_| invalid())?;
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|prefix| *prefix <= bits)
                .ok_or_else(invalid)?,
            None => bits,
        };
        Ok(Self { network, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl Cidr {
    /// Whether `address` is in the range; an IPv4-mapped IPv6 address is in
    /// an IPv4 range when the address it carries is.
    pub fn contains(&self, address: IpAddr) -> bool {
        match (self.network, canonical(address)) {
            (IpAddr::V4(network), IpAddr::V4(address)) => same_prefix(
                network.to_bits().into(),
                address.to_bits().into(),
                self.prefix,
                32,
            ),
            (IpAddr::V6(network), IpAddr::V6(address)) => {
                same_prefix(network.to_bits(), address.to_bits(), self.prefix, 128)
            }
            _ => false,
        }
    }
}

/// Whether the first `prefix` of `bits` bits of `a` and `b` agree.
fn same_prefix(a: u128, b: u128, prefix: u8, bits: u8) -> bool {
    let shift = u32::from(bits - prefix);
    prefix == 0 || (a >> shift) == (b >> shift)
}

/// Why an address is denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocked {
    /// 127.0.0.0/8, `::1`.
    Loopback,
    /// 169.254.0.0/16 (the cloud metadata service), `fe80::/10`.
    LinkLocal,
    /// 10/8, 172.16/12, 192.168/16, `fc00::/7`.
    Private,
    /// 0.0.0.0/8, `::`.
    Unspecified,
    /// 100.64.0.0/10, carrier-grade NAT.
    Shared,
    /// 224.0.0.0/4, `ff00::/8`.
    Multicast,
    /// 240.0.0.0/4 and the broadcast address, 192.0.0.0/24, 198.18.0.0/15,
    /// the documentation ranges (192.0.2.0/24, 198.51.100.0/24,
    /// 203.0.113.0/24, `2001:db8::/32`).
    Reserved,
    /// An address the node itself listens on.
    Node,
}

impl Blocked {
    /// A phrase that completes "ADDRESS is ...".
    pub fn describe(self) -> &'static str {
        match self {
            Self::Loopback => "a loopback address",
            Self::LinkLocal => "a link-local address (where the cloud metadata service lives)",
            Self::Private => "a private address",
            Self::Unspecified => "the unspecified address",
            Self::Shared => "a shared (carrier-grade NAT) address",
            Self::Multicast => "a multicast address",
            Self::Reserved => "a reserved address",
            Self::Node => "one of the node's own addresses",
        }
    }
}

/// The IPv4 address an IPv6 address stands for, if it carries one: mapped
/// (`::ffff:a.b.c.d`), translated (`::ffff:0:a.b.c.d`), compatible
/// (`::a.b.c.d`), NAT64 (`64:ff9b::a.b.c.d`, and the local-use
/// `64:ff9b:1::/48` with the address in its last 32 bits) or 6to4
/// (`2002:aabb:ccdd::`).
fn embedded_ipv4(address: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = address.to_bits();
    let low = Ipv4Addr::from_bits(bits as u32);
    let high = bits >> 32;
    let mapped = high == 0xffff;
    let translated = high == 0xffff_0000;
    // `::` and `::1` are IPv6's own unspecified and loopback addresses.
    let compatible = high == 0 && bits > 1;
    let nat64 = high == 0x0064_ff9b_0000_0000_0000_0000;
    if mapped || translated || compatible || nat64 || is_local_nat64(address) {
        return Some(low);
    }
    // 6to4: the IPv4 address follows the 2002::/16 prefix.
    (address.segments()[0] == 0x2002).then(|| Ipv4Addr::from_bits((bits >> 80) as u32))
}

/// Whether `address` is in the local-use NAT64 prefix `64:ff9b:1::/48`.
fn is_local_nat64(address: Ipv6Addr) -> bool {
    address.to_bits() >> 80 == 0x0064_ff9b_0001
}

/// Every IPv4 address a local-use NAT64 address (`64:ff9b:1::/48`) may
/// stand for: the translator's prefix may be any RFC 6052 length from /48
/// to /96 inside it, and which one is the operator's choice, so each
/// embedding the address fits (its `u` octet, bits 64..72, and the bits
/// after the IPv4 address zero) is judged. Addresses in 0.0.0.0/8, which no
/// translator forwards, are left out.
fn local_nat64_candidates(address: Ipv6Addr) -> Vec<Ipv4Addr> {
    let bits = address.to_bits();
    let at = |shift: u32| (bits >> shift) as u32;
    let u_is_zero = at(56) & 0xff == 0;
    let split = |before_u: u32, after_u: u32| {
        let high = u64::from(at(64)) & ((1 << before_u) - 1);
        let low = u64::from(at(56 - after_u)) & ((1 << after_u) - 1);
        let suffix_is_zero = bits & ((1u128 << (56 - after_u)) - 1) == 0;
        (u_is_zero && suffix_is_zero).then(|| Ipv4Addr::from_bits((high << after_u | low) as u32))
    };
    [
        split(16, 16),                          // /48: 16 bits before `u`, 16 after
        split(8, 24),                           // /56
        split(0, 32),                           // /64
        Some(Ipv4Addr::from_bits(bits as u32)), // /96
    ]
    .into_iter()
    .flatten()
    .filter(|v4| v4.octets()[0] != 0)
    .collect()
}

/// An address as the network will treat it: IPv6 carrying IPv4 is that IPv4.
pub fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => embedded_ipv4(v6).map_or(address, IpAddr::V4),
        v4 => v4,
    }
}

/// The denied class of an IPv4 address, if any.
fn classify_v4(v4: Ipv4Addr) -> Option<Blocked> {
    let [a, b, c, _] = v4.octets();
    if a == 0 {
        Some(Blocked::Unspecified)
    } else if v4.is_loopback() {
        Some(Blocked::Loopback)
    } else if v4.is_link_local() {
        Some(Blocked::LinkLocal)
    } else if v4.is_private() {
        Some(Blocked::Private)
    } else if a == 100 && (64..128).contains(&b) {
        Some(Blocked::Shared)
    } else if v4.is_multicast() {
        Some(Blocked::Multicast)
    } else if a >= 240
        // 192.0.0.0/24 (IETF protocol assignments), the documentation
        // ranges 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, and
        // 198.18.0.0/15 (benchmarking).
        || (a, b, c) == (192, 0, 0)
        || (a, b, c) == (192, 0, 2)
        || (a, b, c) == (198, 51, 100)
        || (a, b, c) == (203, 0, 113)
        || (a == 198 && b & 0xfe == 18)
    {
        Some(Blocked::Reserved)
    } else {
        None
    }
}

/// The denied class an address falls in, if any (the node's own addresses
/// aside, which only an [`EgressPolicy`] knows).
pub fn classify(address: IpAddr) -> Option<Blocked> {
    if let IpAddr::V6(v6) = address
        && is_local_nat64(v6)
    {
        return local_nat64_candidates(v6).into_iter().find_map(classify_v4);
    }
    match canonical(address) {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => {
            let [first, second, ..] = v6.segments();
            if v6.is_unspecified() {
                Some(Blocked::Unspecified)
            } else if v6.is_loopback() {
                Some(Blocked::Loopback)
            } else if first & 0xffc0 == 0xfe80 {
                Some(Blocked::LinkLocal)
            } else if first & 0xfe00 == 0xfc00 {
                Some(Blocked::Private)
            } else if v6.is_multicast() {
                Some(Blocked::Multicast)
            } else if (first, second) == (0x2001, 0x0db8) {
                // 2001:db8::/32, documentation.
                Some(Blocked::Reserved)
            } else {
                None
            }
        }
    }
}

/// An address the egress policy refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{address} is {}, which the node's egress policy denies (an operator can open a range with `wisp up --allow-egress CIDR`)",
    class.describe()
)]
pub struct EgressDenied {
    /// The address, as resolved.
    pub address: IpAddr,
    /// Why it is denied.
    pub class: Blocked,
}

/// The node's egress policy: the denied classes, minus what the operator opened.
#[derive(Debug, Default)]
pub struct EgressPolicy {
    allowed: Vec<Cidr>,
    /// The node's own addresses; replaced as interfaces come and go.
    node: RwLock<Vec<IpAddr>>,
}

impl EgressPolicy {
    /// A policy opening `allowed`, and denying `node` (the node's own
    /// addresses) along with the classes of [`Blocked`].
    pub fn new(allowed: Vec<Cidr>, node: impl IntoIterator<Item = IpAddr>) -> Self {
        let policy = Self {
            allowed,
            node: RwLock::default(),
        };
        policy.set_node(node);
        policy
    }

    /// Replaces the node's own addresses (its interfaces changed).
    pub fn set_node(&self, node: impl IntoIterator<Item = IpAddr>) {
        let mut node: Vec<IpAddr> = node
            .into_iter()
            .map(canonical)
            .filter(|address| !address.is_unspecified())
            .collect();
        node.sort_unstable();
        node.dedup();
        *self.node.write().unwrap_or_else(PoisonError::into_inner) = node;
    }

    /// The node's own addresses, as denied.
    pub fn node(&self) -> Vec<IpAddr> {
        self.node
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The ranges the operator opened.
    pub fn allowed(&self) -> &[Cidr] {
        &self.allowed
    }

    /// Whether a connection to `address` may be made.
    pub fn check(&self, address: IpAddr) -> Result<(), EgressDenied> {
        if self.allowed.iter().any(|range| range.contains(address)) {
            return Ok(());
        }
        let class = classify(address).or_else(|| {
            let node = self.node.read().unwrap_or_else(PoisonError::into_inner);
            let own = match address {
                IpAddr::V6(v6) if is_local_nat64(v6) => local_nat64_candidates(v6)
                    .into_iter()
                    .any(|v4| node.contains(&IpAddr::V4(v4))),
                _ => node.contains(&canonical(address)),
            };
            own.then_some(Blocked::Node)
        });
        match class {
            Some(class) => Err(EgressDenied { address, class }),
            None => Ok(()),
        }
    }
}

/// The address a URL's host names literally, in any form the C resolver
/// would accept: `[::1]`, `::1`, `127.0.0.1`, `2130706433`, `0x7f000001`,
/// `127.1`, `0177.0.0.1`. `None` for a host name.
pub fn literal_address(host: &str) -> Option<IpAddr> {
    let host = host
        .strip_prefix('[')
        .and_then(|host| host.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(v6) = host.parse::<Ipv6Addr>() {
        return Some(IpAddr::V6(v6));
    }
    inet_aton(host).map(IpAddr::V4)
}

/// IPv4 as `inet_aton(3)` reads it: one to four parts, each decimal, octal
/// (a leading `0`) or hexadecimal (`0x`); the last part fills the bits left.
fn inet_aton(text: &str) -> Option<Ipv4Addr> {
    let text = text.strip_suffix('.').unwrap_or(text);
    let parts = text
        .split('.')
        .map(|part| {
            let (digits, radix) =
                if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
                    (hex, 16)
                } else if part.len() > 1 && part.starts_with('0') {
                    (&part[1..], 8)
                } else {
                    (part, 10)
                };
            if digits.is_empty() && radix != 16 {
                return None;
            }
            if digits.is_empty() {
                return Some(0);
            }
            u32::from_str_radix(digits, radix).ok()
        })
        .collect::<Option<Vec<u32>>>()?;
    let (last, leading) = parts.split_last()?;
    if leading.len() > 3 || leading.iter().any(|part| *part > 255) {
        return None;
    }
    let room = 32 - 8 * leading.len() as u32;
    if room < 32 && *last >= 1 << room {
        return None;
    }
    let high = leading
        .iter()
        .enumerate()
        .fold(0u32, |bits, (n, part)| bits | part << (24 - 8 * n as u32));
    Some(Ipv4Addr::from_bits(high | last))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        literal_address(text).unwrap_or_else(|| panic!("{text} is an address"))
    }

    #[test]
    fn every_spelling_of_loopback_and_metadata_is_denied() {
        let policy = EgressPolicy::default();
        for (text, class) in [
            ("127.0.0.1", Blocked::Loopback),
            ("127.255.0.9", Blocked::Loopback),
            ("2130706433", Blocked::Loopback),
            ("0x7f000001", Blocked::Loopback),
            ("0x7F.1", Blocked::Loopback),
            ("127.1", Blocked::Loopback),
            ("0177.0.0.1", Blocked::Loopback),
            ("::1", Blocked::Loopback),
            ("[::1]", Blocked::Loopback),
            ("::ffff:127.0.0.1", Blocked::Loopback),
            ("[::ffff:7f00:1]", Blocked::Loopback),
            ("::127.0.0.1", Blocked::Loopback),
            ("64:ff9b::127.0.0.1", Blocked::Loopback),
            ("169.254.169.254", Blocked::LinkLocal),
            ("2852039166", Blocked::LinkLocal),
            ("::ffff:169.254.169.254", Blocked::LinkLocal),
            ("fe80::1", Blocked::LinkLocal),
            ("10.0.0.1", Blocked::Private),
            ("172.16.5.4", Blocked::Private),
            ("172.31.255.255", Blocked::Private),
            ("192.168.1.1", Blocked::Private),
            ("fd00::1", Blocked::Private),
            ("fc00::1", Blocked::Private),
            ("0.0.0.0", Blocked::Unspecified),
            ("0", Blocked::Unspecified),
            ("::", Blocked::Unspecified),
            ("100.64.0.1", Blocked::Shared),
            ("224.0.0.1", Blocked::Multicast),
            ("ff02::1", Blocked::Multicast),
            ("255.255.255.255", Blocked::Reserved),
        ] {
            let denied = policy.check(ip(text)).expect_err(text);
            assert_eq!(denied.class, class, "{text}");
        }
    }

    #[test]
    fn public_addresses_pass_and_neighbours_of_denied_ranges_too() {
        let policy = EgressPolicy::default();
        for text in [
            "93.184.216.34",
            "8.8.8.8",
            "172.32.0.1",
            "172.15.255.255",
            "100.128.0.1",
            "169.255.0.1",
            "11.0.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert_eq!(policy.check(ip(text)), Ok(()), "{text}");
        }
    }

    #[test]
    fn the_operator_opens_ranges_and_the_node_is_denied() {
        let node: IpAddr = "93.184.216.34".parse().unwrap();
        let policy = EgressPolicy::new(
            vec!["127.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()],
            [node],
        );
        assert_eq!(policy.check(ip("127.0.0.1")), Ok(()));
        assert_eq!(policy.check(ip("::ffff:127.0.0.1")), Ok(()));
        assert_eq!(policy.check(ip("2130706433")), Ok(()));
        assert_eq!(policy.check(ip("fd12::1")), Ok(()));
        assert_eq!(
            policy.check(ip("169.254.169.254")).unwrap_err().class,
            Blocked::LinkLocal
        );
        assert_eq!(
            policy.check(ip("::1")).unwrap_err().class,
            Blocked::Loopback
        );
        assert_eq!(policy.check(node).unwrap_err().class, Blocked::Node);
        assert_eq!(
            policy.check(ip("::ffff:93.184.216.34")).unwrap_err().class,
            Blocked::Node
        );
        let message = policy.check(node).unwrap_err().to_string();
        assert!(message.contains("--allow-egress"), "{message}");
    }

    #[test]
    fn reserved_ranges_and_ipv4_carried_by_transition_prefixes_are_denied() {
        let policy = EgressPolicy::default();
        for (text, class) in [
            ("198.18.0.1", Blocked::Reserved),
            ("198.19.255.255", Blocked::Reserved),
            ("192.0.0.8", Blocked::Reserved),
            ("192.0.2.2", Blocked::Reserved),
            ("198.51.100.7", Blocked::Reserved),
            ("203.0.113.9", Blocked::Reserved),
            ("2001:db8::1", Blocked::Reserved),
            // 6to4 carries the IPv4 address after 2002::/16.
            ("2002:7f00:1::", Blocked::Loopback),
            ("2002:a9fe:a9fe::1", Blocked::LinkLocal),
            ("2002:c0a8:101::", Blocked::Private),
            ("2002:c000:202::", Blocked::Reserved),
            // Local-use NAT64, whatever prefix length the translator uses.
            ("64:ff9b:1::127.0.0.1", Blocked::Loopback),
            ("64:ff9b:1::a9fe:a9fe", Blocked::LinkLocal),
            ("64:ff9b:1:7f00:0:100::", Blocked::Loopback), // /48
            ("64:ff9b:1:a9:fe:a9fe::", Blocked::LinkLocal), // /56
            ("64:ff9b:1:0:a:0:100::", Blocked::Private),   // /64
            // Mapped and translated IPv4.
            ("::ffff:10.0.0.1", Blocked::Private),
            ("::ffff:0:127.0.0.1", Blocked::Loopback),
            ("::ffff:0:169.254.169.254", Blocked::LinkLocal),
        ] {
            let denied = policy.check(ip(text)).expect_err(text);
            assert_eq!(denied.class, class, "{text}");
        }
        for text in [
            "198.17.255.255",
            "198.20.0.1",
            "192.0.1.1",
            "192.0.3.1",
            "198.51.101.1",
            "203.0.114.1",
            "2002:808:808::1",
            "64:ff9b:1::8.8.8.8",
        ] {
            assert_eq!(policy.check(ip(text)), Ok(()), "{text}");
        }
    }

    #[test]
    fn the_nodes_addresses_can_be_replaced_as_interfaces_change() {
        let policy = EgressPolicy::new(Vec::new(), []);
        let later = ip("93.184.216.34");
        assert_eq!(policy.check(later), Ok(()));
        policy.set_node([later, ip("::")]);
        assert_eq!(policy.node(), vec![later]);
        assert_eq!(policy.check(later).unwrap_err().class, Blocked::Node);
        assert_eq!(
            policy.check(ip("2002:5db8:d822::")).unwrap_err().class,
            Blocked::Node
        );
        assert_eq!(
            policy
                .check(ip("64:ff9b:1:5d:b8:d822::"))
                .unwrap_err()
                .class,
            Blocked::Node
        );
        policy.set_node([]);
        assert_eq!(policy.check(later), Ok(()));
    }

    #[test]
    fn ranges_parse_and_refuse_nonsense() {
        let range: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(range.contains(ip("10.255.1.2")));
        assert!(!range.contains(ip("11.0.0.0")));
        assert_eq!(range.to_string(), "10.0.0.0/8");
        let one: Cidr = "192.0.2.1".parse().unwrap();
        assert!(one.contains(ip("192.0.2.1")) && !one.contains(ip("192.0.2.2")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")) && !all.contains(ip("2001:db8::1")));
        for bad in ["10.0.0.0/33", "::/129", "example.com/8", "10.0.0/8", ""] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn host_names_are_not_literals() {
        for host in [
            "localhost",
            "example.com",
            "1.2.3.4.5",
            "256.1.1.1",
            "0x1g",
            "1..1",
        ] {
            assert_eq!(literal_address(host), None, "{host}");
        }
    }
}
