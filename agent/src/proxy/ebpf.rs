//! The eBPF proxier: Service ports become entries of the socket-LB maps (`svc4`, `be4`,
//! `revnat4`), written in make-before-break order and only where they differ.
//!
//! [`LbState`] is the map contents as a value; [`lb_state`] computes the desired one (ids are
//! stable: kept from what the maps held) and [`plan`] the ordered writes between two states.
//! Both are pure. [`EbpfProxier`] adopts the pinned maps on start, applies plans and counts
//! failures (a full map fails that Service port, logs an error and bumps a metric).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::kernel::bpf_lb::{
    self, BACKEND_ACTIVE, BACKEND_F_REMOTE, BACKEND_TERMINATING, BackendVal, IPPROTO_TCP,
    IPPROTO_UDP, LB_STATS, LbError, LbMapSizes, MAGLEV_M, MaglevRow, RevNat, SCOPE_INTERNAL,
    SVC_FLAG_AFFINITY, SVC_FLAG_MAGLEV, SockLb, SvcKey, SvcVal,
};

use super::{
    DesiredState, Endpoint, Protocol, Proxier, ProxyError, ServicePort, ServicePortKey,
    ServicePortName, SyncReport,
};

fn proto_num(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => IPPROTO_TCP,
        Protocol::Udp => IPPROTO_UDP,
    }
}

/// A frontend's slot-0 entry and its backend slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontendState {
    pub svc_id: u32,
    pub flags: u16,
    pub affinity_s: u32,
    /// Backend id per slot 1..=n.
    pub slots: Vec<u32>,
}

/// Contents of `svc4`, `be4` and `revnat4` (revnat is derived: one per frontend).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LbState {
    /// Keyed by the slot-0 key.
    pub frontends: BTreeMap<SvcKey, FrontendState>,
    pub backends: BTreeMap<u32, BackendVal>,
}

/// Stable ids: a frontend keeps its service id and a backend address its backend id for as long
/// as they exist, also across agent restarts (recovered from the maps). New ids come from a
/// counter above the highest id in use (ids are 32-bit and never run out in practice).
#[derive(Debug, Clone, Default)]
pub struct Ids {
    svc: BTreeMap<SvcKey, u32>,
    backend: BTreeMap<(u32, u16, u8), u32>,
    next_svc: u32,
    next_backend: u32,
}

impl Ids {
    /// Ids in use in `state`.
    pub fn from_state(state: &LbState) -> Self {
        let mut ids = Ids::default();
        for (k, f) in &state.frontends {
            ids.svc.insert(*k, f.svc_id);
            ids.next_svc = ids.next_svc.max(f.svc_id);
        }
        for (id, b) in &state.backends {
            ids.backend.insert((b.ip, b.port, b.proto), *id);
            ids.next_backend = ids.next_backend.max(*id);
        }
        ids
    }

    /// Drops ids not used by `state` (after it was applied).
    pub fn retain(&mut self, state: &LbState) {
        self.svc.retain(|k, _| state.frontends.contains_key(k));
        self.backend.retain(|_, id| state.backends.contains_key(id));
    }
}

/// The entries one Service port needs: its frontends (ClusterIP and external IPs) and the
/// backends they use (active) or keep for existing connections (terminating).
pub fn contribution(sp: &ServicePort, ids: &mut Ids) -> LbState {
    let mut state = LbState::default();
    let proto = proto_num(sp.protocol);
    let mut backend_id = |e: &Endpoint, state_flag: u8, st: &mut LbState| -> u32 {
        // Not known to run on this node: NodePort flows to it are SNATed (tc_nodeport.c).
        let flags = if e.local { 0 } else { BACKEND_F_REMOTE };
        let val = BackendVal::new(e.ip, e.port, proto, state_flag, flags);
        let next = &mut ids.next_backend;
        let id = *ids.backend.entry((val.ip, val.port, proto)).or_insert_with(|| {
            *next += 1;
            *next
        });
        let entry = st.backends.entry(id).or_insert(val);
        if state_flag == BACKEND_ACTIVE {
            entry.state = BACKEND_ACTIVE;
        }
        id
    };
    let usable = sp.usable_endpoints();
    let slots: Vec<u32> =
        usable.iter().map(|e| backend_id(e, BACKEND_ACTIVE, &mut state)).collect();
    // externalTrafficPolicy: Local: traffic from outside (the tc NodePort path) goes only to
    // endpoints on this node, so the client address is kept (no SNAT). Local sockets (socket
    // LB, ClusterIP and external IPs) still use every endpoint, as kube-proxy does for LOCAL
    // traffic.
    let external_slots: Vec<u32> = if sp.external_local {
        usable.iter().zip(&slots).filter(|(e, _)| e.local).map(|(_, id)| *id).collect()
    } else {
        slots.clone()
    };
    for e in sp.draining_endpoints() {
        backend_id(e, BACKEND_TERMINATING, &mut state);
    }
    let (flags, affinity_s) = match sp.affinity_timeout_s {
        Some(t) => (SVC_FLAG_AFFINITY, t),
        None => (0, 0),
    };
    // NodePort frontends use address 0 (any node address), read by the tc NodePort program.
    let node_port = sp.node_port.map(|np| (Ipv4Addr::UNSPECIFIED, np));
    for (vip, port) in sp.frontends().into_iter().map(|v| (v, sp.port)).chain(node_port) {
        let key = SvcKey::new(vip, port, proto, 0);
        let slots = if vip.is_unspecified() { &external_slots } else { &slots };
        let flags = if vip.is_unspecified() && sp.maglev { flags | SVC_FLAG_MAGLEV } else { flags };
        let next = &mut ids.next_svc;
        let svc_id = *ids.svc.entry(key).or_insert_with(|| {
            *next += 1;
            *next
        });
        state
            .frontends
            .insert(key, FrontendState { svc_id, flags, affinity_s, slots: slots.clone() });
    }
    // eTP Local: clients on this node (socket LB on a node address) use every endpoint, as
    // kube-proxy sends node-local traffic to the Service chain: an internal-scope twin of the
    // NodePort frontend with all slots (the tc path looks up the external scope only).
    if let (true, Some(np)) = (sp.external_local, sp.node_port) {
        let key =
            SvcKey { scope: SCOPE_INTERNAL, ..SvcKey::new(Ipv4Addr::UNSPECIFIED, np, proto, 0) };
        let next = &mut ids.next_svc;
        let svc_id = *ids.svc.entry(key).or_insert_with(|| {
            *next += 1;
            *next
        });
        state.frontends.insert(key, FrontendState { svc_id, flags, affinity_s, slots });
    }
    state
}

