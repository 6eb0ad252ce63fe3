//! The iptables proxier: kube-proxy's rule structure, written with `iptables-restore --noflush`.
//!
//! [`Rules::generate`] is pure: desired state in, chains and rules out (golden-tested).
//! Chains: `KUBE-SERVICES` (one jump per frontend), `KUBE-SVC-*` (one `statistic --mode random`
//! rule per endpoint), `KUBE-SEP-*` (DNAT), `KUBE-EXT-*` (external IPs and `NodePorts`; with
//! `externalTrafficPolicy: Local` via `KUBE-SVL-*` to local endpoints only), `KUBE-NODEPORTS`,
//! `KUBE-MARK-MASQ`, `KUBE-POSTROUTING`; in the filter table `REJECT` for Services without
//! endpoints. Chain names are kube-proxy's: `base32(sha256(name + protocol [+ endpoint]))[..16]`.
//! [`IptablesProxier`] writes everything on the first sync and afterwards only the chains of
//! Service ports that changed (KUBE-SERVICES and KUBE-NODEPORTS are always rewritten).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::kernel::iptables::{Iptables, IptablesBackend};

use super::{DesiredState, Endpoint, Proxier, ProxyError, ServicePort, ServicePortKey, SyncReport};

const MASQ_MARK: &str = "0x4000/0x4000";

/// Settings of the rule generator.
#[derive(Debug, Clone, Default)]
pub struct IptablesConfig {
    /// Pod CIDR of the cluster: traffic to a ClusterIP from outside it is masqueraded.
    pub cluster_cidr: Option<String>,
    /// Restore the whole `filter` and `nat` tables (flushing, built-in chains and jumps
    /// included) on every sync instead of `--noflush` chain updates. Only for a namespace the
    /// proxy owns alone (the benchmark's node): it replaces every other rule in those tables.
    pub full_tables: bool,
}

fn base32(data: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let (mut buf, mut bits) = (0u32, 0u32);
    for b in data {
        buf = (buf << 8) | u32::from(*b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((buf >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((buf << (5 - bits)) & 31) as usize]));
    }
    out
}

fn chain_hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
    }
    base32(&h.finalize())[..16].to_owned()
}

/// kube-proxy's `KUBE-SVC-` suffix for a Service port.
fn svc_hash(sp: &ServicePort) -> String {
    chain_hash(&[&sp.name.to_string(), sp.protocol.lower()])
}

fn sep_chain(sp: &ServicePort, ep: &Endpoint) -> String {
    format!(
        "KUBE-SEP-{}",
        chain_hash(&[&sp.name.to_string(), sp.protocol.lower(), &ep.to_string()])
    )
}

/// The nat chains and rules of one Service port, plus its lines in the shared chains.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceRules {
    /// Own nat chains (KUBE-SVC/SEP/EXT/SVL) in order, with their rules.
    pub chains: Vec<(String, Vec<String>)>,
    pub services: Vec<String>,
    pub nodeports: Vec<String>,
    pub filter_services: Vec<String>,
    pub filter_external: Vec<String>,
}

/// The complete rule set.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    pub per_service: BTreeMap<ServicePortKey, ServiceRules>,
}

fn comment(text: &str) -> String {
    if text.contains(' ') {
        format!("-m comment --comment \"{text}\"")
    } else {
        format!("-m comment --comment {text}")
    }
}

fn probability(n: usize, i: usize) -> String {
    #[expect(clippy::cast_precision_loss, reason = "endpoint counts are small")]
    let p = 1.0 / (n - i) as f64;
    format!("{p:.10}")
}

fn endpoint_rules(sp: &ServicePort, chain: &str, eps: &[&Endpoint], out: &mut Vec<String>) {
    let name = sp.name.to_string();
    if let Some(t) = sp.affinity_timeout_s {
        for ep in eps {
            let sep = sep_chain(sp, ep);
            out.push(format!(
                "-A {chain} {} -m recent --name {sep} --rcheck --seconds {t} --reap -j {sep}",
                comment(&format!("{name} -> {ep}"))
            ));
        }
    }
    for (i, ep) in eps.iter().enumerate() {
        let sep = sep_chain(sp, ep);
        if i + 1 < eps.len() {
            out.push(format!(
                "-A {chain} {} -m statistic --mode random --probability {} -j {sep}",
                comment(&format!("{name} -> {ep}")),
                probability(eps.len(), i)
            ));
        } else {
            out.push(format!("-A {chain} {} -j {sep}", comment(&format!("{name} -> {ep}"))));
        }
    }
}

