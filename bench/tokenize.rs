//! Tokenizer throughput: 1 MiB of mixed-language text (English, French,
//! German, Russian, Greek, Chinese, Japanese, Arabic, code and numbers,
//! paragraphs in a fixed pseudo-random order) through a model's own
//! tokenizer, best of 5; and 256 KiB without a space, which was quadratic
//! before the merges went through a priority queue.
//!
//!     cargo run --release --example bench-tokenize -- MODEL.gguf [MODEL2.gguf ...]
//!
//! Prints per model the time to build the tokenizer from the file's
//! vocabulary, and one line per text: MB/s of the thread's CPU time (the
//! figure to compare on a shared machine) and of wall time, and tokens.

use std::time::Instant;

use zeph_llm::gguf::Gguf;
use zeph_llm::tokenizer::Tokenizer;

const PARAGRAPHS: &[&str] = &[
    "The quick brown fox jumps over the lazy dog. In 2024, about 8.1 billion people lived on Earth; roughly 56% of them in cities.\n",
    "Le renard brun rapide saute par-dessus le chien paresseux. L'été dernier, nous sommes allés à Montréal pour voir nos amis.\n",
    "Der schnelle braune Fuchs springt über den faulen Hund. Die Straßenbahn fährt um 7:45 Uhr ab, pünktlich wie immer.\n",
    "Быстрая коричневая лиса прыгает через ленивую собаку. Москва — столица России, а Санкт-Петербург — её северная столица.\n",
    "Η γρήγορη καφέ αλεπού πηδά πάνω από τον τεμπέλη σκύλο. Η Αθήνα είναι η πρωτεύουσα της Ελλάδας.\n",
    "敏捷的棕色狐狸跳过了懒狗。北京是中华人民共和国的首都，也是世界上人口最多的城市之一。\n",
    "素早い茶色の狐が怠け者の犬を飛び越える。東京は日本の首都であり、世界最大の都市圏の一つです。\n",
    "الثعلب البني السريع يقفز فوق الكلب الكسول. القاهرة هي عاصمة مصر وأكبر مدنها.\n",
    "fn main() {\n    let xs: Vec<u64> = (0..100).map(|i| i * i).collect();\n    println!(\"{}\", xs.iter().sum::<u64>());\n}\n",
    "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a  # 3.14159, 2.71828, 1e-9\n",
];

fn mixed_text(bytes: usize) -> String {
    let mut s = String::with_capacity(bytes + 256);
    let mut x = 0x9E37_79B9u32;
    while s.len() < bytes {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        s.push_str(PARAGRAPHS[x as usize % PARAGRAPHS.len()]);
    }
    while s.len() > bytes {
        s.pop();
    }
    s
}

fn no_space_text(bytes: usize) -> String {
    let letters = b"abcdefghijklmnopqrstuvwxyz";
    let mut x = 12345u32;
    (0..bytes)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            letters[x as usize % letters.len()] as char
        })
        .collect()
}

/// This thread's CPU time in seconds: on a shared machine the wall clock
/// also counts the time other processes held the core.
fn cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Best of `reps`: (MB/s of CPU time, MB/s of wall time, tokens).
fn measure(tok: &Tokenizer, text: &str, reps: usize) -> (f64, f64, usize) {
    let (mut cpu, mut wall) = (f64::INFINITY, f64::INFINITY);
    let mut n = 0;
    for _ in 0..reps {
        let (t, c) = (Instant::now(), cpu_seconds());
        n = tok.encode(text, false, false).expect("tokenize").len();
        cpu = cpu.min(cpu_seconds() - c);
        wall = wall.min(t.elapsed().as_secs_f64());
    }
    let mb = text.len() as f64 / 1e6;
    (mb / cpu, mb / wall, n)
}

fn main() {
    let paths: Vec<String> = std::env::args().skip(1).collect();
    assert!(!paths.is_empty(), "usage: bench-tokenize MODEL.gguf...");
    let mixed = mixed_text(1 << 20);
    let flat = no_space_text(256 << 10);
    for path in paths {
        let gguf = Gguf::open(std::path::Path::new(&path)).expect("open model");
        // Building the tokenizer from the file's vocabulary, best of 5.
        let mut load = f64::INFINITY;
        for _ in 0..5 {
            let c = cpu_seconds();
            let tok = Tokenizer::load(&gguf, None).expect("tokenizer");
            load = load.min(cpu_seconds() - c);
            drop(tok);
        }
        let tok = Tokenizer::load(&gguf, None).expect("tokenizer");
        let name = std::path::Path::new(&path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or(path.clone());
        println!(
            "{name}: tokenizer built from the vocabulary in {:.1} ms of CPU time",
            load * 1e3
        );
        let (cpu, wall, n) = measure(&tok, &mixed, 5);
        println!(
            "{name}: 1 MiB mixed-language text: {cpu:.1} MB/s of CPU time, {wall:.1} MB/s wall ({n} tokens)"
        );
        let (cpu, wall, n) = measure(&tok, &flat, 3);
        println!(
            "{name}: 256 KiB without spaces: {cpu:.1} MB/s of CPU time, {wall:.1} MB/s wall ({n} tokens)"
        );
    }
}
