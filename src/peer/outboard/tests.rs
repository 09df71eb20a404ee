//! Round trips and tampering for verified ranges, and the outboard cache's damage handling.

use super::*;
use bao_tree::io::sync::DecodeResponseIter;
use bao_tree::io::BaoContentItem;

const G: u64 = GROUP_BYTES;

fn data(size: u64, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..size).map(|_| rng.u8(..)).collect()
}

/// Verifies `groups` of `bytes` through proof + data, returning the delivered bytes in order.
fn fetch(
    root: FileHash,
    size: u64,
    groups: Range<u64>,
    proof: &[u8],
    body: &[u8],
    slice: usize,
) -> Result<Vec<(u64, Vec<u8>)>, RangeError> {
    let mut v = RangeVerifier::new(root, size, groups, proof)?;
    let mut got = Vec::new();
    let mut sink = |off: u64, b: &[u8]| {
        got.push((off, b.to_vec()));
        Ok(())
    };
    v.handle_data(&[], &mut sink).map_err(unwrap_range)?;
    for part in body.chunks(slice.max(1)) {
        v.handle_data(part, &mut sink).map_err(unwrap_range)?;
    }
    assert!(v.is_complete(), "all groups delivered");
    Ok(got)
}

fn unwrap_range(e: VerifyError) -> RangeError {
    match e {
        VerifyError::Range(r) => r,
        VerifyError::Sink(e) => panic!("sink: {e}"),
    }
}

fn proof_of(ob: &impl Outboard, groups: Range<u64>) -> Vec<u8> {
    let mut p = Vec::new();
    encode_proof(ob, groups, &mut p).unwrap();
    p
}

/// The ranges worth checking for a file of `n` groups: all of them when few, else every
/// boundary-touching one.
fn ranges(n: u64) -> Vec<Range<u64>> {
    if n <= 6 {
        let mut v = Vec::new();
        for a in 0..n {
            for b in a + 1..=n {
                v.push(a..b);
            }
        }
        return v;
    }
    let mut v = vec![0..n, 0..1, n - 1..n, 0..n / 2, n / 2..n, 1..n - 1];
    for k in [1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65] {
        if k < n {
            v.push(k..k + 1);
            v.push(k - 1..(k + 1).min(n));
            v.push(k..n);
        }
    }
    v
}

const SIZES: &[u64] = &[0, 1, G - 1, G, G + 1, 2 * G, 3 * G + 5, 5 * 1024 * 1024 + 7];

#[test]
fn the_root_is_the_files_blake3_hash() {
    for &size in SIZES {
        let d = data(size, size);
        let (root, ob) = compute_in_memory(&d);
        assert_eq!(root, FileHash::of(&d), "size {size}");
        assert_eq!(ob.data.len() as u64, outboard_len(size));
        // About 64 bytes per 16 KiB group: 0.4% of the file.
        assert_eq!(outboard_len(size), (group_count(size) - 1) * 64);
    }
}

#[test]
fn every_range_round_trips_in_any_slicing() {
    for &size in SIZES {
        let d = data(size, size + 1);
        let (root, ob) = compute_in_memory(&d);
        let n = group_count(size);
        for groups in ranges(n) {
            let proof = proof_of(&ob, groups.clone());
            assert_eq!(proof.len(), proof_len(size, groups.clone()).unwrap());
            let bytes = group_bytes(size, groups.clone());
            let body = &d[bytes.start as usize..bytes.end as usize];
            for slice in [1usize, 1000, G as usize, 1 << 20] {
                if slice == 1 && body.len() > 4 * G as usize {
                    continue; // byte at a time over megabytes adds nothing but time
                }
                let got = fetch(root, size, groups.clone(), &proof, body, slice).unwrap();
                let mut expect_off = bytes.start;
                for (off, b) in &got {
                    assert_eq!(*off, expect_off);
                    assert_eq!(&b[..], &d[*off as usize..*off as usize + b.len()]);
                    expect_off += b.len() as u64;
                }
                assert_eq!(expect_off, bytes.end, "size {size} groups {groups:?}");
                assert_eq!(got.len() as u64, groups.end - groups.start);
            }
        }
    }
}

