//! The socket load balancer (`ebpf/sock_lb.c`): Rust mirrors of the map structs in
//! `ebpf/include/skiff/lb.h`, loading the programs with maps pinned under a versioned directory,
//! attaching them to a cgroup2 directory with pinned links, and typed map access.
//!
//! Layout changes bump [`LB_LAYOUT`]: aya reuses a pinned map without checking its key or value
//! size, so a new layout must live in a new directory (`<pin root>/v<LB_LAYOUT>`).

use std::fs::{self, File};
use std::io;
use std::mem::size_of;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use aya::maps::{HashMap, MapData, MapError, PerCpuArray, RingBuf};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{CgroupAttachMode, CgroupSock, CgroupSockAddr};
use aya::{Ebpf, EbpfLoader, Pod};

use super::bpf::BpfError;

/// `ebpf/sock_lb.c`: connect4/sendmsg4/recvmsg4/getpeername4.
pub static SOCK_LB_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sock_lb.o"));

/// `SKIFF_LB_LAYOUT` in `lb.h`: the version directory the maps are pinned in.
pub const LB_LAYOUT: u32 = 2;

const OBJECT: &str = "sock_lb.o";
/// Programs of `sock_lb.c`, by C function name.
pub const SOCK_PROGRAMS: [&str; 4] =
    ["sock4_connect", "sock4_sendmsg", "sock4_recvmsg", "sock4_getpeername"];
/// The `cgroup/post_bind4` program of `sock_lb.c` (a `CgroupSock`, not a `CgroupSockAddr`).
pub const BIND_PROGRAM: &str = "sock4_post_bind";

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
/// `LB4_SCOPE_INTERNAL`: the node-local twin of an eTP Local NodePort frontend (all endpoints).
pub const SCOPE_INTERNAL: u8 = 1;
pub const SVC_FLAG_AFFINITY: u16 = 1;
pub const SVC_FLAG_MAGLEV: u16 = 2;
/// `LB4_MAGLEV_M`: entries of a Maglev row.
pub const MAGLEV_M: usize = 1021;
/// Mirror of `struct lb4_maglev_row`: backend ids.
pub type MaglevRow = [u32; MAGLEV_M];
pub const BACKEND_ACTIVE: u8 = 0;
pub const BACKEND_TERMINATING: u8 = 1;
/// `LB4_BACKEND_F_REMOTE`: the backend is not on this node (`NodePort` flows to it get source NAT).
pub const BACKEND_F_REMOTE: u8 = 1;

/// Mirror of `struct lb4_svc_key`. Address and port in network byte order.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SvcKey {
    pub vip: u32,
    pub port: u16,
    pub proto: u8,
    pub scope: u8,
    pub slot: u16,
    pub pad: u16,
}
const _: () = assert!(size_of::<SvcKey>() == 12, "must match struct lb4_svc_key");

impl SvcKey {
    pub fn new(vip: Ipv4Addr, port: u16, proto: u8, slot: u16) -> Self {
        SvcKey { vip: u32::from(vip).to_be(), port: port.to_be(), proto, scope: 0, slot, pad: 0 }
    }
    pub fn vip(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from_be(self.vip))
    }
    pub fn host_port(&self) -> u16 {
        u16::from_be(self.port)
    }
}

/// Mirror of `struct lb4_svc_val`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SvcVal {
    /// Slot 0: service id; slot i: backend id.
    pub id: u32,
    pub count: u16,
    pub flags: u16,
    pub affinity_s: u32,
}
const _: () = assert!(size_of::<SvcVal>() == 12, "must match struct lb4_svc_val");

/// Mirror of `struct lb4_backend`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct BackendVal {
    pub ip: u32,
    pub port: u16,
    pub proto: u8,
    pub state: u8,
    /// `BACKEND_F_*` bits.
    pub flags: u8,
    pub pad: [u8; 3],
}
const _: () = assert!(size_of::<BackendVal>() == 12, "must match struct lb4_backend");

