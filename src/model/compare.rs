//! The two decoders stage by stage (diagnostic): for every position of the
//! reference data's sequences, one token per pass, each decoder's
//! intermediate values (see `trace.rs`) and logits are compared, and the
//! stages of the positions whose top token differs, or whose logits differ
//! most, are printed.  Run with
//! `cargo test --release --lib model::compare -- --ignored --nocapture`
//! (`ZEPH_MODELS_DIR` must hold the test models).

use super::{load_with, trace, Backend, Weights};
use crate::gguf::Gguf;
use crate::sampling::argmax;

fn weights(file: &str, backend: Backend) -> Box<dyn Weights> {
    let dir = std::env::var("ZEPH_MODELS_DIR").expect("ZEPH_MODELS_DIR");
    let mut gguf = Gguf::open(&std::path::Path::new(&dir).join(file)).unwrap();
    load_with(&mut gguf, 0, backend).unwrap()
}

fn sequences(model: &str) -> Vec<Vec<u32>> {
    let text = include_str!("../../tests/data/llamacpp-tokens-and-greedy.json");
    let v: serde_json::Value = serde_json::from_str(text).unwrap();
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    v["models"][model]["greedy"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let mut s = ids(&c["prompt_ids"]);
            s.extend(ids(&c["greedy_ids"]));
            s
        })
        .collect()
}

/// ‖a − b‖ / ‖b‖ and max |a − b| / max |b|.
fn rel(a: &[f32], b: &[f32]) -> (f64, f64) {
    assert_eq!(a.len(), b.len());
    let (mut d2, mut b2, mut dm, mut bm) = (0f64, 0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let d = (x as f64 - y as f64).abs();
        d2 += d * d;
        b2 += (y as f64).powi(2);
        dm = dm.max(d);
        bm = bm.max((y as f64).abs());
    }
    ((d2 / b2.max(1e-30)).sqrt(), dm / bm.max(1e-30))
}

fn top2(l: &[f32]) -> (usize, f32) {
    let t = argmax(l) as usize;
    let s = l
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != t)
        .fold(f32::NEG_INFINITY, |m, (_, &v)| m.max(v));
    (t, l[t] - s)
}

struct Pos {
    seq: usize,
    pos: usize,
    a: trace::Taps,
    b: trace::Taps,
    la: Vec<f32>,
    lb: Vec<f32>,
}

fn stages(p: &Pos) {
    for ((na, a), (nb, b)) in p.a.iter().zip(&p.b) {
        assert_eq!(na, nb, "stage order");
        let (r, m) = rel(a, b);
        println!("    {na:>12}: rms rel {r:.2e}  max rel {m:.2e}");
    }
}

