//! Wire headers as byte arrays only: alignment 1 and every bit pattern valid, so a bounds-checked
//! pointer into the packet may be viewed as one (`sys::header_mut`). Fields are read as
//! integers or byte arrays, never as Rust enums.

#[repr(C)]
pub struct Eth {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ethertype: [u8; 2],
}
pub const ETH_LEN: usize = 14;
pub const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
pub const ETHERTYPE_IPV6: [u8; 2] = [0x86, 0xdd];

#[repr(C)]
pub struct Ipv4 {
    pub vihl: u8,
    pub tos: u8,
    pub tot_len: [u8; 2],
    pub id: [u8; 2],
    pub frags: [u8; 2],
    pub ttl: u8,
    pub proto: u8,
    pub check: [u8; 2],
    pub src: [u8; 4],
    pub dst: [u8; 4],
}
pub const IPV4_MIN_LEN: usize = 20;
/// In `frags[0]`: more-fragments flag and the top 5 bits of the offset.
pub const IPV4_MF: u8 = 0x20;
pub const IPV4_OFFSET_HI_MASK: u8 = 0x1f;

#[repr(C)]
pub struct Ipv6 {
    /// Version (high nibble), traffic class and flow label.
    pub vtcfl: [u8; 4],
    pub payload_len: [u8; 2],
    pub next: u8,
    pub hop_limit: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}
pub const IPV6_LEN: usize = 40;

/// Is next-header value `n` an IPv6 extension header (RFC 8200 and the IANA registry)?
/// Hop-by-hop, routing, destination options, authentication, mobility, HIP, shim6 and the two
/// experimental values. The fragment header is apart: [`IPV6_FRAGMENT`].
#[inline(always)]
pub const fn is_ipv6_ext_header(n: u8) -> bool {
    matches!(n, 0 | 43 | 60 | 51 | 135 | 139 | 140 | 253 | 254)
}
pub const IPV6_FRAGMENT: u8 = 44;

#[repr(C)]
pub struct Tcp {
    pub src: [u8; 2],
    pub dst: [u8; 2],
    pub seq: [u8; 4],
    pub ack: [u8; 4],
    /// Data offset (high nibble) and reserved bits.
    pub doff: u8,
    pub flags: u8,
    pub window: [u8; 2],
    pub check: [u8; 2],
    pub urg: [u8; 2],
}
pub const TCP_MIN_LEN: usize = 20;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

#[repr(C)]
pub struct Udp {
    pub src: [u8; 2],
    pub dst: [u8; 2],
    pub len: [u8; 2],
    pub check: [u8; 2],
}
pub const UDP_LEN: usize = 8;

/// The first 8 bytes of an ICMP message ("destination unreachable" layout).
#[repr(C)]
pub struct Icmp {
    pub kind: u8,
    pub code: u8,
    pub check: [u8; 2],
    pub unused: [u8; 2],
    /// Next-hop MTU of a "fragmentation needed" message.
    pub mtu: [u8; 2],
}
pub const ICMP_LEN: usize = 8;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_FRAG_NEEDED: u8 = 4;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP6_DEST_UNREACH: u8 = 1;
pub const ICMP6_PACKET_TOO_BIG: u8 = 2;
pub const ICMP6_TIME_EXCEEDED: u8 = 3;
pub const ICMP6_ECHO_REQUEST: u8 = 128;
pub const ICMP6_ECHO_REPLY: u8 = 129;
/// Router solicitation .. redirect: neighbour discovery, always the kernel's.
pub const ICMP6_ND_FIRST: u8 = 133;
pub const ICMP6_ND_LAST: u8 = 137;
/// In `frags[0]`: don't fragment.
pub const IPV4_DF: u8 = 0x40;

/// One 16-bit word of the packet (checksums over a variable length).
#[repr(C)]
pub struct Word(pub [u8; 2]);

/// `N` 16-bit words of the packet (checksums over a fixed length, one bounds check).
#[repr(C)]
pub struct Words<const N: usize>(pub [[u8; 2]; N]);

const _: () = assert!(core::mem::size_of::<Eth>() == ETH_LEN && core::mem::align_of::<Eth>() == 1);
const _: () =
    assert!(core::mem::size_of::<Ipv4>() == IPV4_MIN_LEN && core::mem::align_of::<Ipv4>() == 1);
const _: () =
    assert!(core::mem::size_of::<Ipv6>() == IPV6_LEN && core::mem::align_of::<Ipv6>() == 1);
const _: () =
    assert!(core::mem::size_of::<Tcp>() == TCP_MIN_LEN && core::mem::align_of::<Tcp>() == 1);
const _: () = assert!(core::mem::size_of::<Udp>() == UDP_LEN && core::mem::align_of::<Udp>() == 1);
const _: () =
    assert!(core::mem::size_of::<Icmp>() == ICMP_LEN && core::mem::align_of::<Icmp>() == 1);
const _: () = assert!(core::mem::size_of::<Word>() == 2 && core::mem::align_of::<Word>() == 1);