/// Adds `part` to `state`; a backend active for any Service port is active.
fn merge(state: &mut LbState, part: &LbState) {
    for (k, f) in &part.frontends {
        state.frontends.insert(*k, f.clone());
    }
    for (id, b) in &part.backends {
        let entry = state.backends.entry(*id).or_insert(*b);
        if b.state == BACKEND_ACTIVE {
            entry.state = BACKEND_ACTIVE;
        }
    }
}

/// The map contents for `desired`, and which Service port owns each frontend.
pub fn lb_state(
    desired: &DesiredState,
    ids: &mut Ids,
) -> (LbState, BTreeMap<SvcKey, ServicePortName>) {
    let mut state = LbState::default();
    let mut owners = BTreeMap::new();
    for sp in desired.values() {
        let part = contribution(sp, ids);
        for k in part.frontends.keys() {
            owners.insert(*k, sp.name.clone());
        }
        merge(&mut state, &part);
    }
    (state, owners)
}

/// One map write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapOp {
    BackendPut(u32, BackendVal),
    RevNatPut(u32, RevNat),
    SlotPut(SvcKey, SvcVal),
    SlotDel(SvcKey),
    RevNatDel(u32),
    BackendDel(u32),
    /// A frontend's Maglev row (backend ids), written before its slot 0.
    MaglevPut(u32, Box<MaglevRow>),
    MaglevDel(u32),
}

/// Seed of the Maglev tables: the same on every node, so every node maps a flow alike.
pub const MAGLEV_SEED: u64 = 0x736b_6966_665f_6d67;

/// The Maglev row of a frontend: its backends (by `ip:port`) spread over [`MAGLEV_M`] entries.
fn maglev_row(slots: &[u32], backends: &BTreeMap<u32, BackendVal>) -> Option<Box<MaglevRow>> {
    let names: Vec<String> = slots
        .iter()
        .map(|id| backends.get(id).map(|b| format!("{}:{}", b.addr(), b.host_port())))
        .collect::<Option<_>>()?;
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let table = super::maglev::build_table(&refs, MAGLEV_SEED, u32::try_from(MAGLEV_M).ok()?);
    let mut row = Box::new([0u32; MAGLEV_M]);
    for (entry, index) in row.iter_mut().zip(table) {
        *entry = slots[index as usize];
    }
    Some(row)
}

/// Writes that belong together: one frontend's, or the shared backend writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpGroup {
    /// The frontend these writes are for (`None`: backends shared by all).
    pub frontend: Option<SvcKey>,
    pub ops: Vec<MapOp>,
}

fn revnat_of(key: &SvcKey) -> RevNat {
    RevNat { vip: key.vip, port: key.port, pad: 0 }
}