impl ServiceRules {
    #[expect(
        clippy::too_many_lines,
        reason = "one kube-proxy chain layout, easier to check against upstream in one piece"
    )]
    fn generate(sp: &ServicePort, cfg: &IptablesConfig) -> Self {
        let mut r = ServiceRules::default();
        let name = sp.name.to_string();
        let proto = sp.protocol.lower();
        let hash = svc_hash(sp);
        let svc = format!("KUBE-SVC-{hash}");
        let ext = format!("KUBE-EXT-{hash}");
        let svl = format!("KUBE-SVL-{hash}");
        let usable = sp.usable_endpoints();
        let local: Vec<&Endpoint> = usable.iter().copied().filter(|e| e.local).collect();
        let has_external = !sp.external_ips.is_empty() || sp.node_port.is_some();
        let Some(cluster_ip) = sp.cluster_ip else { return r };
        let dport = sp.port;

        if usable.is_empty() {
            r.filter_services.push(format!(
                "-A KUBE-SERVICES {} -m {proto} -p {proto} -d {cluster_ip} --dport {dport} -j REJECT",
                comment(&format!("{name} has no endpoints"))
            ));
            for ip in &sp.external_ips {
                r.filter_external.push(format!(
                    "-A KUBE-EXTERNAL-SERVICES {} -m {proto} -p {proto} -d {ip} --dport {dport} -j REJECT",
                    comment(&format!("{name} has no endpoints"))
                ));
            }
            if let Some(np) = sp.node_port {
                r.filter_external.push(format!(
                    "-A KUBE-EXTERNAL-SERVICES {} -m addrtype --dst-type LOCAL -m {proto} -p {proto} --dport {np} -j REJECT",
                    comment(&format!("{name} has no endpoints"))
                ));
            }
            return r;
        }
        if sp.external_local && has_external && local.is_empty() {
            for ip in &sp.external_ips {
                r.filter_external.push(format!(
                    "-A KUBE-EXTERNAL-SERVICES {} -m {proto} -p {proto} -d {ip} --dport {dport} -j DROP",
                    comment(&format!("{name} has no local endpoints"))
                ));
            }
            if let Some(np) = sp.node_port {
                r.filter_external.push(format!(
                    "-A KUBE-EXTERNAL-SERVICES {} -m addrtype --dst-type LOCAL -m {proto} -p {proto} --dport {np} -j DROP",
                    comment(&format!("{name} has no local endpoints"))
                ));
            }
        }

        r.services.push(format!(
            "-A KUBE-SERVICES {} -m {proto} -p {proto} -d {cluster_ip} --dport {dport} -j {svc}",
            comment(&format!("{name} cluster IP"))
        ));
        for ip in &sp.external_ips {
            r.services.push(format!(
                "-A KUBE-SERVICES {} -m {proto} -p {proto} -d {ip} --dport {dport} -j {ext}",
                comment(&format!("{name} external IP"))
            ));
        }
        if let Some(np) = sp.node_port {
            r.nodeports.push(format!(
                "-A KUBE-NODEPORTS {} -m {proto} -p {proto} --dport {np} -j {ext}",
                comment(&name)
            ));
        }

        let mut svc_rules = Vec::new();
        if let Some(cidr) = &cfg.cluster_cidr {
            svc_rules.push(format!(
                "-A {svc} {} -m {proto} -p {proto} -d {cluster_ip} --dport {dport} ! -s {cidr} -j KUBE-MARK-MASQ",
                comment(&format!("{name} cluster IP"))
            ));
        }
        endpoint_rules(sp, &svc, &usable, &mut svc_rules);
        r.chains.push((svc.clone(), svc_rules));

        if has_external {
            let mut ext_rules = Vec::new();
            if sp.external_local {
                if let Some(cidr) = &cfg.cluster_cidr {
                    ext_rules.push(format!(
                        "-A {ext} {} -s {cidr} -j {svc}",
                        comment(&format!("pod traffic for {name} external destinations"))
                    ));
                }
                ext_rules.push(format!(
                    "-A {ext} {} -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ",
                    comment(&format!("masquerade LOCAL traffic for {name} external destinations"))
                ));
                ext_rules.push(format!(
                    "-A {ext} {} -m addrtype --src-type LOCAL -j {svc}",
                    comment(&format!("route LOCAL traffic for {name} external destinations"))
                ));
                ext_rules.push(format!("-A {ext} -j {svl}"));
                r.chains.push((ext.clone(), ext_rules));
                let mut local_rules = Vec::new();
                endpoint_rules(sp, &svl, &local, &mut local_rules);
                r.chains.push((svl, local_rules));
            } else {
                ext_rules.push(format!(
                    "-A {ext} {} -j KUBE-MARK-MASQ",
                    comment(&format!("masquerade traffic for {name} external destinations"))
                ));
                ext_rules.push(format!("-A {ext} -j {svc}"));
                r.chains.push((ext.clone(), ext_rules));
            }
        }

        for ep in &usable {
            let sep = sep_chain(sp, ep);
            let recent = if sp.affinity_timeout_s.is_some() {
                format!("-m recent --name {sep} --set ")
            } else {
                String::new()
            };
            r.chains.push((
                sep.clone(),
                vec![
                    format!("-A {sep} {} -s {} -j KUBE-MARK-MASQ", comment(&name), ep.ip),
                    format!(
                        "-A {sep} {} {recent}-m {proto} -p {proto} -j DNAT --to-destination {ep}",
                        comment(&name)
                    ),
                ],
            ));
        }
        r
    }
}