impl BackendVal {
    pub fn new(ip: Ipv4Addr, port: u16, proto: u8, state: u8, flags: u8) -> Self {
        BackendVal {
            ip: u32::from(ip).to_be(),
            port: port.to_be(),
            proto,
            state,
            flags,
            pad: [0; 3],
        }
    }
    pub fn addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from_be(self.ip))
    }
    pub fn host_port(&self) -> u16 {
        u16::from_be(self.port)
    }
}

/// Mirror of `struct lb4_revnat`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RevNat {
    pub vip: u32,
    pub port: u16,
    pub pad: u16,
}
const _: () = assert!(size_of::<RevNat>() == 8, "must match struct lb4_revnat");

/// Mirror of `struct lb4_sk_revkey`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SkRevKey {
    pub cookie: u64,
    pub ip: u32,
    pub port: u16,
    pub pad: u16,
}
const _: () = assert!(size_of::<SkRevKey>() == 16, "must match struct lb4_sk_revkey");

/// Mirror of `struct lb4_sk_revval`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SkRevVal {
    pub vip: u32,
    pub port: u16,
    pub pad: u16,
    pub svc_id: u32,
}
const _: () = assert!(size_of::<SkRevVal>() == 12, "must match struct lb4_sk_revval");

/// Mirror of `struct lb4_aff_key`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AffKey {
    pub netns_cookie: u64,
    pub svc_id: u32,
    pub pad: u32,
}
const _: () = assert!(size_of::<AffKey>() == 16, "must match struct lb4_aff_key");

/// Mirror of `struct lb4_aff_val`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AffVal {
    pub last_ns: u64,
    pub backend_id: u32,
    pub slot: u16,
    pub pad: u16,
}
const _: () = assert!(size_of::<AffVal>() == 16, "must match struct lb4_aff_val");

/// Mirror of `struct lb_event`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LbEvent {
    pub ts_ns: u64,
    pub kind: u32,
    pub svc_id: u32,
    pub vip: u32,
    pub vport: u16,
    pub proto: u8,
    pub pad: u8,
    pub err: i32,
    pub pad2: u32,
}
const _: () = assert!(size_of::<LbEvent>() == 32, "must match struct lb_event");

impl LbEvent {
    /// Decodes one ring-buffer record; `None` if it has the wrong size.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != size_of::<LbEvent>() {
            return None;
        }
        let u32_at =
            |o: usize| u32::from_ne_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&bytes[0..8]);
        Some(LbEvent {
            ts_ns: u64::from_ne_bytes(ts),
            kind: u32_at(8),
            svc_id: u32_at(12),
            vip: u32_at(16),
            vport: u16::from_ne_bytes([bytes[20], bytes[21]]),
            proto: bytes[22],
            pad: 0,
            err: i32::from_ne_bytes([bytes[24], bytes[25], bytes[26], bytes[27]]),
            pad2: 0,
        })
    }
}

// SAFETY (all impls below): each type is `repr(C)`, made only of integers, has no implicit
// padding (sizes asserted above equal the sum of the fields), and every bit pattern is valid.
#[expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait for map keys/values")]
unsafe impl Pod for SvcKey {}
#[expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait for map keys/values")]
unsafe impl Pod for SvcVal {}
#[expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait for map keys/values")]
unsafe impl Pod for BackendVal {}
#[expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait for map keys/values")]
unsafe impl Pod for RevNat {}
#[expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait for map keys/values")]
unsafe impl Pod for SkRevKey {}
#[expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait for map keys/values")]
unsafe impl Pod for SkRevVal {}
#[expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait for map keys/values")]
unsafe impl Pod for AffKey {}
#[expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait for map keys/values")]
unsafe impl Pod for AffVal {}

/// Counters of `enum lb_stat`, in index order.
pub const LB_STATS: [&str; 11] = [
    "connect_translated",
    "sendmsg_translated",
    "refused_no_endpoints",
    "reverse_translated",
    "backend_missing",
    "affinity_hits",
    "sock_revnat_update_failed",
    "nodeport_new_flows",
    "nodeport_snat",
    "nodeport_snat_no_port",
    "nodeport_bind_refused",
];