/// The writes that turn `current` into `desired`, in make-before-break order: backends first,
/// then per frontend its reverse-NAT entry, its slots, its slot 0 and the removal of surplus
/// slots; then removed frontends (slot 0 first); last, backends nothing references any more.
pub fn plan(current: &LbState, desired: &LbState) -> Vec<OpGroup> {
    let mut groups = Vec::new();
    let puts: Vec<MapOp> = desired
        .backends
        .iter()
        .filter(|(id, b)| current.backends.get(id) != Some(b))
        .map(|(id, b)| MapOp::BackendPut(*id, *b))
        .collect();
    if !puts.is_empty() {
        groups.push(OpGroup { frontend: None, ops: puts });
    }
    for (key, want) in &desired.frontends {
        let have = current.frontends.get(key);
        if have == Some(want) {
            continue;
        }
        let mut ops = Vec::new();
        if have.is_none_or(|h| h.svc_id != want.svc_id) {
            ops.push(MapOp::RevNatPut(want.svc_id, revnat_of(key)));
        }
        for (i, id) in want.slots.iter().enumerate() {
            let slot = u16::try_from(i + 1).unwrap_or(u16::MAX);
            if have.and_then(|h| h.slots.get(i)) != Some(id) {
                ops.push(MapOp::SlotPut(
                    SvcKey { slot, ..*key },
                    SvcVal { id: *id, ..SvcVal::default() },
                ));
            }
        }
        if want.flags & SVC_FLAG_MAGLEV != 0
            && !want.slots.is_empty()
            && let Some(row) = maglev_row(&want.slots, &desired.backends)
        {
            ops.push(MapOp::MaglevPut(want.svc_id, row));
        }
        ops.push(MapOp::SlotPut(
            *key,
            SvcVal {
                id: want.svc_id,
                count: u16::try_from(want.slots.len()).unwrap_or(u16::MAX),
                flags: want.flags,
                affinity_s: want.affinity_s,
            },
        ));
        if let Some(h) = have {
            for i in want.slots.len()..h.slots.len() {
                let slot = u16::try_from(i + 1).unwrap_or(u16::MAX);
                ops.push(MapOp::SlotDel(SvcKey { slot, ..*key }));
            }
        }
        groups.push(OpGroup { frontend: Some(*key), ops });
    }
    for (key, have) in &current.frontends {
        if desired.frontends.contains_key(key) {
            continue;
        }
        let mut ops = vec![MapOp::SlotDel(*key)];
        for i in 0..have.slots.len() {
            let slot = u16::try_from(i + 1).unwrap_or(u16::MAX);
            ops.push(MapOp::SlotDel(SvcKey { slot, ..*key }));
        }
        ops.push(MapOp::RevNatDel(have.svc_id));
        if have.flags & SVC_FLAG_MAGLEV != 0 {
            ops.push(MapOp::MaglevDel(have.svc_id));
        }
        groups.push(OpGroup { frontend: Some(*key), ops });
    }
    let dels: Vec<MapOp> = current
        .backends
        .keys()
        .filter(|id| !desired.backends.contains_key(id))
        .map(|id| MapOp::BackendDel(*id))
        .collect();
    if !dels.is_empty() {
        groups.push(OpGroup { frontend: None, ops: dels });
    }
    groups
}

/// Reads the state held in the (possibly adopted) maps.
fn read_state(lb: &SockLb) -> Result<LbState, LbError> {
    let mut state = LbState::default();
    let entries = lb.svc_entries()?;
    let mut slots: BTreeMap<SvcKey, BTreeMap<u16, u32>> = BTreeMap::new();
    for (k, v) in &entries {
        if k.slot == 0 {
            state.frontends.insert(
                *k,
                FrontendState {
                    svc_id: v.id,
                    flags: v.flags,
                    affinity_s: v.affinity_s,
                    slots: Vec::new(),
                },
            );
        } else {
            slots.entry(SvcKey { slot: 0, ..*k }).or_default().insert(k.slot, v.id);
        }
    }
    let counts: BTreeMap<SvcKey, u16> =
        entries.iter().filter(|(k, _)| k.slot == 0).map(|(k, v)| (*k, v.count)).collect();
    for (k, f) in &mut state.frontends {
        let count = counts.get(k).copied().unwrap_or(0);
        let have = slots.get(k);
        f.slots = (1..=count).map_while(|s| have.and_then(|m| m.get(&s)).copied()).collect();
    }
    state.backends = lb.backend_entries()?.into_iter().collect();
    Ok(state)
}

/// Settings of the eBPF proxier.
#[derive(Debug, Clone)]
pub struct EbpfConfig {
    /// Root under which maps and links are pinned (`<root>/v<layout>`), e.g.
    /// `/sys/fs/bpf/skiff/<node>`.
    pub pin_root: PathBuf,
    /// The cgroup2 directory the socket programs attach to (the cgroup2 root on a node).
    pub cgroup: PathBuf,
    pub map_sizes: LbMapSizes,
    /// This node's addresses: a connect to one of them on a NodePort is balanced at the socket
    /// (NodePort from pods and the node itself).
    pub node_addresses: Vec<Ipv4Addr>,
}

#[derive(Debug, Default, Clone)]
struct Counters {
    syncs: u64,
    map_full: u64,
    failed_ops: u64,
    events: u64,
    events_suppressed: u64,
    last_sync_seconds: f64,
    gc_removed: u64,
}

/// Socket-level load balancing through the maps of `ebpf/sock_lb.c`.
pub struct EbpfProxier {
    lb: SockLb,
    /// What the maps hold (as far as we know).
    current: LbState,
    ids: Ids,
    /// The last desired state per Service port, and its map entries: a sync compares against
    /// these and touches only what changed (O(changed), not O(all Services)).
    last: BTreeMap<ServicePortKey, ServicePort>,
    by_service: BTreeMap<ServicePortKey, LbState>,
    /// Service ports that failed in the last sync: compared again by the next one.
    retry: BTreeSet<ServicePortKey>,
    /// Which Service ports use each backend id, and how (active or terminating).
    refs: BTreeMap<u32, BTreeMap<ServicePortKey, u8>>,
    counters: Counters,
    events: Option<aya::maps::RingBuf<aya::maps::MapData>>,
    log_window: (Instant, u32),
}

/// At most this many program events are logged per second; the rest are counted.
const EVENT_LOGS_PER_SECOND: u32 = 10;