/// Chains that always exist, per table.
const FILTER_CHAINS: [&str; 4] =
    ["KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD", "KUBE-NODEPORTS"];
const NAT_CHAINS: [&str; 4] =
    ["KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"];

/// Jumps from the built-in chains, as `(table, chain, rule)`.
pub const JUMPS: [(&str, &str, &[&str]); 8] = [
    (
        "filter",
        "INPUT",
        &[
            "-m",
            "conntrack",
            "--ctstate",
            "NEW",
            "-m",
            "comment",
            "--comment",
            "kubernetes externally-visible service portals",
            "-j",
            "KUBE-EXTERNAL-SERVICES",
        ],
    ),
    (
        "filter",
        "FORWARD",
        &[
            "-m",
            "conntrack",
            "--ctstate",
            "NEW",
            "-m",
            "comment",
            "--comment",
            "kubernetes externally-visible service portals",
            "-j",
            "KUBE-EXTERNAL-SERVICES",
        ],
    ),
    (
        "filter",
        "FORWARD",
        &[
            "-m",
            "conntrack",
            "--ctstate",
            "NEW",
            "-m",
            "comment",
            "--comment",
            "kubernetes service portals",
            "-j",
            "KUBE-SERVICES",
        ],
    ),
    (
        "filter",
        "OUTPUT",
        &[
            "-m",
            "conntrack",
            "--ctstate",
            "NEW",
            "-m",
            "comment",
            "--comment",
            "kubernetes service portals",
            "-j",
            "KUBE-SERVICES",
        ],
    ),
    (
        "filter",
        "FORWARD",
        &["-m", "comment", "--comment", "kubernetes forwarding rules", "-j", "KUBE-FORWARD"],
    ),
    (
        "nat",
        "PREROUTING",
        &["-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES"],
    ),
    (
        "nat",
        "OUTPUT",
        &["-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES"],
    ),
    (
        "nat",
        "POSTROUTING",
        &["-m", "comment", "--comment", "kubernetes postrouting rules", "-j", "KUBE-POSTROUTING"],
    ),
];

fn fixed_nat_rules(out: &mut String) {
    out.push_str("-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n");
    out.push_str("-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n");
    out.push_str("-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n");
    let _ = writeln!(
        out,
        "-A KUBE-MARK-MASQ -j MARK --or-mark {}",
        MASQ_MARK.split('/').next().unwrap_or("0x4000")
    );
}

fn fixed_filter_rules(out: &mut String) {
    out.push_str("-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n");
    let _ = writeln!(
        out,
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark {MASQ_MARK} -j ACCEPT"
    );
    out.push_str("-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n");
}

impl Rules {
    pub fn generate(desired: &DesiredState, cfg: &IptablesConfig) -> Self {
        Rules {
            per_service: desired
                .iter()
                .map(|(k, sp)| (k.clone(), ServiceRules::generate(sp, cfg)))
                .collect(),
        }
    }

