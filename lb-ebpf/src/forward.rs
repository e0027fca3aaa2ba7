//! Stage 6: find the next hop (the kernel's FIB and neighbour tables, cached for up to a
//! second per target, and per client for replies) and send the packet toward it.
use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_FWD_DISABLED, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS, xdp_action,
    },
    programs::XdpContext,
};
use lb_common::{Stat, hash::reply_hop_slot, limits::NEXT_HOP_TTL_NS};

use crate::{
    family::Family,
    hdr::Eth,
    maps::{NEXT_HOPS, NextHop, REPLY_HOPS, ReplyHop},
    parse::Verdict,
    sys::{self, header_mut},
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Where a packet goes next: out of `egress`, with these MACs.
#[derive(Clone, Copy)]
pub struct Hop {
    pub ingress: u32,
    pub egress: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
}

/// Why there is no hop to send to.
pub enum NoHop {
    /// The neighbour is not resolved yet: the kernel must forward this packet (and resolve).
    NoNeigh,
    /// Longer than the route's MTU (the MTU is given).
    FragNeeded { mtu: u16 },
    /// Counted and final.
    Final(Verdict),
}

pub use aya_ebpf::bindings::bpf_fib_lookup as FibParams;

/// What the FIB is asked, filled in only on a next-hop cache miss. (A trait rather than a
/// closure: each impl is forced inline, which LLVM does not always do for closures, and an
/// out-of-line call adds its stack to the program's.)
pub trait Ask {
    fn ask(self, ctx: &XdpContext, p: &mut FibParams);
}

/// The packet's own IP header, towards `via` if given (DSR: the target).
pub struct Header<F: Family> {
    pub via: Option<F::Addr>,
}

impl<F: Family> Ask for Header<F> {
    #[inline(always)]
    fn ask(self, ctx: &XdpContext, p: &mut FibParams) {
        F::ask(ctx, self.via, p);
    }
}

/// An IPv4 packet yet to be built (the outer header of a tunnel).
pub struct Outer4 {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub proto: u8,
    pub tos: u8,
}

impl Ask for Outer4 {
    #[inline(always)]
    fn ask(self, _: &XdpContext, p: &mut FibParams) {
        ask_v4(p, self.src, self.dst, self.proto, self.tos);
    }
}

/// An IPv6 packet yet to be built (the outer header of a tunnel to an IPv6 target).
pub struct Outer6<'a> {
    pub src: &'a [u8; 16],
    pub dst: &'a [u8; 16],
    pub proto: u8,
}

impl Ask for Outer6<'_> {
    #[inline(always)]
    fn ask(self, _: &XdpContext, p: &mut FibParams) {
        ask_v6(p, self.src, self.dst, self.proto);
    }
}

/// Ask the FIB about IPv4 `src -> dst`.
#[inline(always)]
pub fn ask_v4(p: &mut FibParams, src: [u8; 4], dst: [u8; 4], proto: u8, tos: u8) {
    p.family = AF_INET;
    p.l4_protocol = proto;
    p.__bindgen_anon_2.tos = tos;
    p.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(src);
    p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(dst);
}

/// Ask the FIB about IPv6 `src -> dst`.
#[inline(always)]
pub fn ask_v6(p: &mut FibParams, src: &[u8; 16], dst: &[u8; 16], proto: u8) {
    p.family = AF_INET6;
    p.l4_protocol = proto;
    p.__bindgen_anon_3.ipv6_src = words(src);
    p.__bindgen_anon_4.ipv6_dst = words(dst);
}

/// A 16-byte address as four native-order words (as the FIB and `REPLY_HOPS` hold it).
#[inline(always)]
fn words(a: &[u8; 16]) -> [u32; 4] {
    let w = |i: usize| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
    [w(0), w(4), w(8), w(12)]
}

/// Where a packet's next hop is cached.
#[derive(Clone, Copy)]
pub enum Cache {
    /// Toward target `id`: its slot of `NEXT_HOPS`.
    Target(u32),
    /// Toward a client (a reply): the slot of `REPLY_HOPS` its address and the ingress hash
    /// to (`lb_common::hash::reply_hop_slot`), whose entry counts only if it is this client's.
    Client { addr: [u32; 4], family: u8 },
}

impl Cache {
    /// The cache of replies to the client at `addr` (an address slot, see `Family::to_slot`).
    #[inline(always)]
    pub fn client<F: Family>(addr: F::Addr) -> Self {
        Cache::Client {
            addr: words(&F::to_slot(addr)),
            family: F::CODE,
        }
    }

    /// The cached hop; one that expired long ago (`NextHop::NONE`) if there is none. (Not an
    /// `Option`: LLVM may spill the fields of a `None`, uninitialised, which the verifier
    /// refuses.)
    #[inline(always)]
    fn read(self, ingress: u32) -> NextHop {
        match self {
            Cache::Target(id) => sys::with_slot(&NEXT_HOPS, id, |nh| *nh),
            Cache::Client { addr, family } => {
                sys::with_slot(&REPLY_HOPS, reply_hop_slot(&addr, ingress), |e| {
                    // Word by word: no memcmp in BPF.
                    let same = e.family == family
                        && e.addr[0] == addr[0]
                        && e.addr[1] == addr[1]
                        && e.addr[2] == addr[2]
                        && e.addr[3] == addr[3];
                    if same { e.hop } else { NextHop::NONE }
                })
            }
        }
        .unwrap_or(NextHop::NONE)
    }