impl std::fmt::Debug for EbpfProxier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EbpfProxier")
            .field("lb", &self.lb)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl EbpfProxier {
    /// Loads the programs, adopts maps pinned by an earlier agent (their contents become the
    /// current state, so the first sync writes only differences) and attaches to the cgroup.
    pub fn start(config: &EbpfConfig) -> Result<Self, ProxyError> {
        let mut lb = SockLb::load(&config.pin_root, config.map_sizes)?;
        let current = read_state(&lb)?;
        if !current.frontends.is_empty() {
            tracing::info!(
                frontends = current.frontends.len(),
                backends = current.backends.len(),
                "adopted pinned load-balancer maps"
            );
        }
        let ids = Ids::from_state(&current);
        lb.set_node_addresses(&config.node_addresses)?;
        // Programs of an older layout (an upgraded agent) stay attached and keep serving from
        // their maps: ours start empty. The caller removes them after the first sync
        // ([`remove_other_layouts`]).
        lb.attach(&config.cgroup)?;
        let events = lb.take_events();
        Ok(EbpfProxier {
            lb,
            current,
            ids,
            last: BTreeMap::new(),
            by_service: BTreeMap::new(),
            retry: BTreeSet::new(),
            refs: BTreeMap::new(),
            counters: Counters::default(),
            events,
            log_window: (Instant::now(), 0),
        })
    }

    /// Removes the pins of other map layouts under `pin_root` (an upgraded agent's
    /// predecessor), which detaches its programs. Call it once the first sync has filled this
    /// layout's maps and the tc programs are attached: until then the old programs serve
    /// Service traffic (make-before-break across a layout change; ours run after theirs and
    /// see already translated addresses).
    pub fn remove_other_layouts(pin_root: &Path) -> Result<(), ProxyError> {
        for old in bpf_lb::remove_other_layouts(pin_root)? {
            tracing::info!(path = %old.display(), "removed pins of an older map layout");
        }
        Ok(())
    }

    /// Detaches the programs and removes every pin under `pin_root` (maps included).
    pub fn cleanup(mut self, pin_root: &Path) -> Result<(), ProxyError> {
        self.lb.detach()?;
        drop(self);
        bpf_lb::remove_pins(pin_root)?;
        Ok(())
    }

    /// Per-CPU program counters, summed, by name.
    pub fn program_stats(&self) -> Result<Vec<(&'static str, u64)>, ProxyError> {
        let values = self.lb.stats()?;
        Ok(LB_STATS.iter().copied().zip(values).collect())
    }

    /// Removes socket reverse-NAT and affinity entries of frontends that no longer exist.
    pub fn gc(&mut self) -> Result<usize, ProxyError> {
        let live: BTreeSet<u32> = self.current.frontends.values().map(|f| f.svc_id).collect();
        let removed = self.lb.gc(&live)?;
        self.counters.gc_removed += removed as u64;
        Ok(removed)
    }

    /// Drains program events from the ring buffer into `tracing` (rate-limited). Returns how
    /// many were read.
    pub fn poll_events(&mut self) -> usize {
        let Some(ring) = self.events.as_mut() else { return 0 };
        let mut n = 0;
        while let Some(event) = bpf_lb::next_event(ring) {
            n += 1;
            self.counters.events += 1;
            let now = Instant::now();
            if now.duration_since(self.log_window.0) >= Duration::from_secs(1) {
                self.log_window = (now, 0);
            }
            if self.log_window.1 >= EVENT_LOGS_PER_SECOND {
                self.counters.events_suppressed += 1;
                continue;
            }
            self.log_window.1 += 1;
            let Some(e) = event else {
                tracing::warn!("malformed load-balancer event");
                continue;
            };
            let vip = Ipv4Addr::from(u32::from_be(e.vip));
            let port = u16::from_be(e.vport);
            match e.kind {
                1 => {
                    tracing::info!(%vip, port, proto = e.proto, svc_id = e.svc_id, "connection refused: service has no endpoints");
                }
                2 => {
                    tracing::warn!(%vip, port, svc_id = e.svc_id, "service slot names a missing backend");
                }
                3 => {
                    tracing::warn!(%vip, port, err = e.err, "socket reverse-NAT map update failed");
                }
                k => tracing::warn!(kind = k, "unknown load-balancer event"),
            }
        }
        n
    }

    /// Everything against the maps (first sync, also after adopting pinned maps).
    fn full_diff(
        &mut self,
        desired: &DesiredState,
    ) -> (LbState, LbState, BTreeMap<SvcKey, ServicePortName>) {
        let mut want = LbState::default();
        let mut owners = BTreeMap::new();
        self.refs.clear();
        self.by_service.clear();
        for (key, sp) in desired {
            let part = contribution(sp, &mut self.ids);
            self.note_refs(key, &part);
            for k in part.frontends.keys() {
                owners.insert(*k, sp.name.clone());
            }
            merge(&mut want, &part);
            self.last.insert(key.clone(), sp.clone());
            self.by_service.insert(key.clone(), part);
        }
        (self.current.clone(), want, owners)
    }

    /// Service ports of `desired` that differ from the last sync, in one merge pass over both
    /// (sorted) maps: O(all Service ports).
    fn changed_ports(&self, desired: &DesiredState) -> Vec<ServicePortKey> {
        let mut changed: Vec<ServicePortKey> = Vec::new();
        let (mut a, mut b) = (desired.iter().peekable(), self.last.iter().peekable());
        loop {
            match (a.peek(), b.peek()) {
                (Some((ka, va)), Some((kb, vb))) => match ka.cmp(kb) {
                    std::cmp::Ordering::Less => {
                        changed.push((*ka).clone());
                        a.next();
                    }
                    std::cmp::Ordering::Greater => {
                        changed.push((*kb).clone());
                        b.next();
                    }
                    std::cmp::Ordering::Equal => {
                        if va != vb {
                            changed.push((*ka).clone());
                        }
                        a.next();
                        b.next();
                    }
                },
                (Some((ka, _)), None) => {
                    changed.push((*ka).clone());
                    a.next();
                }
                (None, Some((kb, _))) => {
                    changed.push((*kb).clone());
                    b.next();
                }
                (None, None) => break,
            }
        }
        changed
    }

    /// Only the Service ports in `changed` (those that differ from the last sync), and the
    /// backends they touch: O(changed).
    fn incremental_diff(
        &mut self,
        desired: &DesiredState,
        changed: Vec<ServicePortKey>,
    ) -> (LbState, LbState, BTreeMap<SvcKey, ServicePortName>) {
        let mut sub_current = LbState::default();
        let mut sub_want = LbState::default();
        let mut owners = BTreeMap::new();
        let mut touched: BTreeSet<u32> = BTreeSet::new();
        for key in changed {
            if let Some(old) = self.by_service.remove(&key) {
                for k in old.frontends.keys() {
                    if let Some(f) = self.current.frontends.get(k) {
                        sub_current.frontends.insert(*k, f.clone());
                    }
                    owners.insert(*k, key.0.clone());
                }
                for id in old.backends.keys() {
                    touched.insert(*id);
                    if let Some(users) = self.refs.get_mut(id) {
                        users.remove(&key);
                        if users.is_empty() {
                            self.refs.remove(id);
                        }
                    }
                }
            }
            match desired.get(&key) {
                Some(sp) => {
                    let part = contribution(sp, &mut self.ids);
                    self.note_refs(&key, &part);
                    touched.extend(part.backends.keys());
                    for (k, f) in &part.frontends {
                        sub_want.frontends.insert(*k, f.clone());
                        owners.insert(*k, key.0.clone());
                    }
                    self.last.insert(key.clone(), sp.clone());
                    self.by_service.insert(key, part);
                }
                None => {
                    self.last.remove(&key);
                }
            }
        }
        for id in touched {
            if let Some(b) = self.current.backends.get(&id) {
                sub_current.backends.insert(id, *b);
            }
            if let Some(users) = self.refs.get(&id) {
                let active = users.values().any(|s| *s == BACKEND_ACTIVE);
                let template = users
                    .keys()
                    .find_map(|k| self.by_service.get(k).and_then(|p| p.backends.get(&id)))
                    .copied();
                if let Some(mut b) = template {
                    b.state = if active { BACKEND_ACTIVE } else { BACKEND_TERMINATING };
                    sub_want.backends.insert(id, b);
                }
            }
        }
        (sub_current, sub_want, owners)
    }

    /// One sync: everything against the maps (`changed` = `None`: the first sync, also after
    /// adopting pinned maps) or only the Service ports in `changed`.
    fn sync_ports(
        &mut self,
        desired: &DesiredState,
        changed: Option<Vec<ServicePortKey>>,
    ) -> SyncReport {
        let started = Instant::now();
        let full = changed.is_none();
        let (sub_current, sub_want, owners) = match changed {
            None => self.full_diff(desired),
            Some(changed) => self.incremental_diff(desired, changed),
        };
        let report = self.apply_plan(&sub_current, &sub_want, &owners);
        // Service ports whose frontends failed are retried from scratch next time.
        self.retry.clear();
        for (name, _) in &report.failed {
            let retry = &mut self.retry;
            self.last.retain(|k, _| {
                let keep = &k.0 != name;
                if !keep {
                    retry.insert(k.clone());
                }
                keep
            });
        }
        if full {
            // First sync: ids of everything no longer in the maps go (failed ports keep theirs).
            let current = &self.current;
            let failed: BTreeSet<&ServicePortName> = report.failed.iter().map(|(n, _)| n).collect();
            self.ids.svc.retain(|k, _| {
                current.frontends.contains_key(k)
                    || owners.get(k).is_some_and(|o| failed.contains(o))
            });
            self.ids
                .backend
                .retain(|_, id| current.backends.contains_key(id) || self.refs.contains_key(id));
        }
        self.counters.syncs += 1;
        self.counters.last_sync_seconds = started.elapsed().as_secs_f64();
        self.poll_events();
        report
    }

    fn note_refs(&mut self, key: &ServicePortKey, part: &LbState) {
        for (id, b) in &part.backends {
            self.refs.entry(*id).or_default().insert(key.clone(), b.state);
        }
    }

    /// Applies the plan from `from` to `to` (both restricted to the same frontends and
    /// backends) and records what took effect in `self.current`.
    fn apply_plan(
        &mut self,
        from: &LbState,
        to: &LbState,
        owners: &BTreeMap<SvcKey, ServicePortName>,
    ) -> SyncReport {
        let groups = plan(from, to);
        let mut report = SyncReport::default();
        let mut failed_backends: BTreeSet<u32> = BTreeSet::new();
        let mut changed: BTreeSet<&ServicePortName> = BTreeSet::new();
        for group in &groups {
            let mut result = Ok(());
            let mut wrote = false;
            for op in &group.ops {
                if let MapOp::SlotPut(k, v) = op
                    && k.slot > 0
                    && failed_backends.contains(&v.id)
                {
                    result =
                        Err(LbError::Dependency(format!("backend {} could not be written", v.id)));
                    break;
                }
                if let Err(e) = self.apply(op) {
                    result = Err(e);
                    if let MapOp::BackendPut(id, _) = op {
                        failed_backends.insert(*id);
                        continue;
                    }
                    break;
                }
                wrote = true;
            }
            match (result, group.frontend) {
                (Ok(()), Some(key)) => {
                    if let Some(f) = to.frontends.get(&key) {
                        self.current.frontends.insert(key, f.clone());
                        if let Some(o) = owners.get(&key) {
                            changed.insert(o);
                        }
                    } else {
                        self.current.frontends.remove(&key);
                        self.ids.svc.remove(&key);
                        report.removed += 1;
                    }
                }
                (Ok(()), None) => {}
                (Err(e), frontend) => {
                    if matches!(e, LbError::MapFull { .. }) {
                        self.counters.map_full += 1;
                    }
                    self.counters.failed_ops += 1;
                    let owner = frontend.and_then(|k| owners.get(&k)).cloned();
                    tracing::error!(service = ?owner.as_ref().map(ToString::to_string), error = %e, "load-balancer map update failed");
                    if let Some(key) = frontend
                        && wrote
                    {
                        // Half written: the maps may hold the old or the new slot 0, its
                        // reverse-NAT entry and slots of either. Remember a state that differs
                        // from every wanted one (slot ids 0) and covers them all, so the retry
                        // rewrites each entry and a removal deletes each.
                        let have = self.current.frontends.get(&key);
                        let want = to.frontends.get(&key);
                        let len = |f: Option<&FrontendState>| f.map_or(0, |f| f.slots.len());
                        if let Some(base) = want.or(have) {
                            let partial = FrontendState {
                                svc_id: base.svc_id,
                                flags: want.map_or(0, |f| f.flags) | have.map_or(0, |f| f.flags),
                                affinity_s: base.affinity_s,
                                slots: vec![0; len(want).max(len(have))],
                            };
                            self.current.frontends.insert(key, partial);
                        }
                    }
                    if let Some(o) = owner {
                        report.failed.push((o, e.to_string()));
                    }
                }
            }
        }
        for (id, b) in &to.backends {
            if !failed_backends.contains(id) {
                self.current.backends.insert(*id, *b);
            }
        }
        for (id, b) in &from.backends {
            if !to.backends.contains_key(id) {
                self.current.backends.remove(id);
                if !self.refs.contains_key(id) {
                    self.ids.backend.remove(&(b.ip, b.port, b.proto));
                }
            }
        }
        report.changed = changed.len();
        report.failed.sort();
        report.failed.dedup();
        report
    }

    fn apply(&mut self, op: &MapOp) -> Result<(), LbError> {
        match op {
            MapOp::BackendPut(id, b) => self.lb.backend_insert(*id, *b),
            MapOp::RevNatPut(id, r) => self.lb.revnat_insert(*id, *r),
            MapOp::SlotPut(k, v) => self.lb.svc_insert(*k, *v),
            MapOp::SlotDel(k) => self.lb.svc_remove(k),
            MapOp::RevNatDel(id) => self.lb.revnat_remove(*id),
            MapOp::BackendDel(id) => self.lb.backend_remove(*id),
            MapOp::MaglevPut(id, row) => self.lb.maglev_insert(*id, row),
            MapOp::MaglevDel(id) => self.lb.maglev_remove(*id),
        }
    }
}

