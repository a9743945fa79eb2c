//! `make bench`'s baseline for the C API's overhead: the same greedy
//! generation that bench/bench.c times through `zeph_engine_complete`, run
//! here as the bare forward loop over the crate's model interface (no engine,
//! queue, worker thread, sampler options, stop rules, detokenization or FFI).
//!
//!   cargo run --release --example bench-forward -- \
//!       <model.gguf> <prompt> [n_gen=128] [reps=5] [threads=0]
//!
//! The prompt is tokenized as `zeph_engine_complete` tokenizes it (special
//! tokens parsed, BOS when the model asks for it) and evaluated in the same
//! 64-token chunks; then `n_gen` tokens are chosen by argmax, each but the
//! last fed back, exactly the forward passes the engine makes for
//! `max_tokens = n_gen` with `ignore_eog`.  Prints one line of JSON.

use std::path::Path;
use std::time::Instant;

use zeph_llm::generate::PROMPT_CHUNK;
use zeph_llm::gguf::Gguf;
use zeph_llm::tokenizer::Tokenizer;

fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[s.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!(
            "usage: {} <model.gguf> <prompt> [n_gen=128] [reps=5] [threads=0]",
            args[0]
        );
        std::process::exit(2);
    }
    let path = Path::new(&args[1]);
    let prompt = &args[2];
    let n_gen: usize = args.get(3).map_or(128, |s| s.parse().expect("n_gen"));
    let reps: usize = args.get(4).map_or(5, |s| s.parse().expect("reps"));
    let threads: usize = args.get(5).map_or(0, |s| s.parse().expect("threads"));
    // As the engine chooses for one worker: 0 = every available core.
    let threads = zeph_llm::EngineOptions {
        n_threads: threads,
        ..Default::default()
    }
    .threads_per_worker();

    let t0 = Instant::now();
    let mut gguf = Gguf::open(path).expect("open model");
    let tokenizer = Tokenizer::load(&gguf, None).expect("tokenizer");
    let weights = zeph_llm::model::load(&mut gguf, 0, 2).expect("load model");
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let tokens = tokenizer.encode(prompt, true, true).expect("tokenize");

    let mut session = weights.new_session();
    // One untimed warm-up run when there are several, as bench.c's figures
    // follow other requests.
    let run = |session: &mut Box<dyn zeph_llm::model::Session>| {
        session.reset();
        let start = Instant::now();
        let mut pos = 0;
        let mut logits = Vec::new();
        for chunk in tokens.chunks(PROMPT_CHUNK) {
            logits = session.forward(chunk, pos).expect("forward");
            pos += chunk.len();
        }
        let prompt_ms = start.elapsed().as_secs_f64() * 1e3;
        let mut generated = 0;
        loop {
            let id = argmax(&logits);
            generated += 1;
            if generated >= n_gen {
                break;
            }
            logits = session.forward(&[id], pos).expect("forward");
            pos += 1;
        }
        let wall_ms = start.elapsed().as_secs_f64() * 1e3;
        (wall_ms, prompt_ms, wall_ms - prompt_ms)
    };
    if reps > 1 {
        run(&mut session);
    }
    let (mut wall, mut pp, mut tg) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..reps.max(1) {
        let (w, p, g) = run(&mut session);
        wall.push(w);
        pp.push(p);
        tg.push(g);
    }
    let gen_ms = median(&tg);
    println!(
        "{{\"model\": \"{}\", \"prompt_tokens\": {}, \"gen_tokens\": {n_gen}, \"reps\": {}, \
         \"threads\": {threads}, \"load_ms\": {load_ms:.2}, \"wall_ms\": {:.3}, \
         \"prompt_ms\": {:.3}, \"generation_ms\": {gen_ms:.3}, \"tg_tokens_per_s\": {:.3}, \
         \"wall_ms_all\": {:?}}}",
        path.display(),
        tokens.len(),
        wall.len(),
        median(&wall),
        median(&pp),
        n_gen as f64 / (gen_ms / 1e3),
        wall.iter()
            .map(|w| (w * 1000.0).round() / 1000.0)
            .collect::<Vec<_>>()
    );
}