/// Map sizes (`max_entries`), from the agent's flags. Pinned maps keep the size they were
/// created with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LbMapSizes {
    pub services: u32,
    pub backends: u32,
    pub revnat: u32,
    pub sock_revnat: u32,
    pub affinity: u32,
}

impl Default for LbMapSizes {
    fn default() -> Self {
        LbMapSizes {
            services: 65_536,
            backends: 65_536,
            revnat: 65_536,
            sock_revnat: 262_144,
            affinity: 65_536,
        }
    }
}

/// Why the socket LB could not be set up or updated.
#[derive(Debug, thiserror::Error)]
pub enum LbError {
    #[error(transparent)]
    Bpf(#[from] BpfError),
    #[error("{op} {}: {source}", path.display())]
    Io { op: &'static str, path: PathBuf, source: io::Error },
    #[error("map {map}: {source}")]
    Map { map: &'static str, source: MapError },
    #[error("map {map} is full ({source})")]
    MapFull { map: &'static str, source: MapError },
    #[error("not written: {0}")]
    Dependency(String),
    #[error("link {}: {message}", path.display())]
    Link { path: PathBuf, message: String },
}

fn map_err(map: &'static str) -> impl Fn(MapError) -> LbError {
    move |source| match &source {
        MapError::SyscallError(e) if e.io_error.raw_os_error() == Some(libc_e2big()) => {
            LbError::MapFull { map, source }
        }
        _ => LbError::Map { map, source },
    }
}

/// E2BIG: what the kernel answers when a hash map has no room for a new key.
const fn libc_e2big() -> i32 {
    7
}

/// The loaded socket LB: programs, typed maps, and (once attached) its cgroup links.
pub struct SockLb {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    svc: HashMap<MapData, SvcKey, SvcVal>,
    backends: HashMap<MapData, u32, BackendVal>,
    revnat: HashMap<MapData, u32, RevNat>,
    sock_revnat: HashMap<MapData, SkRevKey, SkRevVal>,
    affinity: HashMap<MapData, AffKey, AffVal>,
    maglev: HashMap<MapData, u32, MaglevRow>,
    node_addrs: HashMap<MapData, u32, u8>,
    stats: PerCpuArray<MapData, u64>,
    events: Option<RingBuf<MapData>>,
}

impl std::fmt::Debug for SockLb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SockLb").field("pin_dir", &self.pin_dir).finish_non_exhaustive()
    }
}

fn take<T: TryFrom<aya::maps::Map, Error = MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<T, LbError> {
    let map = ebpf.take_map(name).ok_or(BpfError::Missing { object: OBJECT, what: "map", name })?;
    T::try_from(map).map_err(|source| LbError::Map { map: name, source })
}

impl SockLb {
    /// Loads the programs. Maps are pinned under `<pin_root>/v<LB_LAYOUT>`; maps already pinned
    /// there (by an earlier agent) are adopted with their contents.
    pub fn load(pin_root: &Path, sizes: LbMapSizes) -> Result<Self, LbError> {
        let pin_dir = pin_root.join(format!("v{LB_LAYOUT}"));
        if let Some(parent) = pin_root.parent().filter(|p| !is_bpffs(pin_root) && !is_bpffs(p)) {
            // The usual root is /sys/fs/bpf/<...>: mount bpffs there if the host has not.
            if parent.starts_with("/sys/fs/bpf") {
                ensure_bpffs(Path::new("/sys/fs/bpf"))?;
            }
        }
        fs::create_dir_all(&pin_dir).map_err(|source| LbError::Io {
            op: "create pin directory",
            path: pin_dir.clone(),
            source,
        })?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&pin_dir)
            .map_max_entries("svc4", sizes.services)
            .map_max_entries("be4", sizes.backends)
            .map_max_entries("revnat4", sizes.revnat)
            .map_max_entries("sock_revnat4", sizes.sock_revnat)
            .map_max_entries("affinity4", sizes.affinity)
            .load(SOCK_LB_OBJ)
            .map_err(|source| BpfError::Load { object: OBJECT, source })?;
        for name in SOCK_PROGRAMS {
            let program: &mut CgroupSockAddr = ebpf
                .program_mut(name)
                .ok_or(BpfError::Missing { object: OBJECT, what: "program", name })?
                .try_into()
                .map_err(|source| BpfError::Program { program: name, source })?;
            program.load().map_err(|source| BpfError::Program { program: name, source })?;
        }
        let bind: &mut CgroupSock = ebpf
            .program_mut(BIND_PROGRAM)
            .ok_or(BpfError::Missing { object: OBJECT, what: "program", name: BIND_PROGRAM })?
            .try_into()
            .map_err(|source| BpfError::Program { program: BIND_PROGRAM, source })?;
        bind.load().map_err(|source| BpfError::Program { program: BIND_PROGRAM, source })?;
        let svc = take(&mut ebpf, "svc4")?;
        let backends = take(&mut ebpf, "be4")?;
        let revnat = take(&mut ebpf, "revnat4")?;
        let sock_revnat = take(&mut ebpf, "sock_revnat4")?;
        let affinity = take(&mut ebpf, "affinity4")?;
        let maglev = take(&mut ebpf, "maglev4")?;
        let node_addrs = take(&mut ebpf, "node_addrs4")?;
        let stats = take(&mut ebpf, "lb_stats")?;
        let events = Some(take(&mut ebpf, "lb_events")?);
        Ok(SockLb {
            ebpf,
            pin_dir,
            svc,
            backends,
            revnat,
            sock_revnat,
            affinity,
            maglev,
            node_addrs,
            stats,
            events,
        })
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Attaches the four programs to the cgroup2 directory `cgroup` and pins the links under
    /// `<pin dir>/links/<program>`, so they stay attached when the agent exits. Links pinned by
    /// an earlier agent are detached only after the new ones are attached (make-before-break;
    /// while both run, the second sees an already translated backend address and does nothing).
    pub fn attach(&mut self, cgroup: &Path) -> Result<(), LbError> {
        let cg = File::open(cgroup).map_err(|source| LbError::Io {
            op: "open cgroup",
            path: cgroup.to_owned(),
            source,
        })?;
        let links_dir = self.pin_dir.join("links");
        fs::create_dir_all(&links_dir).map_err(|source| LbError::Io {
            op: "create link pin directory",
            path: links_dir.clone(),
            source,
        })?;
        for name in SOCK_PROGRAMS {
            let program: &mut CgroupSockAddr = self
                .ebpf
                .program_mut(name)
                .ok_or(BpfError::Missing { object: OBJECT, what: "program", name })?
                .try_into()
                .map_err(|source| BpfError::Program { program: name, source })?;
            let id = program
                .attach(&cg, CgroupAttachMode::Single)
                .map_err(|source| BpfError::Program { program: name, source })?;
            let link = program
                .take_link(id)
                .map_err(|source| BpfError::Program { program: name, source })?;
            let fd: FdLink = link.try_into().map_err(|e: aya::programs::links::LinkError| {
                LbError::Link { path: links_dir.join(name), message: e.to_string() }
            })?;
            pin_replacing(fd, &links_dir.join(name))?;
        }
        let name = BIND_PROGRAM;
        let program: &mut CgroupSock = self
            .ebpf
            .program_mut(name)
            .ok_or(BpfError::Missing { object: OBJECT, what: "program", name })?
            .try_into()
            .map_err(|source| BpfError::Program { program: name, source })?;
        let id = program
            .attach(&cg, CgroupAttachMode::Single)
            .map_err(|source| BpfError::Program { program: name, source })?;
        let link =
            program.take_link(id).map_err(|source| BpfError::Program { program: name, source })?;
        let fd: FdLink = link.try_into().map_err(|e: aya::programs::links::LinkError| {
            LbError::Link { path: links_dir.join(name), message: e.to_string() }
        })?;
        pin_replacing(fd, &links_dir.join(name))?;
        Ok(())
    }

    /// Detaches the programs (removes the link pins). Maps stay pinned.
    pub fn detach(&mut self) -> Result<(), LbError> {
        for name in SOCK_PROGRAMS.into_iter().chain([BIND_PROGRAM]) {
            let path = self.pin_dir.join("links").join(name);
            if path.exists() {
                unpin_link(&path)?;
            }
        }
        Ok(())
    }

    pub fn svc_insert(&mut self, key: SvcKey, val: SvcVal) -> Result<(), LbError> {
        self.svc.insert(key, val, 0).map_err(map_err("svc4"))
    }
    pub fn svc_remove(&mut self, key: &SvcKey) -> Result<(), LbError> {
        ignore_missing(self.svc.remove(key)).map_err(map_err("svc4"))
    }
    pub fn svc_entries(&self) -> Result<Vec<(SvcKey, SvcVal)>, LbError> {
        self.svc.iter().collect::<Result<_, _>>().map_err(map_err("svc4"))
    }
    pub fn backend_insert(&mut self, id: u32, val: BackendVal) -> Result<(), LbError> {
        self.backends.insert(id, val, 0).map_err(map_err("be4"))
    }
    pub fn backend_remove(&mut self, id: u32) -> Result<(), LbError> {
        ignore_missing(self.backends.remove(&id)).map_err(map_err("be4"))
    }
    pub fn backend_entries(&self) -> Result<Vec<(u32, BackendVal)>, LbError> {
        self.backends.iter().collect::<Result<_, _>>().map_err(map_err("be4"))
    }
    pub fn maglev_insert(&mut self, svc_id: u32, row: &MaglevRow) -> Result<(), LbError> {
        self.maglev.insert(svc_id, row, 0).map_err(map_err("maglev4"))
    }
    /// Makes `node_addrs4` hold exactly `addrs`: this node's addresses, on which a connect to a
    /// NodePort is balanced at the socket.
    pub fn set_node_addresses(&mut self, addrs: &[Ipv4Addr]) -> Result<(), LbError> {
        let want: Vec<u32> = addrs.iter().map(|a| u32::from(*a).to_be()).collect();
        let stale: Vec<u32> =
            self.node_addrs.keys().flatten().filter(|k| !want.contains(k)).collect();
        for k in &stale {
            ignore_missing(self.node_addrs.remove(k)).map_err(map_err("node_addrs4"))?;
        }
        for k in want {
            self.node_addrs.insert(k, 1, 0).map_err(map_err("node_addrs4"))?;
        }
        Ok(())
    }
    pub fn maglev_remove(&mut self, svc_id: u32) -> Result<(), LbError> {
        ignore_missing(self.maglev.remove(&svc_id)).map_err(map_err("maglev4"))
    }
    pub fn revnat_insert(&mut self, id: u32, val: RevNat) -> Result<(), LbError> {
        self.revnat.insert(id, val, 0).map_err(map_err("revnat4"))
    }
    pub fn revnat_remove(&mut self, id: u32) -> Result<(), LbError> {
        ignore_missing(self.revnat.remove(&id)).map_err(map_err("revnat4"))
    }
    pub fn revnat_entries(&self) -> Result<Vec<(u32, RevNat)>, LbError> {
        self.revnat.iter().collect::<Result<_, _>>().map_err(map_err("revnat4"))
    }

    /// Removes socket reverse-NAT and affinity entries whose service id no longer exists.
    /// Returns how many entries were removed.
    pub fn gc(&mut self, live_svc_ids: &std::collections::BTreeSet<u32>) -> Result<usize, LbError> {
        let stale: Vec<SkRevKey> = self
            .sock_revnat
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, v)| !live_svc_ids.contains(&v.svc_id))
            .map(|(k, _)| k)
            .collect();
        let stale_aff: Vec<AffKey> = self
            .affinity
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, _)| !live_svc_ids.contains(&k.svc_id))
            .map(|(k, _)| k)
            .collect();
        for k in &stale {
            ignore_missing(self.sock_revnat.remove(k)).map_err(map_err("sock_revnat4"))?;
        }
        for k in &stale_aff {
            ignore_missing(self.affinity.remove(k)).map_err(map_err("affinity4"))?;
        }
        Ok(stale.len() + stale_aff.len())
    }

    /// Entries in the socket reverse-NAT map (for fill-level metrics).
    pub fn sock_revnat_len(&self) -> usize {
        self.sock_revnat.keys().count()
    }

    /// Per-CPU counters summed, in [`LB_STATS`] order.
    pub fn stats(&self) -> Result<[u64; LB_STATS.len()], LbError> {
        let mut out = [0u64; LB_STATS.len()];
        for (i, slot) in out.iter_mut().enumerate() {
            let index = u32::try_from(i).unwrap_or(u32::MAX);
            let per_cpu = self.stats.get(&index, 0).map_err(map_err("lb_stats"))?;
            *slot = per_cpu.iter().sum();
        }
        Ok(out)
    }

    /// The ring buffer of program events; taken once by the task that drains it.
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }
}

fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn unpin_link(path: &Path) -> Result<(), LbError> {
    let link = PinnedLink::from_pin(path)
        .map_err(|e| LbError::Link { path: path.to_owned(), message: e.to_string() })?;
    let fd = link.unpin().map_err(|source| LbError::Io {
        op: "unpin link",
        path: path.to_owned(),
        source,
    })?;
    // Dropping the last reference detaches the program.
    drop(fd);
    Ok(())
}

/// Reads one ring-buffer record into an event.
pub fn next_event(ring: &mut RingBuf<MapData>) -> Option<Option<LbEvent>> {
    ring.next().map(|item| LbEvent::parse(&item))
}

/// True when `dir` is on a bpf filesystem (pins are possible there).
pub fn is_bpffs(dir: &Path) -> bool {
    nix::sys::statfs::statfs(dir)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
}

/// Mounts a bpf filesystem at `dir` (created if missing) unless one is there already, as the
/// agent does for `/sys/fs/bpf` on hosts that do not mount it. Each mount is a new instance, so
/// a test can pin into a private one.
pub fn ensure_bpffs(dir: &Path) -> Result<(), LbError> {
    fs::create_dir_all(dir).map_err(|source| LbError::Io {
        op: "create",
        path: dir.to_owned(),
        source,
    })?;
    if is_bpffs(dir) {
        return Ok(());
    }
    nix::mount::mount(Some("bpf"), dir, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
        .map_err(|e| LbError::Io {
            op: "mount bpffs",
            path: dir.to_owned(),
            source: io::Error::from_raw_os_error(e as i32),
        })
}

/// Unmounts a bpf filesystem mounted by [`ensure_bpffs`] (its pins go with it).
pub fn unmount_bpffs(dir: &Path) -> Result<(), LbError> {
    nix::mount::umount2(dir, nix::mount::MntFlags::MNT_DETACH).map_err(|e| LbError::Io {
        op: "unmount bpffs",
        path: dir.to_owned(),
        source: io::Error::from_raw_os_error(e as i32),
    })
}

/// Pins `link` at `path`, taking the place of a link an earlier agent pinned there: the old one
/// is held by its fd (still attached) until the new one owns the pin, then dropped (detached).
fn pin_replacing(link: FdLink, path: &Path) -> Result<(), LbError> {
    let old = if path.exists() {
        let pinned = PinnedLink::from_pin(path)
            .map_err(|e| LbError::Link { path: path.to_owned(), message: e.to_string() })?;
        Some(pinned.unpin().map_err(|source| LbError::Io {
            op: "unpin old link",
            path: path.to_owned(),
            source,
        })?)
    } else {
        None
    };
    link.pin(path).map_err(|e| LbError::Link { path: path.to_owned(), message: e.to_string() })?;
    // Dropping the last reference to the old link detaches it.
    drop(old);
    Ok(())
}

/// Removes the pins of other map layouts under `pin_root` (`v<N>`, N != [`LB_LAYOUT`]): an
/// upgraded agent calls it once its own programs are attached, so the old programs (whose link
/// pins live there) detach and their maps go. Returns the directories removed.
pub fn remove_other_layouts(pin_root: &Path) -> Result<Vec<PathBuf>, LbError> {
    let mut removed = Vec::new();
    let Ok(entries) = fs::read_dir(pin_root) else { return Ok(removed) };
    let current = format!("v{LB_LAYOUT}");
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_layout = name.strip_prefix('v').is_some_and(|n| n.parse::<u32>().is_ok());
        if is_layout && name != current {
            let path = entry.path();
            fs::remove_dir_all(&path).map_err(|source| LbError::Io {
                op: "remove old layout pins",
                path: path.clone(),
                source,
            })?;
            removed.push(path);
        }
    }
    Ok(removed)
}

