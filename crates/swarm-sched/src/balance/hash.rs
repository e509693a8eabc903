//! Rendezvous (highest random weight) hashing: Thaler & Ravishankar, "Using
//! name-based mappings to increase hit rates", IEEE/ACM ToN 1998; weighted
//! form `w / −ln(u)` from Schindelhauer & Schomaker, "Weighted distributed
//! hash tables", SPAA 2005 (also Resch, "New hashing algorithms for data
//! storage", 2015).
//!
//! Each instance scores every key; the key goes to the highest score, and
//! the descending scores are the key's fallback order. Why this and not a
//! ring with virtual nodes: removing an instance moves exactly the keys it
//! held and nothing else, adding one takes ~1/N from each, without tuning
//! a vnode count, and the balance is exact in expectation. Its O(N) per
//! pick is nothing next to the O(N) scan for healthy instances a pick does
//! anyway, for the tens of instances a department has.
//!
//! The hashes are our own (FNV-1a, then the splitmix64 finaliser) rather
//! than `std`'s `DefaultHasher`, whose output may change between Rust
//! releases: keys must map the same way on every node and after upgrades.

/// FNV-1a over `bytes`, then mixed so nearby strings spread.
pub(super) fn hash_str(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

/// splitmix64's finaliser (Steele, Lea & Flood, OOPSLA 2014).
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The score of instance `id_hash` (weight `weight`) for key `key_hash`;
/// higher wins.
pub(super) fn score(key_hash: u64, id_hash: u64, weight: u32) -> f64 {
    let h = mix(key_hash ^ mix(id_hash.wrapping_add(0x9e37_79b9_7f4a_7c15)));
    // A uniform in (0, 1) from the top 53 bits; never 0 or 1.
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    f64::from(weight.max(1)) / -u.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_stable_across_builds() {
        // Pinned: a change here remaps every sticky key in production.
        // Checked against an independent implementation (Python).
        assert_eq!(hash_str(""), 0xf52a_15e9_a9b5_e89b);
        assert_eq!(hash_str("conv-1"), 0x6255_d454_b019_94c2);
        assert_ne!(hash_str("conv-1"), hash_str("conv-2"));
    }

    #[test]
    fn weighted_scores_split_keys_by_weight() {
        let ids = [hash_str("a"), hash_str("b"), hash_str("c")];
        let weights = [1, 2, 1];
        let mut wins = [0u32; 3];
        for k in 0..20_000 {
            let kh = hash_str(&format!("key-{k}"));
            let best = (0..3)
                .max_by(|&i, &j| {
                    score(kh, ids[i], weights[i]).total_cmp(&score(kh, ids[j], weights[j]))
                })
                .unwrap();
            wins[best] += 1;
        }
        // Expected 5000 / 10000 / 5000.
        assert!((4700..5300).contains(&wins[0]), "{wins:?}");
        assert!((9600..10400).contains(&wins[1]), "{wins:?}");
        assert!((4700..5300).contains(&wins[2]), "{wins:?}");
    }
}