    /// All nat chains owned by Service ports.
    pub fn service_chains(&self) -> BTreeSet<String> {
        self.per_service.values().flat_map(|r| r.chains.iter().map(|(c, _)| c.clone())).collect()
    }

    /// `iptables-restore --noflush` input. `changed`: Service ports whose chains are written
    /// (`None`: all); `stale`: chains to delete. KUBE-SERVICES, KUBE-NODEPORTS and the filter
    /// chains are always written whole.
    pub fn render(
        &self,
        changed: Option<&BTreeSet<ServicePortKey>>,
        stale: &BTreeSet<String>,
    ) -> String {
        let mut out = String::with_capacity(256 * self.per_service.len() + 1024);
        out.push_str("*filter\n");
        for c in FILTER_CHAINS {
            let _ = writeln!(out, ":{c} - [0:0]");
        }
        fixed_filter_rules(&mut out);
        for r in self.per_service.values() {
            for line in r.filter_services.iter().chain(&r.filter_external) {
                out.push_str(line);
                out.push('\n');
            }
        }
        out.push_str("COMMIT\n*nat\n");
        for c in NAT_CHAINS {
            let _ = writeln!(out, ":{c} - [0:0]");
        }
        let written = |k: &ServicePortKey| changed.is_none_or(|c| c.contains(k));
        for (k, r) in &self.per_service {
            if written(k) {
                for (c, _) in &r.chains {
                    let _ = writeln!(out, ":{c} - [0:0]");
                }
            }
        }
        for c in stale {
            let _ = writeln!(out, ":{c} - [0:0]");
        }
        fixed_nat_rules(&mut out);
        for r in self.per_service.values() {
            for line in &r.services {
                out.push_str(line);
                out.push('\n');
            }
        }
        out.push_str("-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n");
        for r in self.per_service.values() {
            for line in &r.nodeports {
                out.push_str(line);
                out.push('\n');
            }
        }
        for (k, r) in &self.per_service {
            if written(k) {
                for (_, rules) in &r.chains {
                    for line in rules {
                        out.push_str(line);
                        out.push('\n');
                    }
                }
            }
        }
        for c in stale {
            let _ = writeln!(out, "-X {c}");
        }
        out.push_str("COMMIT\n");
        out
    }
}

fn quote(arg: &str) -> String {
    if arg.contains(' ') { format!("\"{arg}\"") } else { arg.to_owned() }
}

impl Rules {
    /// Complete `filter` and `nat` tables for a flushing `iptables-restore`: built-in chains,
    /// the jumps into kube-proxy's chains, and every rule.
    pub fn render_tables(&self) -> String {
        let body = self.render(None, &BTreeSet::new());
        let mut out = String::with_capacity(body.len() + 1024);
        let mut table = "";
        for line in body.lines() {
            if line == "COMMIT" {
                // Jumps last: every chain they name is declared by now.
                for (t, chain, rule) in JUMPS {
                    if t == table {
                        let args: Vec<String> = rule.iter().map(|a| quote(a)).collect();
                        let _ = writeln!(out, "-A {chain} {}", args.join(" "));
                    }
                }
            }
            out.push_str(line);
            out.push('\n');
            let builtins: &[&str] = match line {
                "*filter" => &["INPUT", "FORWARD", "OUTPUT"],
                "*nat" => &["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"],
                _ => continue,
            };
            table = &line[1..];
            for c in builtins {
                let _ = writeln!(out, ":{c} ACCEPT [0:0]");
            }
        }
        out
    }
}

/// Service ports whose rules differ between two rule sets (added, changed or removed).
fn changed_services(old: &Rules, new: &Rules) -> BTreeSet<ServicePortKey> {
    let mut out: BTreeSet<ServicePortKey> = new
        .per_service
        .iter()
        .filter(|(k, r)| old.per_service.get(*k).is_none_or(|o| o.chains != r.chains))
        .map(|(k, _)| k.clone())
        .collect();
    out.extend(old.per_service.keys().filter(|k| !new.per_service.contains_key(*k)).cloned());
    out
}

/// kube-proxy-style Service routing through iptables.
#[derive(Debug)]
pub struct IptablesProxier {
    ipt: Iptables,
    cfg: IptablesConfig,
    last: Option<Rules>,
    syncs: u64,
    failures: u64,
    last_sync_seconds: f64,
    /// Chains left by an earlier agent, deleted on the first sync.
    leftovers: BTreeSet<String>,
}