/// Removes a whole pin root (all layout versions), e.g. when a test or `skiff-agent proxy
/// cleanup` ends. Links pinned there are detached.
pub fn remove_pins(pin_root: &Path) -> Result<(), LbError> {
    if !pin_root.exists() {
        return Ok(());
    }
    fs::remove_dir_all(pin_root).map_err(|source| LbError::Io {
        op: "remove pin directory",
        path: pin_root.to_owned(),
        source,
    })
}

/// `ebpf/tc_nodeport.c`: per-packet NodePort DNAT with an LRU conntrack and reverse NAT.
pub static TC_NODEPORT_OBJ: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tc_nodeport.o"));

const NODEPORT_OBJECT: &str = "tc_nodeport.o";

/// `max_entries` of the `ct4` LRU map in `tc_nodeport.c`.
pub const CT4_MAX_ENTRIES: u32 = 262_144;

/// The tc NodePort programs, sharing `svc4`/`be4` with the socket LB through the same pin
/// directory. Their links are pinned (`<pin dir>/links/<program>-<iface>`): they stay attached
/// when the agent exits, and the next agent swaps its programs into them atomically.
pub struct TcNodePort {
    ebpf: Ebpf,
    _links: Vec<aya::programs::tc::SchedClassifierLinkId>,
}

