//! eBPF objects built from `ebpf/*.c` (embedded at compile time), the Rust mirrors of their map
//! structs, and loading/attaching them with aya.

use std::collections::BTreeMap;
use std::mem::size_of;

use aya::maps::{MapError, PerCpuArray};
use aya::programs::tc::{SchedClassifierLinkId, TcAttachOptions};
use aya::programs::{LinkOrder, ProgramError, SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfError, EbpfLoader, Pod};

/// `ebpf/tc_counters.c`: per-CPU packet/byte counters by traffic class on tc.
pub static TC_COUNTERS_OBJ: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tc_counters.o"));

/// Why loading, attaching or reading a program failed.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error("loading eBPF object {object}: {source}")]
    Load { object: &'static str, source: EbpfError },
    #[error("eBPF object {object} has no {what} named {name}")]
    Missing { object: &'static str, what: &'static str, name: &'static str },
    #[error("program {program}: {source}")]
    Program { program: &'static str, source: ProgramError },
    #[error("map {map}: {source}")]
    Map { map: &'static str, source: MapError },
}

/// Direction of a tc attachment, as seen by the interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Ingress,
    Egress,
}

impl From<Direction> for TcAttachType {
    fn from(d: Direction) -> Self {
        match d {
            Direction::Ingress => TcAttachType::Ingress,
            Direction::Egress => TcAttachType::Egress,
        }
    }
}

/// Traffic classes of `enum skiff_class` in `ebpf/include/skiff/counters.h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TrafficClass {
    Other = 0,
    Arp = 1,
    Ipv4Tcp = 2,
    Ipv4Udp = 3,
    Ipv4Icmp = 4,
    Ipv4Other = 5,
    Ipv6 = 6,
}

impl TrafficClass {
    pub const ALL: [TrafficClass; 7] = [
        TrafficClass::Other,
        TrafficClass::Arp,
        TrafficClass::Ipv4Tcp,
        TrafficClass::Ipv4Udp,
        TrafficClass::Ipv4Icmp,
        TrafficClass::Ipv4Other,
        TrafficClass::Ipv6,
    ];
}

/// Mirror of `struct skiff_counter`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PacketCounter {
    pub packets: u64,
    /// Whole frames as tc sees them, L2 header included.
    pub bytes: u64,
}
const _: () = assert!(size_of::<PacketCounter>() == 16, "must match struct skiff_counter");

// SAFETY: `PacketCounter` is `repr(C)`, made only of integers, has no padding (asserted size 16
// = 2 × u64), and every bit pattern is a valid value.
#[expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait for map values")]
unsafe impl Pod for PacketCounter {}

/// `count_packets` from `tc_counters.c`, attached with tcx to one interface.
///
/// Dropping it detaches the program (the link is owned by a file descriptor in `ebpf`).
#[derive(Debug)]
pub struct TcCounters {
    ebpf: Ebpf,
    _link: SchedClassifierLinkId,
}

const COUNTERS_OBJECT: &str = "tc_counters.o";
const COUNTERS_PROGRAM: &str = "count_packets";
const COUNTERS_MAP: &str = "skiff_counters";

impl TcCounters {
    /// Loads the program and attaches it first in the tcx chain of `iface`.
    ///
    /// `iface` is resolved in the calling thread's network namespace: call this inside
    /// [`super::netns::NetNs::run`] to attach to an interface of another namespace.
    pub fn attach(iface: &str, direction: Direction) -> Result<Self, BpfError> {
        let mut ebpf = EbpfLoader::new()
            .load(TC_COUNTERS_OBJ)
            .map_err(|source| BpfError::Load { object: COUNTERS_OBJECT, source })?;
        let program: &mut SchedClassifier = ebpf
            .program_mut(COUNTERS_PROGRAM)
            .ok_or(BpfError::Missing {
                object: COUNTERS_OBJECT,
                what: "program",
                name: COUNTERS_PROGRAM,
            })?
            .try_into()
            .map_err(|source| BpfError::Program { program: COUNTERS_PROGRAM, source })?;
        let program_err = |source| BpfError::Program { program: COUNTERS_PROGRAM, source };
        program.load().map_err(program_err)?;
        let link = program
            .attach_with_options(
                iface,
                direction.into(),
                TcAttachOptions::TcxOrder(LinkOrder::first()),
            )
            .map_err(program_err)?;
        Ok(TcCounters { ebpf, _link: link })
    }

    /// Current totals per class, summed over CPUs.
    pub fn read(&self) -> Result<BTreeMap<TrafficClass, PacketCounter>, BpfError> {
        let map_err = |source| BpfError::Map { map: COUNTERS_MAP, source };
        let map = self.ebpf.map(COUNTERS_MAP).ok_or(BpfError::Missing {
            object: COUNTERS_OBJECT,
            what: "map",
            name: COUNTERS_MAP,
        })?;
        let counters: PerCpuArray<_, PacketCounter> =
            PerCpuArray::try_from(map).map_err(map_err)?;
        let mut totals = BTreeMap::new();
        for class in TrafficClass::ALL {
            let per_cpu = counters.get(&(class as u32), 0).map_err(map_err)?;
            let sum = per_cpu.iter().fold(PacketCounter::default(), |acc, c| PacketCounter {
                packets: acc.packets + c.packets,
                bytes: acc.bytes + c.bytes,
            });
            totals.insert(class, sum);
        }
        Ok(totals)
    }
}