impl IptablesProxier {
    /// Installs the jumps from the built-in chains and notes chains an earlier run left.
    pub fn start(ipt: Iptables, cfg: IptablesConfig) -> Result<Self, ProxyError> {
        let saved = ipt.save("nat")?;
        let leftovers = saved
            .lines()
            .filter_map(|l| l.strip_prefix(':'))
            .filter_map(|l| l.split_whitespace().next())
            .filter(|c| {
                ["KUBE-SVC-", "KUBE-SEP-", "KUBE-EXT-", "KUBE-SVL-"]
                    .iter()
                    .any(|p| c.starts_with(p))
            })
            .map(str::to_owned)
            .collect();
        // Create the chains before jumping to them.
        let empty = Rules::default().render(None, &BTreeSet::new());
        ipt.restore(&empty, true)?;
        for (table, chain, rule) in JUMPS {
            ipt.ensure_rule(table, chain, rule)?;
        }
        Ok(IptablesProxier {
            ipt,
            cfg,
            last: None,
            syncs: 0,
            failures: 0,
            last_sync_seconds: 0.0,
            leftovers,
        })
    }

    pub fn backend(&self) -> IptablesBackend {
        self.ipt.backend()
    }

    /// Removes every rule and chain this proxier owns (the jumps first).
    pub fn cleanup(self) -> Result<(), ProxyError> {
        for (table, chain, rule) in JUMPS {
            self.ipt.delete_rule(table, chain, rule)?;
        }
        let mut chains: BTreeSet<String> =
            self.last.as_ref().map(Rules::service_chains).unwrap_or_default();
        chains.extend(self.leftovers.iter().cloned());
        let mut text = String::from("*filter\n");
        for c in FILTER_CHAINS {
            let _ = writeln!(text, ":{c} - [0:0]");
        }
        for c in FILTER_CHAINS {
            let _ = writeln!(text, "-X {c}");
        }
        text.push_str("COMMIT\n*nat\n");
        for c in NAT_CHAINS.iter().map(|c| (*c).to_owned()).chain(chains.iter().cloned()) {
            let _ = writeln!(text, ":{c} - [0:0]");
        }
        for c in NAT_CHAINS.iter().map(|c| (*c).to_owned()).chain(chains) {
            let _ = writeln!(text, "-X {c}");
        }
        text.push_str("COMMIT\n");
        self.ipt.restore(&text, true)?;
        Ok(())
    }
}

