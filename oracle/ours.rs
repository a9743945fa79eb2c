//! Our logits for given token ids, teacher-forced, in the format
//! oracle/llama_oracle.c writes ("ZORACLE1"), with the whole vocabulary at
//! every position: the "ours" third of the exact-logits comparison
//! (oracle/exact-compare.sh, oracle/near-ties.py).
//!
//!   cargo run --release --example oracle-ours -- \
//!       MODEL OUT [-t THREADS] [-k TOPK] SEQ [SEQ ...]
//!
//! Each SEQ is a comma-separated list of token ids, evaluated on a fresh
//! session one token per forward (position by position, as a generation
//! feeds its tokens back), so that every position has its own logits.
//!
//! OUT (little-endian):
//!   "ZORACLE1", u32 n_vocab, u32 n_seq, u32 top_k
//!   per sequence: u32 n_tokens, u32 tokens[n_tokens], then per position:
//!     u32 has_full (always 1), f64 logsumexp over the whole vocabulary,
//!     top_k x (u32 id, f32 logit), best first (ties: lower id first),
//!     f32 logits[n_vocab]

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::exit;

use zeph_llm::gguf::Gguf;

fn die(msg: &str) -> ! {
    eprintln!("oracle-ours: {msg}");
    exit(1)
}

fn parse_ids(s: &str) -> Vec<u32> {
    s.split(',')
        .map(|t| t.parse().unwrap_or_else(|_| die("bad token id list")))
        .collect()
}

fn logsumexp(z: &[f32]) -> f64 {
    let max = z.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    max + z.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut threads, mut top_k) = (2usize, 16usize);
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| -> usize {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| die(&format!("{name} needs a number")))
        };
        match a.as_str() {
            "-t" => threads = value("-t"),
            "-k" => top_k = value("-k"),
            _ => rest.push(a.clone()),
        }
    }
    if rest.len() < 3 {
        eprintln!("usage: oracle-ours MODEL OUT [-t THREADS] [-k TOPK] SEQ [SEQ ...]");
        exit(2);
    }
    let seqs: Vec<Vec<u32>> = rest[2..].iter().map(|s| parse_ids(s)).collect();

    let mut gguf = Gguf::open(Path::new(&rest[0])).unwrap_or_else(|e| die(&e.to_string()));
    let weights =
        zeph_llm::model::load(&mut gguf, 0, threads).unwrap_or_else(|e| die(&e.to_string()));
    let mut out = BufWriter::new(File::create(&rest[1]).unwrap_or_else(|e| die(&e.to_string())));
    let mut w = |bytes: &[u8]| put(&mut out, bytes);

    let mut n_vocab = 0;
    let mut header_written = false;
    for seq in &seqs {
        let mut session = weights.new_session();
        for (pos, &tok) in seq.iter().enumerate() {
            let logits = session
                .forward(&[tok], pos)
                .unwrap_or_else(|e| die(&e.to_string()));
            if !header_written {
                n_vocab = logits.len();
                top_k = top_k.min(n_vocab);
                w(b"ZORACLE1");
                for v in [n_vocab as u32, seqs.len() as u32, top_k as u32] {
                    w(&v.to_le_bytes());
                }
                header_written = true;
            }
            if pos == 0 {
                w(&(seq.len() as u32).to_le_bytes());
                for &t in seq {
                    w(&t.to_le_bytes());
                }
            }
            if logits.len() != n_vocab {
                die("the vocabulary size changed");
            }
            let mut order: Vec<u32> = (0..n_vocab as u32).collect();
            // Best first; the lower id first on a tie.
            order.sort_by(|&a, &b| {
                logits[b as usize]
                    .total_cmp(&logits[a as usize])
                    .then(a.cmp(&b))
            });
            w(&1u32.to_le_bytes());
            w(&logsumexp(&logits).to_le_bytes());
            for &id in &order[..top_k] {
                w(&id.to_le_bytes());
                w(&logits[id as usize].to_le_bytes());
            }
            for &v in &logits {
                w(&v.to_le_bytes());
            }
        }
        eprintln!("oracle-ours: sequence of {} tokens done", seq.len());
    }
    out.flush().unwrap_or_else(|e| die(&e.to_string()));
}

fn put(out: &mut impl Write, bytes: &[u8]) {
    out.write_all(bytes).unwrap_or_else(|e| die(&e.to_string()));
}