fn compare(model: &str, file: &str) {
    {
        let dir = std::env::var("ZEPH_MODELS_DIR").expect("ZEPH_MODELS_DIR");
        let g = Gguf::open(&std::path::Path::new(&dir).join(file)).unwrap();
        let mut t: Vec<_> = g
            .tensors()
            .iter()
            .filter(|i| i.name.starts_with("blk.0.") || !i.name.starts_with("blk."))
            .map(|i| format!("{}: {:?} {:?}", i.name, i.ty, i.dims))
            .collect();
        t.sort();
        println!("{model}: {}", t.join(", "));
    }
    let detail: usize = std::env::var("COMPARE_DETAIL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let cpu = weights(file, Backend::Cpu { threads: 2 });
    let reference = weights(file, Backend::Reference);
    let mut all = Vec::new();
    for (si, seq) in sequences(model).iter().enumerate() {
        let mut sa = cpu.new_session();
        let mut sb = reference.new_session();
        for i in 0..seq.len() {
            trace::start();
            let la = sa.forward(&seq[i..i + 1], i).unwrap();
            let a = trace::take();
            trace::start();
            let lb = sb.forward(&seq[i..i + 1], i).unwrap();
            let b = trace::take();
            if si == 0 && i < detail {
                println!("{model}: seq 0 pos {i}");
                for ((na, a), (_, b)) in a.iter().zip(&b) {
                    if na.starts_with("0.") || na.starts_with("1.") {
                        let (r, m) = rel(a, b);
                        println!("    {na:>12}: rms rel {r:.2e}  max rel {m:.2e}");
                    }
                }
            }
            if let Some(((na, x), (_, y))) =
                a.iter().zip(&b).find(|((_, x), (_, y))| rel(x, y).0 > 1e-4)
            {
                println!(
                    "{model}: seq {si} pos {i}: first stage over 1e-4: {na} ({:.2e})",
                    rel(x, y).0
                );
                if na.ends_with("qkv_raw") || na.ends_with(".gu") {
                    let src = if na.ends_with("qkv_raw") {
                        "attn_norm"
                    } else {
                        "ffn_norm"
                    };
                    let l = na.split('.').next().unwrap();
                    let key = format!("{l}.{src}");
                    let ha = &a.iter().find(|(n, _)| *n == key).unwrap().1;
                    let hb = &b.iter().find(|(n, _)| *n == key).unwrap().1;
                    for blk in 0..ha.len() / 32 {
                        let (xa, xb) = (&ha[blk * 32..blk * 32 + 32], &hb[blk * 32..blk * 32 + 32]);
                        let am = xa.iter().fold(0f32, |m, v| m.max(v.abs()));
                        let bm = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
                        let (ia, ib) = (1.0 / (am / 127.0), 1.0 / (bm / 127.0));
                        for j in 0..32 {
                            let (qa, qb) = ((xa[j] * ia).round(), (xb[j] * ib).round());
                            if qa != qb {
                                println!(
                                    "      {key} block {blk} [{j}]: runtime {:e}*{:e}={:.7} ref {:e}*{:e}={:.7}; llama.cpp x86 {:.7} / {:.7}",
                                    xa[j], ia, xa[j] * ia, xb[j], ib, xb[j] * ib,
                                    xa[j] * (127.0 / am), xb[j] * (127.0 / bm)
                                );
                            }
                        }
                    }
                }
            }
            all.push(Pos {
                seq: si,
                pos: i,
                a,
                b,
                la,
                lb,
            });
        }
    }
    let names: Vec<String> = all[0].a.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(
        names,
        all[0].b.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>()
    );
    // Median over positions of each stage's rms rel difference.
    println!("{model}: median (max) over positions of each stage's rms relative difference");
    for (k, name) in names.iter().enumerate() {
        let mut v: Vec<f64> = all.iter().map(|p| rel(&p.a[k].1, &p.b[k].1).0).collect();
        v.sort_by(f64::total_cmp);
        println!(
            "  {name:>12}: {:.2e} ({:.2e})",
            v[v.len() / 2],
            v[v.len() - 1]
        );
    }
    let spread = |l: &[f32]| l.iter().fold(0f32, |m, v| m.max(v.abs()));
    let mut worst: Vec<(f32, usize)> = all
        .iter()
        .enumerate()
        .map(|(k, p)| {
            let d =
                p.la.iter()
                    .zip(&p.lb)
                    .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            (d / spread(&p.lb), k)
        })
        .collect();
    worst.sort_by(|x, y| y.0.total_cmp(&x.0));
    let mut same = 0;
    for (k, p) in all.iter().enumerate() {
        let (ta, ma) = top2(&p.la);
        let (tb, mb) = top2(&p.lb);
        if ta == tb {
            same += 1;
        }
        let listed = worst[..3].iter().any(|w| w.1 == k);
        if ta != tb || listed {
            let d = worst.iter().find(|w| w.1 == k).unwrap().0;
            println!(
                "{model}: seq {} pos {}: runtime top {ta} (margin {ma:.3}, ref's logit {:.3} vs {:.3}), \
                 reference top {tb} (margin {mb:.3}); logit diff {:.2}% of the largest",
                p.seq,
                p.pos,
                p.lb[ta],
                p.lb[tb],
                100.0 * d
            );
            stages(p);
        }
    }
    println!("{model}: top-1 equal {same}/{}", all.len());
}

#[test]
#[ignore = "diagnostic: needs the test models, prints a report"]
fn smollm2_stages() {
    compare("smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf");
}

#[test]
#[ignore = "diagnostic: needs the test models, prints a report"]
fn gemma3_stages() {
    compare("gemma3", "gemma-3-270m-q4_k_m.gguf");
}
