//! Maglev consistent hashing (Eisenbud et al., NSDI 2016), built in userspace: a lookup table of
//! prime size `M` in which every backend owns about `M / N` entries, and removing one backend
//! moves only the entries it owned (≈ 1/N of the table).
//!
//! Deterministic: the same backend names, seed and `M` give the same table on every node and
//! every agent version (the hash is defined here, not taken from `std`).

/// Table sizes (primes) the agent accepts; `M ≥ 100·N` keeps the imbalance near 1 %.
pub const TABLE_SIZES: [u32; 10] = [251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131_071];

/// 64-bit FNV-1a over `seed || data`, finished with a `SplitMix64` mix for good high bits.
fn hash(seed: u64, data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seed.to_le_bytes().iter().chain(data) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Builds the table: entry `i` holds an index into `backends`. `m` must be prime (one of
/// [`TABLE_SIZES`]); an empty backend list gives an empty table.
pub fn build_table(backends: &[&str], seed: u64, m: u32) -> Vec<u32> {
    let n = backends.len();
    if n == 0 || m < 2 {
        return Vec::new();
    }
    let m64 = u64::from(m);
    let prefs: Vec<(u64, u64)> = backends
        .iter()
        .map(|b| {
            let offset = hash(seed, b.as_bytes()) % m64;
            let skip = hash(seed ^ 0x9e37_79b9_7f4a_7c15, b.as_bytes()) % (m64 - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; n];
    let mut table = vec![u32::MAX; m as usize];
    let mut filled = 0usize;
    'fill: loop {
        for (i, (offset, skip)) in prefs.iter().enumerate() {
            let mut c = (offset + next[i] * skip) % m64;
            while table[usize::try_from(c).unwrap_or(0)] != u32::MAX {
                next[i] += 1;
                c = (offset + next[i] * skip) % m64;
            }
            table[usize::try_from(c).unwrap_or(0)] = u32::try_from(i).unwrap_or(u32::MAX);
            next[i] += 1;
            filled += 1;
            if filled == m as usize {
                break 'fill;
            }
        }
    }
    table
}

/// The per-flow hash of `ebpf/tc_nodeport.c` (`flow_hash`), for checking which backend a flow
/// must reach: `table[flow_hash(..) % M]`. Addresses and ports as on the wire.
pub fn flow_hash(
    saddr: std::net::Ipv4Addr,
    daddr: std::net::Ipv4Addr,
    sport: u16,
    dport: u16,
    proto: u8,
) -> u32 {
    // The program reads the network-order fields as native integers; do the same.
    let s = u64::from(u32::from_ne_bytes(saddr.octets()));
    let d = u64::from(u32::from_ne_bytes(daddr.octets()));
    let sp = u64::from(u16::from_ne_bytes(sport.to_be_bytes()));
    let dp = u64::from(u16::from_ne_bytes(dport.to_be_bytes()));
    let mut h = (s << 32) | d;
    h ^= ((sp << 24) | (dp << 8) | u64::from(proto)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    #[expect(clippy::cast_possible_truncation, reason = "the program keeps the low 32 bits too")]
    let low = h as u32;
    low
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.244.{}.{}:8080", i / 200, i % 200 + 2)).collect()
    }

    #[test]
    fn table_is_balanced_and_deterministic() {
        let backends = names(10);
        let refs: Vec<&str> = backends.iter().map(String::as_str).collect();
        let t = build_table(&refs, 42, 1021);
        assert_eq!(t, build_table(&refs, 42, 1021));
        let mut counts = [0usize; 10];
        for e in &t {
            counts[*e as usize] += 1;
        }
        // M/N = 102.1; Maglev guarantees at most one entry of difference per backend pass.
        assert!(counts.iter().all(|c| (101..=103).contains(c)), "{counts:?}");
    }

    #[test]
    fn removing_a_backend_moves_only_its_entries() {
        for n in [3usize, 10, 50] {
            let backends = names(n);
            let refs: Vec<&str> = backends.iter().map(String::as_str).collect();
            let before = build_table(&refs, 7, 16381);
            let removed = n / 2;
            let after_refs: Vec<&str> =
                refs.iter().enumerate().filter(|(i, _)| *i != removed).map(|(_, b)| *b).collect();
            let after = build_table(&after_refs, 7, 16381);
            let moved = before
                .iter()
                .zip(&after)
                .filter(|(b, a)| refs[**b as usize] != after_refs[**a as usize])
                .count();
            let owned = before.iter().filter(|b| **b as usize == removed).count();
            // Entries of the removed backend must move; Maglev moves a few others too (paper:
            // small); allow up to twice the minimum.
            assert!(
                moved >= owned && moved <= 2 * owned + 16381 / 100,
                "n={n} moved={moved} owned={owned}"
            );
        }
    }
}