#[test]
fn the_proof_is_bao_trees_encoding_without_the_data() {
    // Interleaving our proof and data must give exactly what bao-tree's own decoder accepts.
    for &size in SIZES {
        let d = data(size, 7);
        let (root, ob) = compute_in_memory(&d);
        for groups in ranges(group_count(size)) {
            let mut encoded = Vec::new();
            let cr = chunk_ranges(&groups);
            bao_tree::io::sync::encode_ranges_validated(&d[..], &ob, &cr, &mut encoded).unwrap();
            let mut parents = Vec::new();
            let mut leaves = Vec::new();
            let it =
                DecodeResponseIter::new(blake3::Hash::from(root.0), tree(size), &encoded[..], &cr);
            for item in it {
                match item.unwrap() {
                    BaoContentItem::Parent(p) => {
                        parents.extend_from_slice(p.pair.0.as_bytes());
                        parents.extend_from_slice(p.pair.1.as_bytes());
                    }
                    BaoContentItem::Leaf(l) => leaves.extend_from_slice(&l.data),
                }
            }
            assert_eq!(
                parents,
                proof_of(&ob, groups.clone()),
                "size {size} {groups:?}"
            );
            let bytes = group_bytes(size, groups);
            assert_eq!(leaves, &d[bytes.start as usize..bytes.end as usize]);
        }
    }
}

fn positions(len: usize) -> Vec<usize> {
    if len <= 4096 {
        return (0..len).collect();
    }
    let mut rng = fastrand::Rng::with_seed(len as u64);
    let mut v: Vec<usize> = (0..512).map(|_| rng.usize(..len)).collect();
    v.extend([0, len - 1, G as usize - 1, G as usize, len / 2]);
    v.retain(|&p| p < len);
    v
}

#[test]
fn every_flipped_proof_byte_is_caught_at_its_pair() {
    for &size in SIZES {
        let d = data(size, 3);
        let (root, ob) = compute_in_memory(&d);
        for groups in ranges(group_count(size)) {
            let proof = proof_of(&ob, groups.clone());
            for pos in positions(proof.len()) {
                let mut bad = proof.clone();
                bad[pos] ^= 0x40;
                let err = RangeVerifier::new(root, size, groups.clone(), &bad).unwrap_err();
                match err {
                    RangeError::BadProof { pair, group } => {
                        assert_eq!(pair, pos / PAIR_BYTES, "size {size} {groups:?} byte {pos}");
                        assert!(groups.contains(&group));
                    }
                    e => panic!("size {size} {groups:?} byte {pos}: {e:?}"),
                }
            }
            // Short or long proofs are refused before any hashing.
            if !proof.is_empty() {
                assert_eq!(
                    RangeVerifier::new(root, size, groups.clone(), &proof[1..]).unwrap_err(),
                    RangeError::ProofLength
                );
            }
            let mut long = proof.clone();
            long.push(0);
            assert_eq!(
                RangeVerifier::new(root, size, groups.clone(), &long).unwrap_err(),
                RangeError::ProofLength
            );
        }
    }
}

#[test]
fn every_flipped_data_byte_is_caught_in_its_group_and_nothing_after_is_delivered() {
    for &size in SIZES {
        let d = data(size, 4);
        let (root, ob) = compute_in_memory(&d);
        for groups in ranges(group_count(size)) {
            let proof = proof_of(&ob, groups.clone());
            let bytes = group_bytes(size, groups.clone());
            let body = &d[bytes.start as usize..bytes.end as usize];
            for pos in positions(body.len()) {
                let mut bad = body.to_vec();
                bad[pos] ^= 1;
                let mut v = RangeVerifier::new(root, size, groups.clone(), &proof).unwrap();
                let mut delivered = 0u64;
                let mut sink = |off: u64, b: &[u8]| {
                    assert_eq!(off, bytes.start + delivered);
                    delivered += b.len() as u64;
                    Ok(())
                };
                let err = v.handle_data(&bad, &mut sink).unwrap_err();
                let group = groups.start + pos as u64 / G;
                assert!(
                    matches!(err, VerifyError::Range(RangeError::BadGroup { group: g }) if g == group)
                );
                assert_eq!(delivered, pos as u64 / G * G, "only the groups before it");
                // The verifier stays failed.
                assert!(v.handle_data(&[], &mut |_, _| Ok(())).is_err());
                assert!(!v.is_complete());
            }
            // A truncated body never completes; an extra byte is refused.
            let mut v = RangeVerifier::new(root, size, groups.clone(), &proof).unwrap();
            let mut extra = body.to_vec();
            extra.push(0);
            let err = v.handle_data(&extra, &mut |_, _| Ok(())).unwrap_err();
            assert!(matches!(err, VerifyError::Range(RangeError::TooMuchData)));
            if !body.is_empty() {
                let mut v = RangeVerifier::new(root, size, groups.clone(), &proof).unwrap();
                v.handle_data(&body[..body.len() - 1], &mut |_, _| Ok(()))
                    .unwrap();
                assert!(!v.is_complete());
            }
        }
    }
}