    #[inline(always)]
    fn write(self, hop: NextHop) {
        let ingress = hop.ingress;
        match self {
            Cache::Target(id) => {
                sys::with_slot(&NEXT_HOPS, id, |slot| *slot = hop);
            }
            Cache::Client { addr, family } => {
                sys::with_slot(&REPLY_HOPS, reply_hop_slot(&addr, ingress), |slot| {
                    *slot = ReplyHop {
                        hop,
                        addr,
                        family,
                        _pad: [0; 7],
                    }
                });
            }
        }
    }
}

/// The next hop for a packet of `tot_len` bytes (its IP length, checked against the MTU).
/// `cache`: where its next hop may be cached (`None`: always a FIB lookup). `ask` fills in the
/// question, only on a cache miss.
#[inline(always)]
pub fn next_hop(
    ctx: &XdpContext,
    cache: Option<Cache>,
    tot_len: u16,
    ask: impl Ask,
) -> Result<Hop, NoHop> {
    let ingress = ctx.ingress_ifindex() as u32;
    // Only the cache needs the time.
    let now = if cache.is_some() { sys::coarse_ns() } else { 0 };
    let nh = cache.map_or(NextHop::NONE, |c| c.read(ingress));
    if nh.expires_ns > now && nh.ingress == ingress && tot_len <= nh.max_len {
        return Ok(Hop {
            ingress,
            egress: nh.egress,
            smac: nh.smac,
            dmac: nh.dmac,
        });
    }
    let mut p = sys::fib_params();
    ask.ask(ctx, &mut p);
    p.__bindgen_anon_1.tot_len = tot_len;
    p.ifindex = ingress;
    match sys::fib_lookup(ctx, &mut p) {
        BPF_FIB_LKUP_RET_SUCCESS => {}
        BPF_FIB_LKUP_RET_NO_NEIGH => return Err(NoHop::NoNeigh),
        BPF_FIB_LKUP_RET_FRAG_NEEDED => {
            return Err(NoHop::FragNeeded {
                mtu: sys::fib_mtu(&p),
            });
        }
        BPF_FIB_LKUP_RET_FWD_DISABLED => {
            return Err(NoHop::Final(Verdict::drop(Stat::DropFwdDisabled)));
        }
        _ => return Err(NoHop::Final(Verdict::drop(Stat::DropNoRoute))),
    }
    if let Some(c) = cache {
        // The same route still: keep its expiry and the largest length it passed.
        let fresh = nh.expires_ns > now && nh.ingress == ingress && nh.egress == p.ifindex;
        c.write(NextHop {
            expires_ns: if fresh {
                nh.expires_ns
            } else {
                now + NEXT_HOP_TTL_NS
            },
            ingress,
            egress: p.ifindex,
            max_len: if fresh {
                nh.max_len.max(tot_len)
            } else {
                tot_len
            },
            smac: p.smac,
            dmac: p.dmac,
            _pad: [0; 2],
        });
    }
    Ok(Hop {
        ingress,
        egress: p.ifindex,
        smac: p.smac,
        dmac: p.dmac,
    })
}

/// Send a packet whose IP header is already what goes on the wire (NAT, DSR, replies): the
/// FIB is asked for the header's own destination, unless `via` names another (DSR: the target,
/// while the header keeps the VIP).
#[inline(always)]
pub fn forward<F: Family>(ctx: &XdpContext, cache: Option<Cache>, via: Option<F::Addr>) -> Verdict {
    let Some(len) = F::ip_len(ctx) else {
        return Verdict::drop(Stat::DropNoRoute);
    };
    match next_hop(ctx, cache, len, Header::<F> { via }) {
        Ok(hop) => send(ctx, &hop),
        Err(NoHop::NoNeigh) => Verdict::pass(Stat::PassNoNeigh),
        Err(NoHop::FragNeeded { .. }) => Verdict::pass(Stat::PassFragNeeded),
        Err(NoHop::Final(v)) => v,
    }
}

/// Write the hop's MACs and send: back out of the ingress (`XDP_TX`) or redirected.
#[inline(always)]
pub fn send(ctx: &XdpContext, hop: &Hop) -> Verdict {
    let Some(eth) = header_mut::<Eth>(ctx, 0) else {
        return Verdict::drop(Stat::DropNoRoute);
    };
    eth.dst = hop.dmac;
    eth.src = hop.smac;
    if hop.egress == hop.ingress {
        return Verdict {
            action: xdp_action::XDP_TX,
            stat: Stat::FwdTx,
        };
    }
    Verdict {
        action: sys::redirect(hop.egress),
        stat: Stat::FwdRedirect,
    }
}