impl std::fmt::Debug for TcNodePort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcNodePort").finish_non_exhaustive()
    }
}

impl TcNodePort {
    /// Loads the programs for the node interface `external_if` whose address is `node_ip`,
    /// with maps pinned under `<pin_root>/v<LB_LAYOUT>`, and attaches `nodeport_in` to its
    /// ingress and `nodeport_out` to its egress (reverse NAT and SNAT on the way out: a packet
    /// with the node's own source address would be dropped as martian if rewritten on
    /// ingress). `node_ip` is both a NodePort address and the SNAT address of flows that leave
    /// by this interface for a backend on another node. Attach to every node interface that
    /// carries NodePort clients or leads to other nodes (one value per interface; all share the
    /// maps). Interface names are resolved in the calling thread's network namespace.
    pub fn attach(
        pin_root: &Path,
        sizes: LbMapSizes,
        node_ip: Ipv4Addr,
        external_if: &str,
    ) -> Result<Self, LbError> {
        use aya::programs::tc::TcAttachOptions;
        use aya::programs::{LinkOrder, SchedClassifier, TcAttachType};

        let pin_dir = pin_root.join(format!("v{LB_LAYOUT}"));
        fs::create_dir_all(&pin_dir).map_err(|source| LbError::Io {
            op: "create pin directory",
            path: pin_dir.clone(),
            source,
        })?;
        let node_ip_be = u32::from(node_ip).to_be();
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&pin_dir)
            .map_max_entries("svc4", sizes.services)
            .map_max_entries("be4", sizes.backends)
            .override_global("NODE_IP", &node_ip_be, true)
            .load(TC_NODEPORT_OBJ)
            .map_err(|source| BpfError::Load { object: NODEPORT_OBJECT, source })?;
        let links_dir = pin_dir.join("links");
        fs::create_dir_all(&links_dir).map_err(|source| LbError::Io {
            op: "create link pin directory",
            path: links_dir.clone(),
            source,
        })?;
        let mut links = Vec::new();
        for (name, direction) in
            [("nodeport_in", TcAttachType::Ingress), ("nodeport_out", TcAttachType::Egress)]
        {
            let program: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or(BpfError::Missing { object: NODEPORT_OBJECT, what: "program", name })?
                .try_into()
                .map_err(|source| BpfError::Program { program: name, source })?;
            program.load().map_err(|source| BpfError::Program { program: name, source })?;
            let path = links_dir.join(format!("{name}-{external_if}"));
            let link_err = |message: String| LbError::Link { path: path.clone(), message };
            if path.exists() {
                // An earlier agent's link: swap our program in atomically (no gap for packets).
                let pinned = PinnedLink::from_pin(&path).map_err(|e| link_err(e.to_string()))?;
                let link = aya::programs::tc::SchedClassifierLink::try_from(FdLink::from(pinned))
                    .map_err(|e| link_err(e.to_string()))?;
                let id = program
                    .attach_to_link(link)
                    .map_err(|source| BpfError::Program { program: name, source })?;
                links.push(id);
            } else {
                let id = program
                    .attach_with_options(
                        external_if,
                        direction,
                        TcAttachOptions::TcxOrder(LinkOrder::first()),
                    )
                    .map_err(|source| BpfError::Program { program: name, source })?;
                // Pinned, the link stays attached when the agent exits.
                let link = program
                    .take_link(id)
                    .map_err(|source| BpfError::Program { program: name, source })?;
                let fd: FdLink = link
                    .try_into()
                    .map_err(|e: aya::programs::links::LinkError| link_err(e.to_string()))?;
                fd.pin(&path).map_err(|e| link_err(e.to_string()))?;
            }
        }
        Ok(TcNodePort { ebpf, _links: links })
    }

    /// Removes conntrack entries idle for longer than `idle` (by the `last_ns` the programs
    /// refresh on every packet, `bpf_ktime_get_ns` = `CLOCK_MONOTONIC`). Returns how many.
    pub fn gc(&mut self, idle: std::time::Duration) -> Result<usize, LbError> {
        let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_err(|e| {
            LbError::Io {
                op: "clock_gettime",
                path: PathBuf::new(),
                source: io::Error::from_raw_os_error(e as i32),
            }
        })?;
        let now_ns = u64::try_from(now.tv_sec()).unwrap_or(0) * 1_000_000_000
            + u64::try_from(now.tv_nsec()).unwrap_or(0);
        let idle_ns = u64::try_from(idle.as_nanos()).unwrap_or(u64::MAX);
        let map = self.ebpf.map_mut("ct4").ok_or(BpfError::Missing {
            object: NODEPORT_OBJECT,
            what: "map",
            name: "ct4",
        })?;
        let mut ct: HashMap<&mut MapData, [u8; 16], [u8; 24]> =
            HashMap::try_from(map).map_err(|source| LbError::Map { map: "ct4", source })?;
        let stale: Vec<[u8; 16]> = ct
            .iter()
            .flatten()
            .filter(|(_, v)| {
                let mut last = [0u8; 8];
                last.copy_from_slice(&v[16..24]);
                now_ns.saturating_sub(u64::from_ne_bytes(last)) >= idle_ns
            })
            .map(|(k, _)| k)
            .collect();
        for k in &stale {
            ignore_missing(ct.remove(k)).map_err(map_err("ct4"))?;
        }
        Ok(stale.len())
    }

    /// Flows in the conntrack map (both directions).
    pub fn conntrack_entries(&self) -> Result<usize, LbError> {
        let map = self.ebpf.map("ct4").ok_or(BpfError::Missing {
            object: NODEPORT_OBJECT,
            what: "map",
            name: "ct4",
        })?;
        let ct: HashMap<&MapData, [u8; 16], [u8; 24]> =
            HashMap::try_from(map).map_err(|source| LbError::Map { map: "ct4", source })?;
        Ok(ct.keys().flatten().count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upgraded agent removes the pin directories of other layouts and nothing else.
    #[test]
    fn other_layouts_are_removed() {
        let root = std::env::temp_dir().join(format!(
            "skiff-test-layouts-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let current = root.join(format!("v{LB_LAYOUT}"));
        for dir in [root.join("v1/links"), current.clone(), root.join("vnext"), root.join("other")]
        {
            fs::create_dir_all(dir).unwrap();
        }
        fs::write(root.join("v1/svc4"), b"").unwrap();
        let removed = remove_other_layouts(&root).unwrap();
        let kept: Vec<bool> = [&current, &root.join("vnext"), &root.join("other")]
            .iter()
            .map(|p| p.exists())
            .collect();
        let _ = fs::remove_dir_all(&root);
        assert_eq!(removed, [root.join("v1")]);
        assert_eq!(kept, [true, true, true]);
        assert!(remove_other_layouts(&root.join("missing")).unwrap().is_empty());
    }
}