#[test]
fn a_proof_for_another_files_root_is_refused() {
    for &size in SIZES {
        let d = data(size, 5);
        let (_, ob) = compute_in_memory(&d);
        let mut other = d.clone();
        other.push(1);
        let other_root = FileHash::of(&other);
        let groups = 0..group_count(size);
        let proof = proof_of(&ob, groups.clone());
        match RangeVerifier::new(other_root, size, groups.clone(), &proof) {
            Err(RangeError::BadProof { pair: 0, group: 0 }) => {}
            // A one-group file has no proof: its only group is checked against the root.
            Ok(mut v) => {
                assert_eq!(group_count(size), 1);
                let err = v.handle_data(&d, &mut |_, _| Ok(())).unwrap_err();
                assert!(matches!(
                    err,
                    VerifyError::Range(RangeError::BadGroup { group: 0 })
                ));
            }
            Err(e) => panic!("size {size}: {e:?}"),
        }
    }
}

#[test]
fn ranges_outside_the_file_are_refused() {
    let (_, ob) = compute_in_memory(&data(3 * G, 1));
    #[allow(clippy::reversed_empty_ranges)]
    let bad_ranges = [0..0, 2..1, 0..4, 3..4];
    for bad in bad_ranges {
        assert_eq!(proof_len(3 * G, bad.clone()), Err(RangeError::BadRange));
        assert!(encode_proof(&ob, bad.clone(), &mut Vec::new()).is_err());
        assert!(RangeVerifier::new(FileHash([0; 32]), 3 * G, bad, &[]).is_err());
    }
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("p2ps-ob-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn the_store_computes_in_one_pass_and_serves_the_same_proofs() {
    let dir = tmpdir("store");
    let store = OutboardStore::new(&dir);
    for &size in SIZES {
        let d = data(size, 9);
        let path = dir.join(format!("f{size}"));
        fs::write(&path, &d).unwrap();
        let mut seen = 0;
        let (hash, meta) = store.compute_file(&path, &mut |n| seen += n).unwrap();
        assert_eq!(hash, FileHash::of(&d));
        assert_eq!(meta.len(), size);
        assert_eq!(seen, size);
        // The cache file is the peer's own: the share scan skips it.
        let cached = store.path_of(&hash);
        assert!(share::is_own_file(cached.file_name().unwrap()));
        let ob = store
            .load(&hash, size)
            .unwrap()
            .expect("fresh outboard loads");
        let (_, mem) = compute_in_memory(&d);
        for groups in ranges(group_count(size)) {
            let answer = answer_range(&ob, groups.clone()).unwrap();
            assert_eq!(answer.proof, proof_of(&mem, groups.clone()));
            assert_eq!(answer.data, group_bytes(size, groups.clone()));
            let body = &d[answer.data.start as usize..answer.data.end as usize];
            fetch(hash, size, groups, &answer.proof, body, 4096).unwrap();
        }
    }
    assert!(share::walk(&dir, &mut |w| panic!("{w}"))
        .iter()
        .all(|(p, _)| !p.starts_with(dir.join(OUTBOARD_DIR))));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_damaged_cache_file_is_never_trusted() {
    let dir = tmpdir("damage");
    let store = OutboardStore::new(&dir);
    let size = 40 * G + 3;
    let d = data(size, 11);
    let path = dir.join("f");
    fs::write(&path, &d).unwrap();
    let (hash, _) = store.compute_file(&path, &mut |_| {}).unwrap();
    let cached = store.path_of(&hash);
    let good = fs::read(&cached).unwrap();
    assert_eq!(good.len() as u64, outboard_len(size) + TRAILER_BYTES);

    // Missing.
    assert!(store.load(&FileHash([7; 32]), size).unwrap().is_none());
    // Asked for with the wrong size.
    assert!(store.load(&hash, size + 1).unwrap().is_none());
    fs::write(&cached, &good).unwrap();
    // Every truncation, and a flipped bit anywhere (hash pairs, trailer, checksum).
    let mut cuts: Vec<usize> = (0..good.len()).step_by(61).collect();
    cuts.push(good.len() - 1);
    for cut in cuts {
        fs::write(&cached, &good[..cut]).unwrap();
        assert!(store.load(&hash, size).unwrap().is_none(), "cut at {cut}");
        assert!(!cached.exists(), "a damaged file is deleted");
    }
    for pos in 0..good.len() {
        let mut bad = good.clone();
        bad[pos] ^= 0x10;
        fs::write(&cached, &bad).unwrap();
        assert!(store.load(&hash, size).unwrap().is_none(), "flip at {pos}");
    }
    // Another file's intact outboard renamed to this hash is refused too.
    let d2 = data(size, 12);
    fs::write(&path, &d2).unwrap();
    let (h2, _) = store.compute_file(&path, &mut |_| {}).unwrap();
    fs::rename(store.path_of(&h2), &cached).unwrap();
    assert!(store.load(&hash, size).unwrap().is_none());
    // Recomputed, it loads again.
    fs::write(&path, &d).unwrap();
    store.compute_file(&path, &mut |_| {}).unwrap();
    assert!(store.load(&hash, size).unwrap().is_some());
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn verified_groups_land_at_their_offset_in_a_file() {
    let dir = tmpdir("sink");
    let size = 5 * G + 100;
    let d = data(size, 13);
    let (root, ob) = compute_in_memory(&d);
    let part = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.join("part"))
        .unwrap();
    part.set_len(size).unwrap();
    // Fetch the groups out of order, in two ranges.
    for groups in [3..6, 0..3] {
        let proof = proof_of(&ob, groups.clone());
        let b = group_bytes(size, groups.clone());
        let mut v = RangeVerifier::new(root, size, groups, &proof).unwrap();
        v.handle_data(&d[b.start as usize..b.end as usize], &mut write_at(&part))
            .unwrap();
        assert!(v.is_complete());
    }
    assert_eq!(fs::read(dir.join("part")).unwrap(), d);
    fs::remove_dir_all(&dir).unwrap();
}

mod hostile {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever a holder sends (proof and data mangled, cut, lengthened, sliced anyhow),
        /// the verifier never panics and only ever delivers the file's true bytes.
        #[test]
        fn nothing_but_true_bytes_reaches_the_sink(
            size in 0u64..(9 * G),
            a in 0u64..9,
            len in 1u64..9,
            flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 0..3),
            in_proof in any::<bool>(),
            cut in prop::option::of(any::<prop::sample::Index>()),
            extra in prop::collection::vec(any::<u8>(), 0..3),
            slice in 1usize..40_000,
        ) {
            let d = data(size, size ^ 0x55);
            let (root, ob) = compute_in_memory(&d);
            let n = group_count(size);
            let start = a % n;
            let groups = start..(start + len).min(n);
            let mut proof = proof_of(&ob, groups.clone());
            let b = group_bytes(size, groups.clone());
            let mut body = d[b.start as usize..b.end as usize].to_vec();
            let target = if in_proof { &mut proof } else { &mut body };
            if !target.is_empty() {
                for (i, x) in &flips {
                    let at = i.index(target.len());
                    target[at] ^= x;
                }
                if let Some(c) = cut {
                    target.truncate(c.index(target.len()));
                }
            }
            target.extend_from_slice(&extra);
            let Ok(mut v) = RangeVerifier::new(root, size, groups, &proof) else {
                return Ok(());
            };
            for part in body.chunks(slice) {
                let r = v.handle_data(part, &mut |off, got| {
                    assert_eq!(got, &d[off as usize..off as usize + got.len()]);
                    Ok(())
                });
                if r.is_err() {
                    break;
                }
            }
        }
    }
}