impl Proxier for IptablesProxier {
    fn mode(&self) -> &'static str {
        "iptables"
    }

    fn sync(&mut self, desired: &DesiredState) -> Result<SyncReport, ProxyError> {
        let started = Instant::now();
        let rules = Rules::generate(desired, &self.cfg);
        let now_chains = rules.service_chains();
        let (text, report) = match &self.last {
            _ if self.cfg.full_tables => {
                let report = SyncReport { changed: desired.len(), ..SyncReport::default() };
                (rules.render_tables(), report)
            }
            None => {
                let stale: BTreeSet<String> =
                    self.leftovers.difference(&now_chains).cloned().collect();
                let report = SyncReport { changed: desired.len(), ..SyncReport::default() };
                (rules.render(None, &stale), report)
            }
            Some(last) => {
                let changed = changed_services(last, &rules);
                let stale: BTreeSet<String> =
                    last.service_chains().difference(&now_chains).cloned().collect();
                let removed =
                    last.per_service.keys().filter(|k| !rules.per_service.contains_key(*k)).count();
                let report =
                    SyncReport { changed: changed.len() - removed, removed, failed: Vec::new() };
                (rules.render(Some(&changed), &stale), report)
            }
        };
        if let Err(e) = self.ipt.restore(&text, !self.cfg.full_tables) {
            self.failures += 1;
            // Next time write everything again.
            self.last = None;
            return Err(e.into());
        }
        self.leftovers.clear();
        self.last = Some(rules);
        self.syncs += 1;
        self.last_sync_seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }

    fn metrics(&self) -> String {
        format!(
            "# HELP skiff_proxy_syncs_total Syncs of the iptables proxier.\n# TYPE skiff_proxy_syncs_total counter\nskiff_proxy_syncs_total {}\n\
             # HELP skiff_proxy_sync_errors_total Failed iptables-restore runs.\n# TYPE skiff_proxy_sync_errors_total counter\nskiff_proxy_sync_errors_total {}\n\
             # HELP skiff_proxy_last_sync_seconds Duration of the last sync.\n# TYPE skiff_proxy_last_sync_seconds gauge\nskiff_proxy_last_sync_seconds {}\n",
            self.syncs, self.failures, self.last_sync_seconds
        )
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use expect_test::expect_file;

    use super::*;
    use crate::proxy::{Protocol, ServicePortName};

    fn ep(ip: [u8; 4], ready: bool, terminating: bool, local: bool) -> Endpoint {
        Endpoint {
            ip: Ipv4Addr::from(ip),
            port: 8080,
            ready,
            serving: ready || terminating,
            terminating,
            local,
        }
    }

    fn sp(name: &str, proto: Protocol, vip: [u8; 4], endpoints: Vec<Endpoint>) -> ServicePort {
        ServicePort {
            name: ServicePortName {
                namespace: "default".into(),
                name: name.into(),
                port: "p".into(),
            },
            protocol: proto,
            port: 80,
            cluster_ip: Some(Ipv4Addr::from(vip)),
            external_ips: vec![],
            node_port: None,
            affinity_timeout_s: None,
            external_local: false,
            health_check_node_port: None,
            maglev: false,
            endpoints,
        }
    }

    fn desired(services: Vec<ServicePort>) -> DesiredState {
        services.into_iter().map(|s| ((s.name.clone(), s.protocol), s)).collect()
    }

    fn sample() -> DesiredState {
        let mut web = sp(
            "web",
            Protocol::Tcp,
            [10, 96, 0, 10],
            vec![
                ep([10, 244, 1, 2], true, false, true),
                ep([10, 244, 1, 3], true, false, false),
                ep([10, 244, 1, 4], false, true, false),
            ],
        );
        web.external_ips = vec![Ipv4Addr::new(192, 0, 2, 10)];
        web.node_port = Some(30080);
        let mut sticky = sp(
            "sticky",
            Protocol::Tcp,
            [10, 96, 0, 11],
            vec![ep([10, 244, 2, 2], true, false, false), ep([10, 244, 2, 3], true, false, false)],
        );
        sticky.affinity_timeout_s = Some(10_800);
        let mut local = sp(
            "local",
            Protocol::Tcp,
            [10, 96, 0, 12],
            vec![ep([10, 244, 3, 2], true, false, true), ep([10, 244, 3, 3], true, false, false)],
        );
        local.node_port = Some(30081);
        local.external_local = true;
        let dns = sp(
            "dns",
            Protocol::Udp,
            [10, 96, 0, 13],
            vec![ep([10, 244, 4, 2], true, false, false)],
        );
        let empty = sp("empty", Protocol::Tcp, [10, 96, 0, 14], vec![]);
        desired(vec![web, sticky, local, dns, empty])
    }

    #[test]
    fn full_rule_set_matches_golden() {
        let cfg = IptablesConfig { cluster_cidr: Some("10.244.0.0/16".into()), full_tables: false };
        let text = Rules::generate(&sample(), &cfg).render(None, &BTreeSet::new());
        expect_file!["iptables_golden_full.txt"].assert_eq(&text);
    }

    #[test]
    fn partial_sync_writes_only_changed_chains_and_deletes_stale_ones() {
        let cfg = IptablesConfig::default();
        let before = sample();
        let old = Rules::generate(&before, &cfg);
        let mut after = before.clone();
        let key = after.keys().find(|k| k.0.name == "dns").unwrap().clone();
        after.get_mut(&key).unwrap().endpoints.push(ep([10, 244, 4, 3], true, false, false));
        let gone = after.keys().find(|k| k.0.name == "sticky").unwrap().clone();
        after.remove(&gone);
        let new = Rules::generate(&after, &cfg);
        let changed = changed_services(&old, &new);
        assert_eq!(changed.len(), 2, "{changed:?}");
        let stale: BTreeSet<String> =
            old.service_chains().difference(&new.service_chains()).cloned().collect();
        expect_file!["iptables_golden_partial.txt"].assert_eq(&new.render(Some(&changed), &stale));
    }

    #[test]
    fn chain_names_follow_kube_proxy() {
        // base32 of sha256, 16 characters, as kube-proxy's portProtoHash.
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
        let s = sp("web", Protocol::Tcp, [10, 96, 0, 10], vec![]);
        assert_eq!(svc_hash(&s).len(), 16);
    }
}