impl Proxier for EbpfProxier {
    fn mode(&self) -> &'static str {
        "ebpf"
    }

    fn sync(&mut self, desired: &DesiredState) -> Result<SyncReport, ProxyError> {
        let changed = if self.last.is_empty() {
            None
        } else {
            // Ports that failed last time are compared too (also when they are gone now).
            let mut changed = self.changed_ports(desired);
            changed.extend(self.retry.iter().cloned());
            changed.sort();
            changed.dedup();
            Some(changed)
        };
        Ok(self.sync_ports(desired, changed))
    }

    fn sync_changed(
        &mut self,
        desired: &DesiredState,
        changed: &BTreeSet<ServicePortKey>,
    ) -> Result<SyncReport, ProxyError> {
        let changed = if self.last.is_empty() {
            None
        } else {
            // Only the named ports (and those that failed last time) can differ; skip those
            // whose desired value did not change. A failed port is always compared: `last`
            // no longer holds it, but its half-written entries do, also once it is deleted.
            Some(
                changed
                    .iter()
                    .chain(&self.retry)
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .filter(|k| self.retry.contains(*k) || desired.get(*k) != self.last.get(*k))
                    .cloned()
                    .collect(),
            )
        };
        Ok(self.sync_ports(desired, changed))
    }

    fn metrics(&self) -> String {
        let c = &self.counters;
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        counter("skiff_proxy_syncs_total", "Syncs of the eBPF proxier.", c.syncs);
        counter(
            "skiff_proxy_map_full_total",
            "Map writes refused because a map was full.",
            c.map_full,
        );
        counter(
            "skiff_proxy_map_update_errors_total",
            "Failed groups of map writes.",
            c.failed_ops,
        );
        counter(
            "skiff_proxy_program_events_total",
            "Events read from the program ring buffer.",
            c.events,
        );
        counter(
            "skiff_proxy_program_events_suppressed_total",
            "Events not logged because of the rate limit.",
            c.events_suppressed,
        );
        counter(
            "skiff_proxy_gc_removed_total",
            "Stale socket reverse-NAT and affinity entries removed.",
            c.gc_removed,
        );
        let _ = writeln!(
            out,
            "# HELP skiff_proxy_last_sync_seconds Duration of the last sync.\n# TYPE skiff_proxy_last_sync_seconds gauge\nskiff_proxy_last_sync_seconds {}",
            c.last_sync_seconds
        );
        let _ = writeln!(
            out,
            "# HELP skiff_proxy_frontends Frontends programmed.\n# TYPE skiff_proxy_frontends gauge\nskiff_proxy_frontends {}",
            self.current.frontends.len()
        );
        let _ = writeln!(
            out,
            "# HELP skiff_proxy_backends Backends programmed.\n# TYPE skiff_proxy_backends gauge\nskiff_proxy_backends {}",
            self.current.backends.len()
        );
        if let Ok(stats) = self.lb.stats() {
            let _ = writeln!(
                out,
                "# HELP skiff_lb_program_total Per-CPU program counters, summed.\n# TYPE skiff_lb_program_total counter"
            );
            for (name, v) in LB_STATS.iter().zip(stats) {
                let _ = writeln!(out, "skiff_lb_program_total{{counter=\"{name}\"}} {v}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::{Endpoint, ServicePort};

    fn svc(
        name: &str,
        vip: [u8; 4],
        eps: &[([u8; 4], bool, bool)],
    ) -> ((ServicePortName, Protocol), ServicePort) {
        let n = ServicePortName { namespace: "d".into(), name: name.into(), port: String::new() };
        let endpoints = eps
            .iter()
            .map(|(ip, ready, term)| Endpoint {
                ip: Ipv4Addr::from(*ip),
                port: 8080,
                ready: *ready,
                serving: *ready || *term,
                terminating: *term,
                local: false,
            })
            .collect();
        (
            (n.clone(), Protocol::Tcp),
            ServicePort {
                name: n,
                protocol: Protocol::Tcp,
                port: 80,
                cluster_ip: Some(Ipv4Addr::from(vip)),
                external_ips: vec![],
                node_port: None,
                affinity_timeout_s: None,
                external_local: false,
                health_check_node_port: None,
                maglev: false,
                endpoints,
            },
        )
    }

    fn apply_all(state: &mut LbState, groups: &[OpGroup], want: &LbState) {
        // Model of the kernel maps, to check that applying the plan yields `want`.
        let mut svc: BTreeMap<SvcKey, SvcVal> = BTreeMap::new();
        for (k, f) in &state.frontends {
            svc.insert(
                *k,
                SvcVal {
                    id: f.svc_id,
                    count: u16::try_from(f.slots.len()).unwrap(),
                    flags: f.flags,
                    affinity_s: f.affinity_s,
                },
            );
            for (i, id) in f.slots.iter().enumerate() {
                svc.insert(
                    SvcKey { slot: u16::try_from(i + 1).unwrap(), ..*k },
                    SvcVal { id: *id, ..SvcVal::default() },
                );
            }
        }
        for g in groups {
            for op in &g.ops {
                match op {
                    MapOp::BackendPut(id, b) => {
                        state.backends.insert(*id, *b);
                    }
                    MapOp::BackendDel(id) => {
                        state.backends.remove(id);
                    }
                    MapOp::SlotPut(k, v) => {
                        // Make-before-break: a slot 0 may only name slots and backends that exist.
                        if k.slot == 0 {
                            for s in 1..=v.count {
                                let slot = svc
                                    .get(&SvcKey { slot: s, ..*k })
                                    .expect("slot written before slot 0");
                                assert!(
                                    state.backends.contains_key(&slot.id),
                                    "backend written before its slot"
                                );
                            }
                        }
                        svc.insert(*k, *v);
                    }
                    MapOp::SlotDel(k) => {
                        svc.remove(k);
                    }
                    MapOp::RevNatPut(..)
                    | MapOp::RevNatDel(_)
                    | MapOp::MaglevPut(..)
                    | MapOp::MaglevDel(_) => {}
                }
            }
        }
        let mut got = LbState { backends: state.backends.clone(), ..LbState::default() };
        for (k, v) in &svc {
            if k.slot == 0 {
                let slots = (1..=v.count).map(|s| svc[&SvcKey { slot: s, ..*k }].id).collect();
                got.frontends.insert(
                    *k,
                    FrontendState { svc_id: v.id, flags: v.flags, affinity_s: v.affinity_s, slots },
                );
            }
        }
        assert_eq!(
            svc.len(),
            got.frontends.values().map(|f| f.slots.len() + 1).sum::<usize>(),
            "no stale slots"
        );
        assert_eq!(&got, want);
        *state = got;
    }

    #[test]
    fn plans_apply_in_make_before_break_order_and_only_write_differences() {
        let mut ids = Ids::default();
        let mut kernel = LbState::default();
        let d1: DesiredState = [
            svc("a", [10, 96, 0, 1], &[([10, 0, 0, 1], true, false), ([10, 0, 0, 2], true, false)]),
            svc("b", [10, 96, 0, 2], &[([10, 0, 0, 2], true, false)]),
        ]
        .into_iter()
        .collect();
        let (want1, _) = lb_state(&d1, &mut ids);
        let groups = plan(&kernel, &want1);
        apply_all(&mut kernel, &groups, &want1);
        assert_eq!(want1.backends.len(), 2, "10.0.0.2:8080 shared by both services");
        ids.retain(&want1);

        // Same input: nothing to write.
        let (again, _) = lb_state(&d1, &mut ids);
        assert!(plan(&kernel, &again).is_empty());

        // One endpoint of `a` starts terminating, `b` goes away.
        let d2: DesiredState = [svc(
            "a",
            [10, 96, 0, 1],
            &[([10, 0, 0, 1], false, true), ([10, 0, 0, 2], true, false)],
        )]
        .into_iter()
        .collect();
        let (want2, _) = lb_state(&d2, &mut ids);
        let groups = plan(&kernel, &want2);
        let a_key = SvcKey::new(Ipv4Addr::new(10, 96, 0, 1), 80, IPPROTO_TCP, 0);
        assert_eq!(want2.frontends[&a_key].slots.len(), 1);
        let term =
            want2.backends.values().find(|b| b.addr() == Ipv4Addr::new(10, 0, 0, 1)).unwrap();
        assert_eq!(term.state, BACKEND_TERMINATING, "kept for existing connections");
        assert_eq!(
            want2.frontends[&a_key].svc_id, want1.frontends[&a_key].svc_id,
            "ids are stable"
        );
        apply_all(&mut kernel, &groups, &want2);
        let removed = groups
            .iter()
            .find(|g| {
                g.frontend == Some(SvcKey::new(Ipv4Addr::new(10, 96, 0, 2), 80, IPPROTO_TCP, 0))
            })
            .unwrap();
        assert_eq!(
            removed.ops[0],
            MapOp::SlotDel(SvcKey::new(Ipv4Addr::new(10, 96, 0, 2), 80, IPPROTO_TCP, 0)),
            "slot 0 first"
        );

        // Zero endpoints: a frontend with count 0 (refuses connections).
        let d3: DesiredState = [svc("a", [10, 96, 0, 1], &[])].into_iter().collect();
        let (want3, _) = lb_state(&d3, &mut ids);
        assert!(want3.frontends[&a_key].slots.is_empty());
        let groups = plan(&kernel, &want3);
        apply_all(&mut kernel, &groups, &want3);
        assert!(kernel.backends.is_empty());
    }

    /// Backends not on this node carry the REMOTE flag (the tc program SNATs NodePort flows to
    /// them); an `externalTrafficPolicy: Local` NodePort frontend names only local backends,
    /// while its ClusterIP frontend names all.
    #[test]
    fn remote_backends_are_flagged_and_local_policy_keeps_only_local_ones() {
        let (_, mut sp) = svc(
            "web",
            [10, 96, 0, 1],
            &[([10, 0, 0, 1], true, false), ([10, 0, 0, 2], true, false)],
        );
        sp.endpoints[0].local = true;
        sp.node_port = Some(30080);
        let mut ids = Ids::default();
        let part = contribution(&sp, &mut ids);
        let flags: BTreeMap<Ipv4Addr, u8> =
            part.backends.values().map(|b| (b.addr(), b.flags)).collect();
        assert_eq!(flags[&Ipv4Addr::new(10, 0, 0, 1)], 0, "local: no SNAT");
        assert_eq!(flags[&Ipv4Addr::new(10, 0, 0, 2)], BACKEND_F_REMOTE);
        let node_port = SvcKey::new(Ipv4Addr::UNSPECIFIED, 30080, IPPROTO_TCP, 0);
        let cluster_ip = SvcKey::new(Ipv4Addr::new(10, 96, 0, 1), 80, IPPROTO_TCP, 0);
        assert_eq!(part.frontends[&node_port].slots.len(), 2, "eTP Cluster: every endpoint");
        sp.external_local = true;
        let part = contribution(&sp, &mut ids);
        let local_id = part.backends.iter().find(|(_, b)| b.flags == 0).map(|(id, _)| *id);
        assert_eq!(part.frontends[&node_port].slots, local_id.into_iter().collect::<Vec<_>>());
        assert_eq!(part.frontends[&cluster_ip].slots.len(), 2, "ClusterIP: every endpoint");
        let internal = SvcKey { scope: SCOPE_INTERNAL, ..node_port };
        assert_eq!(part.frontends[&internal].slots.len(), 2, "node-local clients: every endpoint");
        assert_ne!(part.frontends[&internal].svc_id, part.frontends[&node_port].svc_id);
    }
}