#[test]
fn prune_deletes_outboards_of_hashes_not_kept_and_leftover_temporaries_only() {
    let dir = std::env::temp_dir().join(format!("p2pshare-ob-prune-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let store = OutboardStore::new(&dir);
    // Nothing stored yet: nothing to do.
    assert_eq!(store.prune(&|_| false).unwrap(), 0);
    let mut hashes = Vec::new();
    for i in 0..3u8 {
        let data = vec![i; 3 * GROUP_BYTES as usize];
        let path = dir.join(format!("f{i}"));
        fs::write(&path, &data).unwrap();
        let (h, _) = store.compute_file(&path, &mut |_| {}).unwrap();
        assert!(store.path_of(&h).exists());
        hashes.push(h);
    }
    let obdir = dir.join(OUTBOARD_DIR);
    fs::write(obdir.join(".tmp1.2"), b"half a computation").unwrap();
    fs::write(obdir.join("notes.txt"), b"not ours").unwrap();
    let keep = hashes[1];
    assert_eq!(store.prune(&|h| *h == keep).unwrap(), 3);
    assert!(!store.path_of(&hashes[0]).exists());
    assert!(store.path_of(&hashes[1]).exists());
    assert!(!store.path_of(&hashes[2]).exists());
    assert!(!obdir.join(".tmp1.2").exists());
    assert!(obdir.join("notes.txt").exists());
    // The kept one still loads.
    assert!(store.load(&keep, 3 * GROUP_BYTES).unwrap().is_some());
    store.remove(&keep);
    assert!(store.load(&keep, 3 * GROUP_BYTES).unwrap().is_none());
    fs::remove_dir_all(&dir).unwrap();
}
